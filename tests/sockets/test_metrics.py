"""The active policy and handshake outcomes as OpenTelemetry metrics (real SDK, in-memory reader)."""

from __future__ import annotations

import threading

import zmq
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from zmeshlib import Policy


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    out: dict[str, list] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def test_policy_revision_and_handshakes_are_metrics(mesh_factory, tmp_path):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = mesh_factory("spiffe://example.org/ns/shop/sa/payment", meter_provider=provider)
    rep = server.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client")
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    new = Policy.from_dict({"version": 1, "authorization": []})
    server.update_policy(new)

    t = threading.Thread(target=rep.serve, args=(lambda m: b"ok",), kwargs={"max_requests": 1})
    t.start()
    assert req.request(b"", method="charge", timeout=5).payload == b"ok"
    t.join(5)

    points = _points(reader)
    (active,) = points["zmeshlib.policy.active"]
    assert active.value == 1
    assert active.attributes == {
        "revision": new.revision,
        "workload": "spiffe://example.org/ns/shop/sa/payment",
    }
    (updates,) = points["zmeshlib.policy.updates"]
    assert updates.value == 1 and updates.attributes == {"revision": new.revision}
    handshakes = {p.attributes["outcome"]: p.value for p in points["zmeshlib.handshakes"]}
    assert handshakes["verified"] >= 1
    provider.shutdown()
