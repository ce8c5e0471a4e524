"""REQ: requests over one DEALER per endpoint, driven by the call state machine.

Rules this module keeps:

* The shell decides nothing. Each request is a :class:`~zmeshlib.resilience.Call`
  over the socket's :class:`~zmeshlib.resilience.EndpointSet`; the operation
  here feeds it what happened (replies, sends that could not be handed over,
  endpoints lost, timers) and executes the commands it returns (send attempt
  N to endpoint E, cancel, finish). The usual request is the same operation:
  its first step sends inline, and the sync driver's first wait is the
  blocking read that brings the reply.
* A reply finds its call by request id, whichever endpoint it comes from;
  late and duplicate replies are dropped and counted, never handed to
  another call. Unlike zmq.REQ, a lost reply costs one ``Timeout``, never the
  socket. In the asyncio flavour, concurrent requests on one socket each get
  their own reply (a reply one of them reads for another is handed over).
* What applies comes from ``traffic.<service>`` of the policy in force, read
  at each request: timeout, retries and their budget, hedging, the load
  balancer, outlier detection, and the circuit breaker (``pool``), which the
  sockets of one Mesh share per service.
* pyzmq's REQ idiom works: ``send()`` hands a request over, ``recv()`` waits
  for its reply; a second ``send()`` first raises, as zmq.REQ's EFSM does.
* An attempt whose connection cannot take it (no completed handshake, a full
  queue) waits for it at most ``pool.connect_timeout`` (250 ms by default), then
  counts as not sent (``connect-failure``): it never ran, so it may go
  elsewhere.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import (
    MeshError,
    RemoteError,
    ResourceExhausted,
    Timeout,
    Unavailable,
    error_for_status,
)
from .._models import SHADOW_HEADER, Delivery, Message, SocketKind, StatusCode, TraceContext
from ..identity.card import Card
from ..resilience import (
    Admission,
    Call,
    CallFailure,
    Cancel,
    EndpointSet,
    Finish,
    Mirror,
    Pool,
    Send,
)
from ..resilience.endpoints import Event
from ..resilience.pool import idle
from ..resilience.routing import Plan
from ..resilience.subsetting import keep
from ..telemetry.access import trace_id_of
from ..telemetry.tracing import body_size
from .base import MeshSocket, Upstream
from .core import Payload
from .core_reqrep import ClientCore, Pending
from .deadlines import remaining
from .destinations import Destinations
from .drivers import Op, Started, Wait
from .frames import send_message
from .idioms import RecvIdioms, SendIdioms
from .receiving import flags_timeout
from .traffic import ServiceTraffic

if TYPE_CHECKING:
    from ..telemetry.tracing import CallSpans
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
DEFAULT_TIMEOUT = 5.0  # seconds a request waits when neither the caller nor the policy says
CONNECT_TIMEOUT = 0.25  # seconds an attempt waits for its connection to take it, by default


class _Client(MeshSocket, SendIdioms, RecvIdioms):
    """REQ: a client over one DEALER per upstream endpoint."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.REQ, driver)
        self.core = ClientCore("", mesh.limits, self.drops)
        self.default_timeout = DEFAULT_TIMEOUT
        self._rng = random.Random()
        self._seed = self._rng.randbytes(16)  # its own choice of endpoints (pool.max_connections)
        self.destinations = Destinations(self._rng, self._outlier_event)
        self._endpoints_policy: object = None
        self._service_traffic: ServiceTraffic
        # send()'s request (operation, its first wait, result), until recv() takes its reply
        self._outstanding: Started | None = None

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        # queue requests only to connections whose handshake completed: a request that could
        # not be handed over was never sent (and may go elsewhere), rather than waiting in
        # the queue of a connection that may never come up (a server restarted with a new key)
        sock.setsockopt(zmq.IMMEDIATE, 1)

    def _wanted(self) -> dict[str, Card | None]:
        """The endpoints to dial, at most ``pool.max_connections`` of each service and of
        each of its subsets (``resilience/subsetting.py``)."""
        wanted = super()._wanted()
        policy = self._mesh.policy
        kind = self.kind.counterpart.name
        services = {name for how, name in self._targets if how == "service"} | self._also
        for name in sorted(services):
            limit = policy.traffic_for(name).pool.max_connections
            if limit is None:
                continue
            mine = {
                address: card
                for address, card in wanted.items()
                if card is not None
                and any(ep.address == address for ep in card.endpoints_for(name, kind))
            }
            if len(mine) <= limit:
                continue
            spec = policy.services.get(name)
            groups = [list(mine)]
            for subset in spec.subsets.values() if spec is not None else ():
                groups.append([a for a, card in mine.items() if subset.selects(card.labels)])
            kept = keep(groups, limit, self._seed)
            for address in mine.keys() - kept:
                del wanted[address]
                self._also_only.pop(address, None)
        return wanted

    def _use(self, up: Upstream, now: float) -> None:
        """A request goes to ``up``: reconnect it when idleness closed it."""
        up.last_used = now
        if up.idle:
            up.idle = False
            up.sock.connect(up.address)
            self.counts["idle_reconnected"] += 1

    def _housekeeping(self) -> None:
        """Close the connections ``pool.idle_timeout`` says are idle (``resilience/pool.py``)."""
        super()._housekeeping()
        policy = self._mesh.policy
        by_timeout: dict[float, dict[str, float]] = {}
        for address, up in self._upstreams.items():
            if up.idle:
                continue
            pool = policy.traffic_for(self._also_only.get(address, self.service)).pool
            if pool.idle_timeout is not None:
                by_timeout.setdefault(pool.idle_timeout, {})[address] = up.last_used
        if not by_timeout:
            return
        now = time.monotonic()
        busy = {p.endpoint for p in self.core.pending.values()}
        for timeout, last_used in by_timeout.items():
            for address in idle(last_used, busy, now, timeout):
                up = self._upstreams[address]
                up.sock.disconnect(address)
                up.idle = True
                self.counts["idle_closed"] += 1
                log.debug("closed the idle connection to %s", address)

    def _outlier_event(self, event: Event) -> None:
        """An ejection or a return: logged (at a bounded rate) and counted."""
        self.counts[f"outlier_{event.kind}"] += 1
        if event.kind == "ejected":
            self._mesh._log_limited(
                f"ejected-{event.endpoint}",
                "%s of service %r ejected for %.0fs (ejection %d): consecutive errors",
                event.endpoint,
                self.service,
                (event.until or 0.0) - time.monotonic(),
                event.times,
            )
        else:
            log.info("%s of service %r returns from ejection", event.endpoint, self.service)

    def _upstreams_changed(self) -> None:
        super()._upstreams_changed()
        choosable = {a: up for a, up in self._upstreams.items() if not up.draining}
        self.destinations.update(self.service, choosable, self._also_only)

    def _in_flight_to(self, address: str) -> bool:
        return any(p.endpoint == address for p in self.core.pending.values())

    @property
    def endpoint_set(self) -> EndpointSet:
        """The endpoint set of the whole service (each subset has its own: destinations.py)."""
        return self.destinations.all

    def _timeout(self, timeout: float | None, flags: int) -> float:
        """How long a request may take: the caller's, or the socket's default, shortened to
        what is left of a deadline inherited from the request being handled (deadlines.py)."""
        default = self.default_timeout if self._rcvtimeo < 0 else self._rcvtimeo / 1000
        wait = flags_timeout(timeout, flags, default)
        wait = remaining(default if wait is None else wait)
        if wait <= 0:
            raise Timeout(
                "the deadline this call inherits from the request being handled has passed: "
                "not sent (the caller has given up)",
                delivery=Delivery.NOT_SENT,
            )
        return wait

    def _traffic(self) -> ServiceTraffic:
        policy = self._mesh._in_force.policy
        if policy is self._endpoints_policy:
            return self._service_traffic  # the usual case: the policy of the last request
        state = self._service_traffic = self._mesh._traffic.of(policy, self.service)
        self._endpoints_policy = policy  # a new policy: its balancer, ejection, subsets, mirrors
        self.destinations.configure(state)
        if state.mirrors != self._also:
            self._also = state.mirrors  # connect to (or drop) the services it mirrors to
            self._refresh(force=True)
        return state

    # -- the request operation -------------------------------------------------------------

    def _request_op(
        self,
        payload: Payload,
        method: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> Op:
        """A request's operation: the call itself, inside the service's circuit breaker when
        it has one (without one, the call's own operation: one generator, not two)."""
        traffic = self._traffic()
        plan = traffic.planner.plan(method, headers, self._rng)
        spec = plan.traffic
        if spec.timeout is not None and spec.timeout < timeout:
            timeout = spec.timeout  # the route's (or service's) timeout bounds every call to it
        deadline = time.monotonic() + timeout
        pool = traffic.pool_for(plan.subset)
        if pool is None:
            return self._call_op(payload, method, deadline, headers, trace, traffic, plan)
        return self._pooled_op(
            payload, method, deadline, timeout, headers, trace, traffic, plan, pool
        )

    def _pooled_op(
        self,
        payload: Payload,
        method: str,
        deadline: float,
        timeout: float,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
        traffic: ServiceTraffic,
        plan: Plan,
        pool: Pool,
    ) -> Op:
        yield from self._admission(traffic, pool, deadline, timeout)
        try:
            return (
                yield from self._call_op(payload, method, deadline, headers, trace, traffic, plan)
            )
        finally:
            traffic.release(pool)

    def _admission(
        self, traffic: ServiceTraffic, pool: Pool, deadline: float, timeout: float
    ) -> Op:
        """Take a slot of the service's circuit breaker, waiting (up to the deadline) when
        its queue has room; fail fast when it has none."""
        admission = pool.admit()
        if admission is Admission.FULL:
            self.counts["circuit_refused"] += 1
            raise ResourceExhausted(pool.refusal(self.service), delivery=Delivery.NOT_SENT)
        if admission is Admission.WAIT:
            wake = self._wake
            traffic.waiters.append(wake)
            try:
                while pool.admit_waiting() is Admission.WAIT:
                    if time.monotonic() >= deadline:
                        pool.leave()
                        raise Timeout(
                            f"no slot of the circuit breaker of service {self.service!r} freed "
                            f"within {timeout:g}s (pool.max_requests = {pool.max_requests}): "
                            "not sent",
                            delivery=Delivery.NOT_SENT,
                        )
                    yield self._wait(deadline, socks=())
            finally:
                traffic.waiters.remove(wake)

    def _call_op(
        self,
        payload: Payload,
        method: str,
        deadline: float,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
        traffic: ServiceTraffic,
        plan: Plan,
    ) -> Op:
        core = self.core
        spec = plan.traffic
        self._refresh()
        now = time.monotonic()
        subset = plan.subset
        if plan.delay or plan.abort is not None:
            self._count_faults(plan)
        mirror = plan.mirror
        call = Call(
            method,
            deadline,
            spec.retries,
            spec.hedging,
            self.destinations.for_subset(traffic, subset),
            traffic.budget_for(spec.retries.budget),
            self._rng,
            now,
            delay=plan.delay,
            abort=plan.abort,
            mirror=None if mirror is None else self.destinations.for_mirror(traffic, mirror),
        )
        connect_timeout = spec.pool.connect_timeout or CONNECT_TIMEOUT
        sent: dict[int, tuple[Pending, Upstream]] = {}  # attempt -> its request, its upstream
        attempts: dict[int, int] = {}  # request id -> attempt
        unsent: dict[int, tuple[list[bytes], Upstream, Pending, float]] = {}  # waiting to go
        replies: dict[int, Message | RemoteError] = {}  # attempt -> its reply
        generation = self._generation
        # the call's spans, when it is traced and the caller did not pass trace= itself
        spans = (
            None
            if trace is not None
            else self._mesh.tracing.call(traffic.policy, self.service, method)
        )
        # for rpc.client.call.duration and the access log
        started = now if self._mesh.metrics.recording() or self._mesh.access.enabled() else None
        commands = call.start(now)
        try:
            while True:
                i = 0
                while i < len(commands):  # execute in order; executing may add commands
                    command = commands[i]
                    i += 1
                    if isinstance(command, Send):  # hand attempt N to its endpoint's connection
                        now = time.monotonic()
                        if command.attempt:
                            self.counts["hedges" if command.hedge else "retries"] += 1
                        up = self._upstreams.get(command.endpoint)
                        if up is None:  # it left between the choice and the send
                            commands += call.not_sent(command.attempt, now)
                            continue
                        self._use(up, now)
                        left = command.deadline - now
                        sent_trace, sent_headers = (
                            (trace, headers) if spans is None
                            else spans.envelope(command.attempt, headers)
                        )  # fmt: skip
                        request, mid = core.request_frames(
                            payload, method, int((time.time() + left) * 1000), int(left * 1000),
                            sent_headers, sent_trace, command.attempt,
                        )  # fmt: skip
                        pending = core.expect(mid, command.deadline, method, up.address)
                        attempts[mid] = command.attempt
                        if send_message(up.sock, request, _NOBLOCK):
                            sent[command.attempt] = (pending, up)
                        else:  # its connection cannot take it yet: wait a while (docstring)
                            give_up = min(now + connect_timeout, command.deadline)
                            unsent[command.attempt] = (request, up, pending, give_up)
                    elif command.__class__ is Cancel:
                        self._cancel(command.attempt, sent, attempts, unsent)
                    elif command.__class__ is Mirror:
                        copy_trace, copy_headers = (
                            (trace, headers) if spans is None else spans.envelope(0, headers)
                        )
                        self._shadow(
                            command.endpoint, payload, method, deadline, copy_headers, copy_trace
                        )
                    elif spans is None and started is None:
                        return self._result(command, replies, method, subset)  # type: ignore[arg-type]
                    else:
                        return self._observed_result(command, replies, method, subset, spans,  # type: ignore[arg-type]
                                                     started, payload, trace)  # fmt: skip
                commands = []
                due = call.next_timer()
                if len(sent) == 1:  # the usual wait: one attempt's reply
                    ((_, up),) = sent.values()
                    wait = self._wait(due, socks=(up.sock,))
                else:
                    wait = self._wait(due, socks=tuple({up.sock for _, up in sent.values()}))
                if unsent:
                    wait.writable = tuple({up.sock for _, up, _, _ in unsent.values()})
                    wait.poller = None
                events = yield wait
                now = time.monotonic()
                for frames, peer in self._arrivals(events):
                    got = core.take(frames, peer)
                    if got is None:
                        continue
                    attempt = attempts.pop(got[0], None)
                    if attempt is None:
                        core.inbox[got[0]] = got[1]  # another call's, waiting on this socket too
                        continue
                    commands += self._answered(call, attempt, got[1], replies, sent, now)
                if call.finished:
                    continue  # the usual end: its reply came
                if core.inbox:
                    for mid in [m for m in attempts if m in core.inbox]:
                        attempt = attempts.pop(mid)
                        commands += self._answered(call, attempt, core.inbox.pop(mid), replies,
                                                   sent, now)  # fmt: skip
                    if core.inbox:
                        self._nudge()  # replies read here for other waiting calls
                for attempt, (request, up, pending, give_up) in list(unsent.items()):
                    if self._upstreams.get(up.address) is not up or now >= give_up:
                        del unsent[attempt]
                        core.forget(pending)
                        attempts.pop(pending.message_id, None)
                        commands += call.not_sent(attempt, now)
                    elif send_message(up.sock, request, _NOBLOCK):
                        del unsent[attempt]
                        sent[attempt] = (pending, up)
                self._refresh()
                for attempt, (pending, up) in list(sent.items()):
                    if self._upstreams.get(up.address) is not up:  # gone, or a new key
                        self.counts["upstream_lost"] += 1
                        del sent[attempt]
                        core.forget(pending)
                        attempts.pop(pending.message_id, None)
                        commands += call.lost(attempt, now)
                if self._generation != generation:
                    generation = self._generation
                    commands += call.endpoints_changed(now)
                if due is not None and now >= due:
                    commands += call.timer(now)
        finally:
            if spans is not None and spans.span is not None:  # ended early (closed, error)
                spans.finish(StatusCode.CANCELLED, "", None, replies)
            for pending, _ in sent.values():
                core.forget(pending)
            for _, _, pending, _ in unsent.values():
                core.forget(pending)

    def _count_faults(self, plan: Plan) -> None:
        if plan.delay:
            self._count_traffic("fault.delay", "faults_delayed")
        if plan.abort is not None:
            self._count_traffic("fault.abort", "faults_aborted")

    def _count_traffic(self, event: str, counter: str) -> None:
        self.counts[counter] += 1
        self._mesh._traffic.count(self.service, event)

    def _shadow(
        self,
        endpoint: str | None,
        payload: Payload,
        method: str,
        deadline: float,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> None:
        """Hand a mirror copy over if its connection takes it now; else drop and count it.

        The copy carries the call's deadline and the ``zmesh-shadow`` header; its reply is
        counted and dropped (``ClientCore.shadow``) when the next copy drains the connection,
        on which no call may be waiting.
        """
        up = self._upstreams.get(endpoint) if endpoint is not None else None
        sent = False
        if up is not None:
            left = deadline - time.monotonic()
            marked = (
                {**headers, SHADOW_HEADER: self.service}
                if headers
                else {SHADOW_HEADER: self.service}
            )
            try:
                frames, mid = self.core.request_frames(
                    payload, method, int((time.time() + left) * 1000), int(left * 1000), marked,
                    trace,
                )  # fmt: skip
            except MeshError:  # no room for the mark (the header limits): not a copy to send
                frames, mid = [], 0
            self._use(up, time.monotonic())
            if frames and send_message(up.sock, frames, _NOBLOCK):
                self.core.shadow(mid)
                sent = True
            self._drain(up)
        self._count_traffic("mirror.sent" if sent else "mirror.dropped",
                            "mirrored" if sent else "mirror_dropped")  # fmt: skip

    def _drain(self, up: Upstream, most: int = 64) -> None:
        """Read what waits on a mirror's connection: replies to copies are counted and
        dropped; a reply to a call (the mirror also serves calls) goes to its inbox."""
        core = self.core
        for _ in range(most):
            got = self._take(up.sock)
            if got is None:
                break
            answer = core.take(*got)
            if answer is not None:
                core.inbox[answer[0]] = answer[1]  # its call claims it (_call_op)
        if core.inbox:
            self._nudge()

    def _cancel(
        self,
        attempt: int,
        sent: dict[int, tuple[Pending, Upstream]],
        attempts: dict[int, int],
        unsent: dict[int, tuple[list[bytes], Upstream, Pending, float]],
    ) -> None:
        entry = sent.pop(attempt, None)
        pending = entry[0] if entry is not None else None
        if pending is None and attempt in unsent:
            pending = unsent.pop(attempt)[2]
        if pending is not None:
            self.core.forget(pending)  # its reply, if it comes, is late
            attempts.pop(pending.message_id, None)
            self.counts["attempts_cancelled"] += 1

    def _answered(
        self,
        call: Call,
        attempt: int,
        answer: Message | RemoteError,
        replies: dict[int, Message | RemoteError],
        sent: dict[int, tuple[Pending, Upstream]],
        now: float,
    ) -> list[Any]:
        sent.pop(attempt, None)
        replies[attempt] = answer
        if answer.__class__ is Message:
            return call.reply(attempt, StatusCode.OK, False, now)
        error: RemoteError = answer  # type: ignore[assignment]
        return call.reply(attempt, error.status, getattr(error, "retriable", False), now)

    def _result(
        self,
        finish: Finish,
        replies: dict[int, Message | RemoteError],
        method: str,
        subset: str | None = None,
    ) -> Message:
        failure = finish.error
        if failure is None:
            answer = replies[finish.attempt]  # type: ignore[index]
            assert isinstance(answer, Message)
            return answer
        self.counts["failures"] += 1
        if failure.attempt is not None and failure.attempt in replies:
            error = replies[failure.attempt]
            assert isinstance(error, RemoteError)
            raise error
        raise self._error(failure, method, subset)

    def _observed_result(
        self,
        finish: Finish,
        replies: dict[int, Message | RemoteError],
        method: str,
        subset: str | None,
        spans: CallSpans | None,
        started: float | None,
        payload: Payload,
        trace: TraceContext | None,
    ) -> Message:
        """:meth:`_result`, ending the call's spans and recording its duration."""
        try:
            reply = self._result(finish, replies, method, subset)
        except RemoteError as error:
            self._observed(spans, started, method, error.status, None, error, replies, payload,
                           trace)  # fmt: skip
            raise
        self._observed(spans, started, method, StatusCode.OK, reply, None, replies, payload, trace)
        return reply

    def _observed(
        self,
        spans: CallSpans | None,
        started: float | None,
        method: str,
        status: StatusCode,
        reply: Message | None,
        error: RemoteError | None,
        replies: dict[int, Message | RemoteError],
        payload: Payload,
        trace: TraceContext | None,
    ) -> None:
        peer = reply.peer if reply is not None else None
        context = spans.span.get_span_context() if spans is not None and spans.span else None
        if spans is not None:
            spans.finish(status, str(peer.spiffe_id) if peer and peer.spiffe_id else "", error,
                         replies)  # fmt: skip
        if started is None:
            return
        metrics = self._mesh.metrics
        seconds = time.monotonic() - started
        if metrics.recording():
            metrics.client_duration.record(
                seconds, metrics.rpc_labels(self.service, method, status)
            )
            istio = metrics.istio_now
            if istio is not None:
                istio.request(
                    "source", peer, self.service, status, seconds, body_size(payload),
                    body_size(reply.payload) if reply is not None else 0,
                )  # fmt: skip
        access = self._mesh.access
        if access.enabled():
            access.call(
                "client", peer, self.service, method, status, seconds, body_size(payload),
                format(context.trace_id, "032x") if context is not None else trace_id_of(trace),
            )  # fmt: skip

    def _error(self, failure: CallFailure, method: str, subset: str | None = None) -> RemoteError:
        what = f"{method or 'request'} to service {self.service or 'of this socket'!r}"
        if subset is not None:
            what += f", subset {subset!r}"
        text = f"{what}: {failure.reason}"
        status = failure.status
        if status is StatusCode.DEADLINE_EXCEEDED:
            self.counts["timeouts"] += 1
            return Timeout(f"{text}; the socket stays usable", delivery=failure.delivery)
        if status is not StatusCode.UNAVAILABLE:  # an injected abort: raised as its status
            error = error_for_status(status, failure.reason, what=what)
            error.delivery = failure.delivery  # never sent
            return error
        if failure.delivery is Delivery.NOT_SENT and not self._upstreams:
            text += f": {self._why_none()}"
        elif failure.delivery is Delivery.NOT_SENT and subset is not None:
            empty = self.destinations.empty_subset(subset)
            if empty is not None:
                labels = dict(empty.labels)
                text += (
                    f": no connected endpoint of this service has the labels {labels} "
                    "(Mesh(labels=...) sets a server's labels)"
                )
        return Unavailable(text, delivery=failure.delivery)

    def _take_outstanding(self) -> tuple[Op, Wait | None]:
        """What :meth:`send` started, for ``recv()``: its operation and the wait it is at."""
        started = self._outstanding
        if started is None:
            raise MeshError("no request to receive the reply of: send() one first")
        self._outstanding = None
        op, first, result = started
        if first is None:  # it already ended with its reply: hand that out
            return _done(result), None
        return op, first

    def _check_idle(self) -> None:
        if self._outstanding is not None:
            raise MeshError(
                "this REQ socket already sent a request: recv() its reply first (send and recv "
                "alternate, as on zmq.REQ), or use request() or one socket per concurrent caller"
            )


def _handed_over(wait: Wait) -> bool:
    """A request's operation waits for its reply, no longer for an endpoint or to send it."""
    return wait.events == _POLLIN and bool(wait.sockets) and not wait.writable


def _done(result: Any) -> Op:
    """An operation that ends at once with ``result``."""
    return result
    yield  # a generator  # type: ignore[unreachable]


# -- the facades ---------------------------------------------------------------------


class ReqSocket(_Client):
    """REQ: ``request()`` (or ``send()`` then ``recv()``); never locks up."""

    def request(
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> Message:
        """Send one request and wait for its reply, for at most ``timeout`` seconds (default
        ``default_timeout``, 5 s; ``traffic.<service>.timeout`` bounds it, and so does a
        deadline inherited from the request being handled). Retries, hedging and balancing
        follow the policy; an error reply is raised as the error its status stands for."""
        self._check_idle()
        op = self._request_op(payload, method, self._timeout(timeout, 0), headers, trace)
        return self._driver.run(self, op)

    def send(
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        flags: int = 0,
    ) -> None:
        """Start a request (pyzmq's REQ idiom: handed over before it returns); :meth:`recv`
        waits for its reply."""
        self._check_idle()
        op = self._request_op(payload, method, self._timeout(timeout, 0), headers, trace)
        self._outstanding = self._driver.advance(self, op, _handed_over)

    def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The reply to the request :meth:`send` started (its own timeout applies)."""
        op, first = self._take_outstanding()
        return self._driver.run(self, op, first)


class AsyncReqSocket(_Client):
    """REQ, awaited. Concurrent ``request()`` calls on one socket each get their own reply."""

    async def request(
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> Message:
        """Send one request and wait for its reply (as :meth:`ReqSocket.request`)."""
        op = self._request_op(payload, method, self._timeout(timeout, 0), headers, trace)
        return await self._driver.run(self, op)

    async def send(
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        flags: int = 0,
    ) -> None:
        """Start a request, handed over before it returns (as :meth:`ReqSocket.send`)."""
        self._check_idle()
        op = self._request_op(payload, method, self._timeout(timeout, 0), headers, trace)
        self._outstanding = await self._driver.advance(self, op, _handed_over)

    async def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        op, first = self._take_outstanding()
        return await self._driver.run(self, op, first)
