"""OpenTelemetry spans for requests, and trace context carried in the envelope.

Rules this module keeps:

* Trace context goes through OpenTelemetry's propagation API (W3C
  ``traceparent``/``tracestate`` and baggage by default, or whatever
  propagators the user configured): the carrier's ``traceparent`` and
  ``tracestate`` travel in the envelope's binary trace field, any other
  carrier key (``baggage``, a B3 header...) as an envelope header.
* Nothing is made when nothing would be recorded: with no SDK configured
  (the API's proxy provider and no global provider set), or with
  ``telemetry.tracing.enabled: false``, no span object exists on the hot path
  and nothing is injected. A request made under no sampled span is a root:
  ``telemetry.tracing.sampling`` (a percentage, Istio's
  ``randomSamplingPercentage``) decides whether it is traced at all; the
  SDK's own sampler then decides as usual.
* A caller that passes ``trace=`` itself propagates by hand: its context is
  sent as given, and the mesh makes no client span for that request.
* Span names and attributes follow the semantic conventions for RPC (v1.44):
  ``{service}/{method}``, ``rpc.system.name`` = ``zmeshlib``, ``rpc.method``,
  ``rpc.response.status_code`` (the status name), ``error.type`` on failure;
  every span names the workload's own SPIFFE ID (``zmeshlib.workload.spiffe_id``)
  and, where there is one, the authenticated peer's (``zmeshlib.peer.spiffe_id``).
* One CLIENT span per logical call; its first attempt is sent under it, and
  each retry or hedge (attempt 1, 2...) gets a CLIENT child span of its own
  with ``zmeshlib.attempt``. The SERVER span is current while the handler
  runs, so the calls the handler makes continue the trace.

Invalid context from the network (all-zero ids, version ff) is ignored by the
W3C propagator: the server span then starts a new trace.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry import trace as _trace_api  # its _TRACER_PROVIDER: the global, or None
from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode

from .._models import StatusCode as MeshStatus
from .._models import TraceContext

if TYPE_CHECKING:
    from ..policy import Policy

RPC_SYSTEM = "zmeshlib"
MESSAGING_SYSTEM = "zeromq"
PEER_ID = "zmeshlib.peer.spiffe_id"
WORKLOAD_ID = "zmeshlib.workload.spiffe_id"
ATTEMPT = "zmeshlib.attempt"
_W3C_KEYS = ("traceparent", "tracestate")
#: The propagators OpenTelemetry set up at import (W3C trace context and baggage unless
#: OTEL_PROPAGATORS said otherwise); one the user sets later is used through the carrier.
_DEFAULT_TEXTMAP = propagate.get_global_textmap()


def to_envelope(carrier: Mapping[str, str]) -> tuple[TraceContext | None, dict[str, str]]:
    """A propagation carrier -> the envelope's trace field and the headers for the rest."""
    trace_context = None
    parent = carrier.get("traceparent")
    if parent is not None:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            try:
                trace_context = TraceContext(
                    bytes.fromhex(parts[1]),
                    bytes.fromhex(parts[2]),
                    int(parts[3], 16),
                    carrier.get("tracestate", ""),
                )
            except ValueError:
                trace_context = None
    rest = {k: v for k, v in carrier.items() if k not in _W3C_KEYS}
    return trace_context, rest


def from_envelope(
    trace_context: TraceContext | None, headers: Mapping[str, str]
) -> otel_context.Context:
    """The context a received message continues: its trace field and headers, extracted."""
    carrier: dict[str, str] = dict(headers)
    if trace_context is not None:
        carrier["traceparent"] = trace_context.traceparent
        if trace_context.tracestate:
            carrier["tracestate"] = trace_context.tracestate
    return propagate.extract(carrier)


