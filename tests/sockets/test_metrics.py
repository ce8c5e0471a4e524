"""The active policy and handshake outcomes as OpenTelemetry metrics (real SDK, in-memory reader)."""

from __future__ import annotations

import gc
import threading

import zmq
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from zmeshlib import Policy
from zmeshlib.resilience.pool import Admission


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


def _serve(mesh, handler, n):
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    t = threading.Thread(target=rep.serve, args=(handler,), kwargs={"max_requests": n})
    t.start()
    return t


def test_call_durations_by_the_rpc_conventions(mesh_factory):
    import zmeshlib

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = mesh_factory("spiffe://example.org/ns/shop/sa/payment", meter_provider=provider)

    def handler(msg):
        if msg.method == "refund":
            raise zmeshlib.ResourceExhausted("no money left")
        return b"ok"

    t = _serve(server, handler, 3)
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client", meter_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    req.request(b"", method="charge", timeout=5)
    req.request(b"", method="charge", timeout=5)
    try:
        req.request(b"", method="refund", timeout=5)
    except zmeshlib.ResourceExhausted:
        pass
    t.join(5)
    points = _points(reader)
    for name in ("rpc.client.call.duration", "rpc.server.call.duration"):
        by = {(p.attributes["rpc.method"], p.attributes["rpc.response.status_code"]): p
              for p in points[name]}  # fmt: skip
        assert by["charge", "OK"].count == 2 and by["refund", "RESOURCE_EXHAUSTED"].count == 1
        assert by["refund", "RESOURCE_EXHAUSTED"].attributes["error.type"] == "RESOURCE_EXHAUSTED"
        assert by["charge", "OK"].attributes["rpc.system.name"] == "zmeshlib"
        assert by["charge", "OK"].attributes["rpc.service"] == "payment"
        assert "error.type" not in by["charge", "OK"].attributes
        assert 0 < by["charge", "OK"].sum < 10  # seconds
    provider.shutdown()


def test_messages_sent_consumed_and_processed(mesh_factory):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    worker = mesh_factory("spiffe://example.org/ns/shop/sa/worker", meter_provider=provider)
    pull = worker.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    boss = mesh_factory("spiffe://example.org/ns/shop/sa/boss", meter_provider=provider)
    push = boss.socket(zmq.PUSH)
    push.connect(service="jobs")
    for payload in (b"a", b"b", b"bad"):
        push.send(payload, timeout=5)

    def handler(msg):
        if msg.payload == b"bad":
            raise ValueError("no")

    assert pull.serve(handler, max_messages=3) == 3
    points = _points(reader)
    (sent,) = points["messaging.client.sent.messages"]
    assert sent.value == 3 and sent.attributes["messaging.operation.name"] == "push"
    assert sent.attributes["messaging.destination.name"] == "jobs"
    assert sent.attributes["messaging.system"] == "zeromq"
    (consumed,) = points["messaging.client.consumed.messages"]
    assert consumed.value == 3
    process = {
        p.attributes.get("error.type"): p.count for p in points["messaging.process.duration"]
    }
    assert process == {None: 2, "ValueError": 1}
    provider.shutdown()


def test_metrics_switched_off_by_the_policy_record_nothing(mesh_factory):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    off = Policy.from_dict({"telemetry": {"metrics": {"enabled": False}}})
    server = mesh_factory("spiffe://example.org/ns/shop/sa/payment", off, meter_provider=provider)
    t = _serve(server, lambda msg: b"", 1)
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client", off, meter_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    req.request(b"", method="charge", timeout=5)
    t.join(5)
    points = _points(reader)
    assert "rpc.client.call.duration" not in points and "rpc.server.call.duration" not in points
    provider.shutdown()


