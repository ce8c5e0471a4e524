"""Request spans and trace context in the envelope, with the real OpenTelemetry SDK.

Spans go to an in-memory exporter through a real ``TracerProvider`` given to
each Mesh (``tracer_provider=``); context travels through the global W3C
propagators, as a user's would.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import zmq
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import zmeshlib
from zmeshlib import Policy

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


@pytest.fixture
def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def serve(mesh: zmeshlib.Mesh, handler: Any, n: int) -> tuple[Any, threading.Thread]:
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    t = threading.Thread(target=rep.serve, args=(handler,), kwargs={"max_requests": n})
    t.start()
    return rep, t


def test_client_and_server_spans_share_a_trace_and_name_both_workloads(mesh_factory, traced):
    provider, exporter = traced
    server = mesh_factory(SERVER, tracer_provider=provider)
    seen: list[Any] = []

    def handler(msg: zmeshlib.Message) -> bytes:
        seen.append(trace.get_current_span().get_span_context())  # the server span is current
        return b"ok"

    _, t = serve(server, handler, 2)
    client = mesh_factory(CLIENT, tracer_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as root:
        assert req.request(b"3 EUR", method="charge", timeout=5).payload == b"ok"
    t.join(5)
    spans = {(s.name, s.kind): s for s in exporter.get_finished_spans()}
    call = spans["payment/charge", SpanKind.CLIENT]
    srv = spans["payment/charge", SpanKind.SERVER]
    assert call.parent.span_id == root.get_span_context().span_id
    assert srv.parent.span_id == call.context.span_id
    assert srv.context.trace_id == root.get_span_context().trace_id
    assert seen[0].span_id == srv.context.span_id
    assert call.attributes["rpc.system.name"] == "zmeshlib"
    assert call.attributes["rpc.method"] == "charge"
    assert call.attributes["rpc.response.status_code"] == "OK"
    assert call.attributes["zmeshlib.workload.spiffe_id"] == CLIENT
    assert call.attributes["zmeshlib.peer.spiffe_id"] == SERVER
    assert srv.attributes["zmeshlib.peer.spiffe_id"] == CLIENT  # the caller, authenticated
    assert srv.attributes["zmeshlib.workload.spiffe_id"] == SERVER


def test_an_error_reply_marks_both_spans(mesh_factory, traced):
    provider, exporter = traced
    server = mesh_factory(SERVER, tracer_provider=provider)

    def handler(msg: zmeshlib.Message) -> bytes:
        raise zmeshlib.ResourceExhausted("no stock")

    _, t = serve(server, handler, 1)
    client = mesh_factory(CLIENT, tracer_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    with pytest.raises(zmeshlib.ResourceExhausted):
        req.request(b"", method="charge", timeout=5)
    t.join(5)
    for span in exporter.get_finished_spans():
        assert span.attributes["error.type"] == "RESOURCE_EXHAUSTED"
        assert span.attributes["rpc.response.status_code"] == "RESOURCE_EXHAUSTED"
        assert not span.status.is_ok


def test_retries_are_attempt_spans_under_one_call_span(mesh_factory, traced):
    provider, exporter = traced
    policy = Policy.from_dict(
        {"traffic": {"payment": {"retries": {"attempts": 2, "retry_on": ["unavailable"]}}}}
    )
    server = mesh_factory(SERVER, tracer_provider=provider)
    calls = [0]

    def handler(msg: zmeshlib.Message) -> bytes:
        calls[0] += 1
        if msg.attempt < 2:
            raise zmeshlib.Unavailable("warming up")
        return b"ok"

    _, t = serve(server, handler, 3)
    client = mesh_factory(CLIENT, policy, tracer_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    assert req.request(b"", method="charge", timeout=5).payload == b"ok"
    t.join(5)
    clients = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    (call,) = [s for s in clients if "zmeshlib.attempt" not in s.attributes]
    attempts = sorted(
        (s for s in clients if "zmeshlib.attempt" in s.attributes),
        key=lambda s: s.attributes["zmeshlib.attempt"],
    )
    assert [s.attributes["zmeshlib.attempt"] for s in attempts] == [1, 2]
    assert all(s.parent.span_id == call.context.span_id for s in attempts)
    assert attempts[0].attributes["error.type"] == "UNAVAILABLE"
    assert attempts[1].attributes["rpc.response.status_code"] == "OK"
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 3 and calls[0] == 3
    assert {s.parent.span_id for s in servers} == {call.context.span_id} | {
        s.context.span_id for s in attempts
    }


def test_baggage_travels_through_the_propagators(mesh_factory, traced):
    provider, _ = traced
    server = mesh_factory(SERVER, tracer_provider=provider)
    got: list[Any] = []

    def handler(msg: zmeshlib.Message) -> bytes:
        got.append(baggage.get_baggage("tenant"))
        return b""

    _, t = serve(server, handler, 1)
    client = mesh_factory(CLIENT, tracer_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with provider.get_tracer("test").start_as_current_span("root"):
            req.request(b"", method="charge", timeout=5)
    finally:
        context.detach(token)
    t.join(5)
    assert got == ["acme"]


@pytest.mark.parametrize(
    "telemetry", [{"tracing": {"enabled": False}}, {"tracing": {"sampling": 0}}]
)
def test_the_policy_turns_root_spans_off(mesh_factory, traced, telemetry):
    provider, exporter = traced
    policy = Policy.from_dict({"telemetry": telemetry})
    server = mesh_factory(SERVER, policy, tracer_provider=provider)
    _, t = serve(server, lambda msg: b"", 5)
    client = mesh_factory(CLIENT, policy, tracer_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    for _ in range(5):
        req.request(b"", method="charge", timeout=5)
    t.join(5)
    assert exporter.get_finished_spans() == ()


def test_no_sdk_means_no_span_and_no_context_sent(mesh_factory):
    server = mesh_factory(SERVER)  # the global provider: the API's proxy, no SDK
    traces: list[Any] = []
    _, t = serve(server, lambda msg: traces.append(msg.trace) or b"", 1)
    client = mesh_factory(CLIENT)
    assert not client.tracing.recording(client.policy)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    req.request(b"", method="charge", timeout=5)
    t.join(5)
    assert traces == [None]


def test_publish_process_and_call_continue_one_trace(mesh_factory, traced):
    provider, exporter = traced
    publisher = mesh_factory("spiffe://example.org/ns/shop/sa/orders", tracer_provider=provider)
    pub = publisher.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    server = mesh_factory(SERVER, tracer_provider=provider)
    _, t = serve(server, lambda msg: b"charged", 1)
    worker = mesh_factory(CLIENT, tracer_provider=provider)
    sub = worker.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    req = worker.socket(zmq.REQ)
    req.connect(service="payment")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("place order") as root:
        msg = None
        for _ in range(200):  # a subscriber hears what is sent after it joined
            pub.send(b"order 1", topic="orders.created")
            try:
                msg = sub.recv(timeout=0.05)
                break
            except zmeshlib.Timeout:
                pass
    assert msg is not None
    with msg.process():
        req.request(b"3 EUR", method="charge", timeout=5)
    t.join(5)
    spans = exporter.get_finished_spans()
    producers = [s for s in spans if s.kind is SpanKind.PRODUCER]
    (consumer,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    (producer,) = [s for s in producers if s.context.span_id == consumer.parent.span_id]
    assert producer.parent.span_id == root.get_span_context().span_id
    assert producer.name == "send orders.created" and consumer.name == "process orders.created"
    assert producer.attributes["messaging.system"] == "zeromq"
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.destination.name"] == "orders.created"
    assert producer.attributes["messaging.message.body.size"] == 7
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.message.id"] == str(msg.message_id)
    assert (
        consumer.attributes["zmeshlib.peer.spiffe_id"] == "spiffe://example.org/ns/shop/sa/orders"
    )
    call = next(s for s in spans if s.kind is SpanKind.CLIENT)
    srv = next(s for s in spans if s.kind is SpanKind.SERVER)
    assert call.parent.span_id == consumer.context.span_id
    assert srv.parent.span_id == call.context.span_id
    assert len({s.context.trace_id for s in spans}) == 1


def test_pull_serve_handles_inside_the_consumer_span_and_survives_a_handler_error(
    mesh_factory, traced
):
    provider, exporter = traced
    worker = mesh_factory(SERVER, tracer_provider=provider)
    pull = worker.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    boss = mesh_factory(CLIENT, tracer_provider=provider)
    push = boss.socket(zmq.PUSH)
    push.connect(service="jobs")
    current: list[Any] = []

    def handler(msg: zmeshlib.Message) -> None:
        current.append(trace.get_current_span().get_span_context().span_id)
        if msg.payload == b"bad":
            raise ValueError("cannot do it")

    for payload in (b"bad", b"good"):
        push.send(payload, timeout=5)
    assert pull.serve(handler, max_messages=2) == 2
    assert pull.stats["handler_errors"] == 1
    consumers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert [s.context.span_id for s in consumers] == current
    assert consumers[0].attributes["error.type"] == "ValueError"
    assert consumers[0].name == "process jobs" and consumers[1].status.is_ok
    producers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert [s.name for s in producers] == ["send jobs", "send jobs"]
    assert {c.parent.span_id for c in consumers} == {p.context.span_id for p in producers}


def test_process_without_tracing_makes_nothing(mesh_factory):
    mesh = mesh_factory(SERVER)
    pull = mesh.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = mesh_factory(CLIENT).socket(zmq.PUSH)
    push.connect(service="jobs")
    push.send(b"x", timeout=5)
    msg = pull.recv(timeout=5)
    with msg.process() as span:
        assert span is None and msg.trace is None


def test_the_direct_trace_field_is_what_the_propagators_write(traced):
    from opentelemetry import propagate
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from zmeshlib.telemetry.tracing import Tracing, to_envelope

    provider, _ = traced
    tracing = Tracing("spiffe://example.org/x", provider, None)
    for state in (TraceState(), TraceState([("vendor", "v1"), ("other", "x")])):
        span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(1), state))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        assert tracing.inject(span, None) == (to_envelope(carrier)[0], None)
