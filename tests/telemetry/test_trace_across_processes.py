"""One trace across three processes: publisher -> subscriber (inside msg.process()) -> server.

Each workload records its spans with the real OpenTelemetry SDK and prints them at
its end; the test joins them by ids, as a tracing backend would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from zmeshlib import DevCA
from zmeshlib.telemetry.waterfall import waterfall_svg

pytestmark = pytest.mark.slow

WORKLOAD = Path(__file__).with_name("_workload.py")


def start(role: str, ca_dir: Path, registry: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKLOAD), role, str(ca_dir), registry],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("READY"), line
    return proc


def spans_of(proc: subprocess.Popen[str], close: bool = True) -> list[dict[str, Any]]:
    if close:
        proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(30)  # its spans are a few lines: they fit the pipe while it ends
    out = proc.stdout.read()  # type: ignore[union-attr]
    assert proc.returncode == 0, out
    lines = out.split("SPANS\n", 1)[1].splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_one_trace_from_publisher_through_subscriber_to_server(tmp_path):
    DevCA.create("example.org").save(tmp_path / "ca")
    registry = f"dir://{tmp_path}/registry"
    procs = []
    try:
        server = start("server", tmp_path / "ca", registry)
        procs.append(server)
        publisher = start("publisher", tmp_path / "ca", registry)
        procs.append(publisher)
        worker = start("worker", tmp_path / "ca", registry)
        procs.append(worker)
        worker_spans = spans_of(worker, close=False)  # it ends after one message
        publisher_spans = spans_of(publisher)
        server_spans = spans_of(server)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    everything = {s["span_id"]: s for s in worker_spans + publisher_spans + server_spans}
    (consumer,) = [s for s in worker_spans if s["kind"] == "CONSUMER"]
    producer = everything[consumer["parent"]]
    root = everything[producer["parent"]]
    (client,) = [s for s in worker_spans if s["kind"] == "CLIENT"]
    (srv,) = [s for s in server_spans if s["kind"] == "SERVER"]
    print(f"trace {root['trace_id']}: {root['name']} -> {producer['name']} -> "
          f"{consumer['name']} -> {client['name']} (CLIENT) -> {srv['name']} (SERVER)")  # fmt: skip
    assert root["name"] == "place order" and producer["kind"] == "PRODUCER"
    assert producer["attributes"]["messaging.system"] == "zeromq"
    assert producer["attributes"]["messaging.destination.name"] == "orders.created"
    assert client["parent"] == consumer["span_id"]
    assert srv["parent"] == client["span_id"]
    assert {root["trace_id"], consumer["trace_id"], srv["trace_id"]} == {root["trace_id"]}
    assert (
        srv["attributes"]["zmeshlib.peer.spiffe_id"] == "spiffe://example.org/ns/shop/sa/fulfilment"
    )
    assert (
        consumer["attributes"]["zmeshlib.peer.spiffe_id"]
        == "spiffe://example.org/ns/shop/sa/orders"
    )

    chain = [root, producer, consumer, client, srv]
    picture = waterfall_svg(chain, "place order: one trace across three processes")
    drawn = ElementTree.fromstring(picture)  # well-formed SVG
    texts = [t.text for t in drawn.iter("{http://www.w3.org/2000/svg}text")]
    for span in chain:
        assert f"{span['name']} ({span['kind'].lower()})" in texts
    assert [t for t in texts if t in ("orders", "fulfilment", "payment")]  # the workloads
    out = os.environ.get("ZMESHLIB_TRACE_OUT")
    if out:  # the docs' picture is drawn from these (docs/observability.md); not the root,
        # which lasts as long as the publisher's loop of repeats
        Path(out).write_text(json.dumps(chain[1:], indent=1) + "\n")
