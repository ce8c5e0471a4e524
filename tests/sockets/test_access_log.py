"""Access logs (``telemetry.access_log``): JSON lines on the ``zmeshlib.access`` logger."""

from __future__ import annotations

import json
import logging
import random
import threading

import pytest
import zmq
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import zmeshlib
from zmeshlib import Peer, Policy, SpiffeId, StatusCode
from zmeshlib.telemetry.access import AccessLog

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


def _policy(**access: object) -> Policy:
    return Policy.from_dict(
        {
            "authorization": [
                {"name": "no-refunds", "action": "DENY", "rules": [{"to": {"call": ["refund"]}}]}
            ],
            "telemetry": {"access_log": {"enabled": True, **access}},
        }
    )


def _entries(caplog: pytest.LogCaptureFixture) -> list[dict]:
    out = []
    for record in caplog.records:
        if record.name == "zmeshlib.access":
            entry = json.loads(record.getMessage())
            assert entry == record.access  # the same fields, structured
            out.append(entry)
    return out


def _serve(mesh: zmeshlib.Mesh) -> tuple[threading.Thread, threading.Event]:
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    stop = threading.Event()
    t = threading.Thread(target=rep.serve, args=(lambda m: b"ok",), kwargs={"stop": stop.is_set})
    t.start()
    return t, stop


def test_each_call_is_a_json_line_at_both_ends(mesh_factory, caplog):
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = _policy()
    server = mesh_factory(SERVER, policy)
    t, stop = _serve(server)
    client = mesh_factory(CLIENT, policy, tracer_provider=tracer_provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    with caplog.at_level(logging.INFO, logger="zmeshlib.access"):
        req.request(b"3 EUR", method="charge", timeout=5)
        with pytest.raises(zmeshlib.PermissionDenied):
            req.request(b"", method="refund", timeout=5)
        stop.set()
        t.join(5)
    entries = _entries(caplog)
    by = {(e["side"], e["method"]): e for e in entries}
    assert len(entries) == 4, entries
    ok = by["client", "charge"]
    assert ok["workload"] == CLIENT and ok["peer"] == SERVER
    assert ok["operation"] == "call" and ok["service"] == "payment" and ok["status"] == "OK"
    assert ok["bytes"] == 5 and ok["duration_ms"] >= 0 and ok["time"].endswith("Z")
    served = by["server", "charge"]
    assert served["workload"] == SERVER and served["peer"] == CLIENT
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "payment/charge"]
    trace_id = format(span.context.trace_id, "032x")
    assert ok["trace_id"] == served["trace_id"] == trace_id  # one request, one trace
    assert by["server", "refund"]["status"] == "PERMISSION_DENIED"
    assert by["client", "refund"]["status"] == "PERMISSION_DENIED"
    assert by["client", "refund"]["peer"] is None  # an error reply names no answerer


def test_messages_are_logged_with_their_topic(mesh_factory, publish_until, caplog):
    policy = _policy()
    server = mesh_factory(SERVER, policy)
    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="payment")
    client = mesh_factory(CLIENT, policy)
    sub = client.socket(zmq.SUB)
    sub.connect(service="payment")
    sub.subscribe("payments.")
    with caplog.at_level(logging.INFO, logger="zmeshlib.access"):
        publish_until(pub, sub, topic="payments.settled", payload=b"12")
    entries = _entries(caplog)
    received = [e for e in entries if e["side"] == "subscriber"]
    published = [e for e in entries if e["side"] == "publisher"]
    assert received and len(published) >= len(received)
    assert received[0]["peer"] == SERVER and received[0]["topic"] == "payments.settled"
    assert received[0]["operation"] == "receive" and received[0]["bytes"] == 2
    assert published[0]["peer"] is None and published[0]["operation"] == "publish"


def test_off_by_default_and_when_the_logger_is_quiet(mesh_factory, caplog):
    server = mesh_factory(SERVER)
    t, stop = _serve(server)
    client = mesh_factory(CLIENT)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    with caplog.at_level(logging.INFO, logger="zmeshlib.access"):
        req.request(b"", method="charge", timeout=5)
    assert not _entries(caplog)
    client.update_policy(_policy())
    with caplog.at_level(logging.WARNING, logger="zmeshlib.access"):
        req.request(b"", method="charge", timeout=5)
        assert not client.access.enabled()  # nothing would be written: nothing is built
    stop.set()
    t.join(5)
    assert not _entries(caplog)


class _InForce:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy


@pytest.mark.parametrize(
    ("sampling", "low", "high"), [(0, 0, 0), (30, 540, 660), (100, 2000, 2000)]
)
def test_sampling_keeps_its_share(sampling, low, high, caplog):
    access = AccessLog(_InForce(_policy(sampling=sampling)), CLIENT, random.Random(3))
    peer = Peer(SpiffeId.parse(SERVER))
    with caplog.at_level(logging.INFO, logger="zmeshlib.access"):
        for _ in range(2000):
            access.call("client", peer, "payment", "charge", StatusCode.OK, 0.001, 0, None)
    assert low <= len(_entries(caplog)) <= high
