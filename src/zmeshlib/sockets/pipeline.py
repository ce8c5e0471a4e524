"""PUSH and PULL: a work pipeline whose every message is authorized at the puller.

Rules this module keeps:

* A pusher sends each message to one puller that can take it now (round
  robin over the connected ones, skipping any at its high-water mark), and
  waits, up to its timeout, while none can: as zmq.PUSH does.
* A pusher connected by ``service=`` honours ``traffic.<service>.split`` (and
  the split of a route whose ``match`` its headers meet; a push has no
  method): each message first draws its subset (``resilience.routing``), then
  goes round robin among the connected pullers of that subset only. Retries,
  timeouts, faults and mirrors are for requests: a push has no reply to judge.
* A puller judges every message (the sender may push to this service), as a
  subscriber judges publications; the resource is the service, not a topic.
* The sync and asyncio facades differ only in how they wait.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import Timeout
from .._models import Delivery, Message, SocketKind, TraceContext
from ..policy import Policy
from ..resilience.routing import choose_subset, select
from ..telemetry.access import trace_id_of
from ..telemetry.tracing import body_size
from ..wire.envelope import Kind
from .base import MeshSocket
from .consume import serve_messages, serve_messages_async
from .core import Payload
from .core_pubsub import PushCore, SubscriberCore
from .drivers import Op
from .frames import send_message
from .idioms import RecvIdioms, SendIdioms
from .receiving import flags_timeout, receive

if TYPE_CHECKING:
    from .mesh import Mesh

_NOBLOCK = int(zmq.NOBLOCK)


class _Pusher(MeshSocket, SendIdioms):
    """PUSH: round-robin over the connected PULL endpoints (or the bound socket's peers)."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.PUSH, driver)
        self.core = PushCore(mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits)
        self._rr = 0
        self._rng = random.Random()
        self._split_key: tuple[object, str | None] = (None, None)  # (policy, subset)
        self._split_socks: list[zmq.Socket] = []

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        # hand a message only to a puller whose connection completed its handshake: one that
        # is gone, or refuses us, never holds messages in a queue of its own
        sock.setsockopt(zmq.IMMEDIATE, 1)

    def _send_op(
        self,
        payload: Payload,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
        timeout: float | None,
    ) -> Op:
        self._refresh()
        span = None
        if trace is None and self._mesh.tracing.recording():
            traced = self._mesh.tracing.start_producer("push", self.service, headers, payload)
            if traced is not None:
                span, trace, headers = traced
        try:
            result = yield from self._push(payload, headers, trace, timeout)
        finally:
            if span is not None:
                span.end()
        metrics = self._mesh.metrics
        if metrics.recording():
            self.counts["messages_sent"] += 1  # messaging.client.sent.messages
            istio = metrics.istio_now
            if istio is not None:
                istio.message("source", "push", None, self.service, "", 0, body_size(payload))
        access = self._mesh.access
        if access.enabled():
            access.message("pusher", "push", None, self.service, None, body_size(payload),
                           trace_id_of(trace))  # fmt: skip
        return result

    def _push(
        self,
        payload: Payload,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
        timeout: float | None,
    ) -> Op:
        frames = self.core.frames(payload, headers, trace)
        deadline = None if timeout is None else time.monotonic() + timeout
        policy = self._mesh._in_force.policy
        subset = None
        if self.service and self._upstreams:
            spec = policy.traffic_for(self.service)
            if spec.split or spec.routes:
                subset = choose_subset(select(spec, "", headers).split, self._rng)
        while True:
            targets = self.underlying() if subset is None else self._subset_socks(policy, subset)
            n = len(targets)
            for i in range(n):
                sock = targets[(self._rr + i) % n]
                if not send_message(sock, frames, _NOBLOCK):
                    continue
                self._rr = (self._rr + i + 1) % n
                return None
            if deadline is not None and time.monotonic() >= deadline:
                where = self.service or "this socket"
                if subset is not None:
                    where += f", subset {subset!r} (the split's draw for this message)"
                raise Timeout(
                    f"no PULL peer of {where} could take a message within "
                    f"{timeout}s (none connected, or all at their high-water mark): "
                    + (self._why_none() if not targets else "they are not reading"),
                    delivery=Delivery.NOT_SENT,
                )
            yield self._wait(deadline, zmq.POLLOUT, socks=tuple(targets))
            self._refresh()

    def _subset_socks(self, policy: Policy, name: str) -> list[zmq.Socket]:
        """The connected pullers of subset ``name``, kept while upstreams and policy stay."""
        key = (policy, name)
        if key != self._split_key:
            spec = policy.services.get(self.service)
            chosen = spec.subsets[name] if spec is not None else None  # the policy checked it
            self._split_socks = [
                up.sock
                for up in self._upstreams.values()
                if chosen is not None and up.card is not None and chosen.selects(up.card.labels)
            ]
            self._split_key = key
        return self._split_socks

    def _upstreams_changed(self) -> None:
        super()._upstreams_changed()
        self._split_key = (None, None)

    def _default_timeout(self) -> float | None:
        return None if self._sndtimeo < 0 else self._sndtimeo / 1000


class _Puller(MeshSocket, RecvIdioms):
    """PULL: delivers pipeline messages whose sender may push to this service."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.PULL, driver)
        self.core = SubscriberCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops, kind=Kind.PUSH
        )
        self.core.tracing = mesh.tracing
        self.core.metrics = mesh.metrics
        self.core.access = mesh.access

    def _default_timeout(self) -> float | None:
        return None if self._rcvtimeo < 0 else self._rcvtimeo / 1000


# -- the facades ---------------------------------------------------------------------


class PushSocket(_Pusher):
    def send(
        self,
        payload: Payload,
        *,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        timeout: float | None = None,
        flags: int = 0,
    ) -> None:
        """Send to one PULL peer; waits (up to ``timeout`` seconds; default the ``sndtimeo``
        option, else for ever) while none can take it, as zmq.PUSH does. ``Timeout`` (a
        ``zmq.Again``) when none could; with ``flags=zmq.NOBLOCK`` at once."""
        wait = flags_timeout(timeout, flags, self._default_timeout())
        self._driver.run(self, self._send_op(payload, headers, trace, wait))


class AsyncPushSocket(_Pusher):
    async def send(
        self,
        payload: Payload,
        *,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        timeout: float | None = None,
        flags: int = 0,
    ) -> None:
        """Send to one PULL peer (as :meth:`PushSocket.send`)."""
        wait = flags_timeout(timeout, flags, self._default_timeout())
        await self._driver.run(self, self._send_op(payload, headers, trace, wait))


class PullSocket(_Puller):
    def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The next authorized message (timeouts as :meth:`SubSocket.recv`)."""
        return receive(
            self, flags_timeout(timeout, flags, self._default_timeout()), self.core.message
        )

    def serve(
        self,
        handler: Callable[[Message], Any],
        *,
        max_messages: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Handle each message with ``handler`` inside ``msg.process()`` (its CONSUMER span),
        until ``stop()`` is true, ``max_messages`` were handled, or the socket is closed;
        returns how many. A handler's exception is counted and logged, never fatal."""
        return serve_messages(self, handler, max_messages, stop)


class AsyncPullSocket(_Puller):
    async def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        op = self._receive_op(
            flags_timeout(timeout, flags, self._default_timeout()), self.core.message
        )
        return await self._driver.run(self, op)

    async def serve(
        self,
        handler: Callable[[Message], Any],
        *,
        max_messages: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Handle each message with ``handler`` (sync or async) inside ``msg.process()``
        (as :meth:`SubSocket.serve`)."""
        return await serve_messages_async(self, handler, max_messages, stop)