def test_the_api_globals_the_mesh_reads_are_what_the_api_keeps():
    # recording() reads the API's global providers without a call, and tells the API's
    # proxy provider apart: both are private names of opentelemetry-api, checked here
    import subprocess
    import sys

    code = (
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.metrics import _internal as mi\n"
        "from opentelemetry.metrics._internal import _ProxyMeterProvider\n"
        "assert trace._TRACER_PROVIDER is None and mi._METER_PROVIDER is None\n"
        "assert isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "metrics.set_meter_provider(MeterProvider()); trace.set_tracer_provider(TracerProvider())\n"
        "assert mi._METER_PROVIDER is metrics.get_meter_provider()\n"
        "assert trace._TRACER_PROVIDER is trace.get_tracer_provider()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_mesh_s_own_counters_as_instruments(mesh_factory):
    import zmeshlib

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    deny = Policy.from_dict(
        {
            "authorization": [
                {
                    "name": "no-refunds",
                    "action": "DENY",
                    "rules": [{"to": {"call": ["refund"]}}],
                }
            ],
            "traffic": {
                "payment": {
                    "retries": {"attempts": 2, "retry_on": ["unavailable"]},
                    "outlier_detection": {
                        "consecutive_errors": 1,
                        "max_ejection_percent": 100,
                        "min_health_percent": 100,  # one replica: balance over it in panic
                    },
                }
            },
        }
    )
    server = mesh_factory("spiffe://example.org/ns/shop/sa/payment", deny, meter_provider=provider)

    def handler(msg):
        if msg.method == "flaky" and msg.attempt == 0:
            raise zmeshlib.Unavailable("once")
        return b""

    t = _serve(server, handler, 3)  # flaky twice, then "done" (a denied call is not served)
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client", deny, meter_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    req.request(b"", method="flaky", timeout=5)  # attempt 0 UNAVAILABLE (ejected), retried
    try:
        req.request(b"", method="refund", timeout=5)
    except zmeshlib.PermissionDenied:
        pass
    req.request(b"", method="done", timeout=5)
    t.join(5)
    sub = client.socket(zmq.SUB)
    sub.close()  # a closed socket's counts stay in the totals
    points = _points(reader)
    (retries,) = points["zmeshlib.rpc.client.retries"]
    assert retries.value == 1 and dict(retries.attributes) == {"rpc.service": "payment"}
    (ejections,) = points["zmeshlib.outlier.ejections"]
    assert ejections.value == 1
    (ejected,) = points["zmeshlib.outlier.ejected"]
    assert ejected.value == 1
    (denials,) = points["zmeshlib.authz.denials"]
    assert denials.value == 1 and denials.attributes["zmeshlib.policy"] == "no-refunds"
    req.close()
    (retries,) = _points(reader)["zmeshlib.rpc.client.retries"]
    assert retries.value == 1  # after its socket closed: never down
    del t
    gc.collect()  # the server's REP socket, never closed, is collected: its counts stay
    (denials,) = _points(reader)["zmeshlib.authz.denials"]
    assert denials.value == 1
    provider.shutdown()


def test_circuit_refusals_and_drops_are_instruments(mesh_factory):
    import zmeshlib

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    tight = Policy.from_dict(
        {"traffic": {"payment": {"pool": {"max_requests": 1, "max_pending": 1}}}}
    )
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client", tight, meter_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    pool = client._traffic.of(client.policy, "payment").pool_for(None)
    assert pool is not None
    assert [pool.admit(), pool.admit()] == [Admission.GO, Admission.WAIT]  # slot and queue taken
    try:
        req.request(b"", method="charge", timeout=1)
    except zmeshlib.ResourceExhausted:
        pass
    pull = client.socket(zmq.PULL)
    pull.drops.drop("malformed", "a test's junk")
    points = _points(reader)
    (refusals,) = points["zmeshlib.circuit.refusals"]
    assert refusals.value == 1
    (open_now,) = points["zmeshlib.circuit.open"]
    assert open_now.value == 1 and dict(open_now.attributes) == {"rpc.service": "payment"}
    pool.leave()
    pool.release()  # the slot is free again: the circuit closes
    assert not [p.value for p in _points(reader).get("zmeshlib.circuit.open", []) if p.value]
    drops = {p.attributes["reason"]: p.value for p in points["zmeshlib.dropped.messages"]}
    assert drops["malformed"] == 1
    provider.shutdown()


def test_a_socket_collected_without_close_keeps_its_counts(mesh_factory):
    import weakref

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    mesh = mesh_factory("spiffe://example.org/ns/shop/sa/client", meter_provider=provider)
    pull = mesh.socket(zmq.PULL)
    pull.drops.drop("malformed", "a test's junk")
    gone = weakref.ref(pull)
    del pull
    gc.collect()
    assert gone() is None  # collected, never closed
    (dropped,) = _points(reader)["zmeshlib.dropped.messages"]
    assert dropped.value == 1 and dropped.attributes["reason"] == "malformed"
    provider.shutdown()