class Tracing:
    """The tracer of one Mesh, and what the sockets ask of it (module docstring)."""

    def __init__(self, workload: str, tracer_provider: Any = None, in_force: Any = None) -> None:
        from .. import __version__

        self._in_force = in_force  # the Mesh's PolicyInForce: what process() and send() read
        self._explicit = tracer_provider is not None
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = provider.get_tracer("zmeshlib", __version__)
        self.workload = workload
        self._rng = random.Random()
        self._seen: tuple[object, object, bool] = (None, None, False)  # recording()'s answer

    def recording(self, policy: Policy | None = None) -> bool:
        """Whether spans would be recorded at all: an SDK is there and the policy traces.

        Asked per message, so the answer is kept while the policy and the global provider
        stay the same objects (two identity tests).
        """
        if policy is None:
            policy = self._in_force.policy
        provider = _trace_api._TRACER_PROVIDER
        if policy is self._seen[0] and provider is self._seen[1]:
            return self._seen[2]
        # the API's proxy provider delegates to nothing until an SDK provider is set globally
        answer = policy.telemetry.tracing.enabled and (
            self._explicit or not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
        )
        self._seen = (policy, provider, answer)
        return answer

    def start_call(self, policy: Policy, service: str, method: str) -> Any:
        """The CLIENT span of one call, or None when this call is not traced."""
        if not self.recording(policy):
            return None
        parent = trace.get_current_span().get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            sampling = policy.telemetry.tracing.sampling
            if sampling < 100.0 and self._rng.random() * 100.0 >= sampling:
                return None
        return self.tracer.start_span(
            f"{service or 'zmeshlib'}/{method}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system.name": RPC_SYSTEM,
                "rpc.method": method,
                "rpc.service": service,
                WORKLOAD_ID: self.workload,
            },
        )

    def call(self, policy: Policy, service: str, method: str) -> CallSpans | None:
        """The spans of one call, or None when it is not traced."""
        span = self.start_call(policy, service, method)
        return None if span is None else CallSpans(self, span, service, method)

    def _sampled_root(self, parent: Any) -> bool:
        """A span with no sampled parent is a root: drawn by ``telemetry.tracing.sampling``."""
        if parent.is_valid and parent.trace_flags.sampled:
            return True
        sampling = self._in_force.policy.telemetry.tracing.sampling
        return sampling >= 100.0 or self._rng.random() * 100.0 < sampling

    def start_producer(
        self, kind: str, destination: str, headers: Mapping[str, str] | None, payload: Any
    ) -> tuple[Any, TraceContext | None, Mapping[str, str] | None] | None:
        """A PRODUCER span ``send {destination}`` and the context a message carries under it;
        None when not traced. ``kind`` is ``publish`` or ``push``. The caller has found
        :meth:`recording` true (per message: asked once)."""
        if not self._sampled_root(trace.get_current_span().get_span_context()):
            return None
        span = self.tracer.start_span(
            f"send {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": kind,
                "messaging.destination.name": destination,
                "messaging.message.body.size": body_size(payload),
                WORKLOAD_ID: self.workload,
            },
        )
        trace_context, headers = self.inject(span, headers)
        return span, trace_context, headers

    def start_process(self, msg: Any, service: str) -> tuple[Any, otel_context.Context] | None:
        """The CONSUMER span ``process {destination}`` of a received message, its parent the
        context the message was sent in; None when not traced."""
        if not self.recording():
            return None
        parent = from_envelope(msg.trace, msg.headers)
        if not self._sampled_root(trace.get_current_span(parent).get_span_context()):
            return None
        destination = msg.topic if msg.topic is not None else service
        attributes = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
            "messaging.message.id": str(msg.message_id),
            "messaging.message.body.size": sum(len(f) for f in msg.frames),
            WORKLOAD_ID: self.workload,
        }
        if msg.peer.spiffe_id is not None:
            attributes[PEER_ID] = str(msg.peer.spiffe_id)
        span = self.tracer.start_span(
            f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        return span, parent

    def start_attempt(self, call_span: Any, service: str, method: str, attempt: int) -> Any:
        """A retry's or hedge's own CLIENT span, under the call's."""
        return self.tracer.start_span(
            f"{service or 'zmeshlib'}/{method}",
            context=trace.set_span_in_context(call_span),
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system.name": RPC_SYSTEM,
                "rpc.method": method,
                "rpc.service": service,
                ATTEMPT: attempt,
                WORKLOAD_ID: self.workload,
            },
        )

    def inject(
        self, span: Any, headers: Mapping[str, str] | None
    ) -> tuple[TraceContext | None, Mapping[str, str] | None]:
        """The envelope's trace field for a message sent under ``span``, and its headers.

        With OpenTelemetry's default propagators (W3C trace context and baggage) and no
        baggage, the trace field is the span's context as it is, without a carrier: what
        the propagators would write, for a fifth of the cost.
        """
        if propagate.get_global_textmap() is _DEFAULT_TEXTMAP and not baggage.get_all():
            ctx = span.get_span_context()
            state = ctx.trace_state.to_header() if ctx.trace_state else ""
            direct = TraceContext(
                ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"),
                int(ctx.trace_flags), state,
            )  # fmt: skip
            return direct, headers
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        trace_context, rest = to_envelope(carrier)
        if rest:
            headers = {**headers, **rest} if headers else rest
        return trace_context, headers

    def start_server(
        self,
        policy: Policy,
        service: str,
        method: str,
        trace_context: TraceContext | None,
        headers: Mapping[str, str],
        peer: str,
    ) -> tuple[Any, otel_context.Context] | None:
        """The SERVER span of one request and the context it continues (the caller's trace
        and baggage); None if not traced."""
        if not self.recording(policy):
            return None
        parent = from_envelope(trace_context, headers)
        if not trace.get_current_span(parent).get_span_context().is_valid:
            sampling = policy.telemetry.tracing.sampling
            if sampling < 100.0 and self._rng.random() * 100.0 >= sampling:
                return None
        attributes = {
            "rpc.system.name": RPC_SYSTEM,
            "rpc.method": method,
            "rpc.service": service,
            WORKLOAD_ID: self.workload,
        }
        if peer:
            attributes[PEER_ID] = peer
        span = self.tracer.start_span(
            f"{service or 'zmeshlib'}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        return span, parent


class CallSpans:
    """The CLIENT span of one call and those of its retries and hedges."""

    __slots__ = ("_attempts", "_first", "_method", "_service", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Any, service: str, method: str) -> None:
        self._tracing = tracing
        self.span = span
        self._service = service
        self._method = method
        self._first: tuple[TraceContext | None, Mapping[str, str] | None] | None = None
        self._attempts: dict[int, Any] = {}

    def envelope(
        self, attempt: int, headers: Mapping[str, str] | None
    ) -> tuple[TraceContext | None, Mapping[str, str] | None]:
        """The trace field and headers of attempt ``attempt`` (0: under the call's span)."""
        if attempt == 0:
            if self._first is None:
                self._first = self._tracing.inject(self.span, headers)
            return self._first
        span = self._tracing.start_attempt(self.span, self._service, self._method, attempt)
        self._attempts[attempt] = span
        return self._tracing.inject(span, headers)

    def finish(
        self, status: MeshStatus, peer: str, error: BaseException | None, answers: Any
    ) -> None:
        """End every span: each attempt by its own answer (none: cancelled), then the call."""
        for attempt, span in self._attempts.items():
            answer = answers.get(attempt)
            if answer is None:
                end(span, MeshStatus.CANCELLED)
            elif isinstance(answer, BaseException):
                end(span, getattr(answer, "status", MeshStatus.INTERNAL), error=answer)
            else:
                end(span, MeshStatus.OK, _peer_of(answer))
        self._attempts.clear()
        if self.span is not None:
            end(self.span, status, peer, error)
            self.span = None


def body_size(payload: Any) -> int:
    """``messaging.message.body.size``: the payload's bytes, one frame or several."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload)
    if isinstance(payload, str):
        return len(payload.encode())
    return sum(len(part) for part in payload)


def _peer_of(message: Any) -> str:
    spiffe_id = message.peer.spiffe_id
    return str(spiffe_id) if spiffe_id is not None else ""


@contextmanager
def process_span(msg: Any) -> Iterator[Any]:
    """``Message.process()``: the CONSUMER span, current for the block (module docstring)."""
    receiver = msg._receiver  # the receiving socket's core: its mesh's tracing, its service
    tracing = receiver.tracing if receiver is not None else None
    traced = tracing.start_process(msg, receiver.service) if tracing is not None else None
    metrics = receiver.metrics if receiver is not None else None
    started = time.monotonic() if metrics is not None and metrics.recording() else None
    if traced is None and started is None:
        yield None
        return
    span, parent = traced if traced is not None else (None, None)
    token = use(span, parent) if span is not None else None
    failed = ""
    try:
        yield span
    except BaseException as error:
        failed = type(error).__qualname__
        if span is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            span.set_attribute("error.type", failed)
        raise
    finally:
        if token is not None:
            unuse(token)
        if span is not None:
            span.end()
        if started is not None:
            assert metrics is not None
            labels = metrics.messaging_labels("process", receiver.service)
            if failed:
                labels = {**labels, "error.type": failed}
            metrics.process_duration.record(time.monotonic() - started, labels)


def end(span: Any, status: MeshStatus, peer: str = "", error: BaseException | None = None) -> None:
    """End a request span with its outcome (``rpc.response.status_code``, ``error.type``)."""
    if peer:
        span.set_attributes({"rpc.response.status_code": status.name, PEER_ID: peer})
    else:
        span.set_attribute("rpc.response.status_code", status.name)
    if status is not MeshStatus.OK:
        span.set_attribute("error.type", status.name)
        span.set_status(Status(StatusCode.ERROR, str(error) if error is not None else status.name))
        if error is not None:
            span.record_exception(error)
    span.end()


def use(span: Any, parent: otel_context.Context | None = None) -> object:
    """Make ``span`` current, over ``parent`` (the received context: its baggage); returns
    the token for :func:`unuse`."""
    return otel_context.attach(trace.set_span_in_context(span, parent))


def unuse(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
