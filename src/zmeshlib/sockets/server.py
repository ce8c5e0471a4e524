"""REP: a server over ROUTER; replies go to the right client, in any order.

Rules this module keeps:

* A request's peer is who its connection's handshake said (the User-Id);
  the core decides whether it may call the method, and whether its deadline
  has passed (an expired request is never handed to a handler).
* A handler's exception becomes an error reply with the status it stands for
  (an :class:`~zmeshlib.ApplicationError` keeps its retriable flag), never a
  silent hang; ``serve()`` ends cleanly when the socket is closed, from any
  thread.
* While a handler runs, its request's deadline is current (``deadlines.py``):
  the calls it makes inherit what is left of it. So is its SERVER span, when
  the request is traced (``telemetry/tracing.py``): they continue its trace.
* The sync and asyncio facades differ only in how they wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import Closed, MeshError, RemoteError, Timeout
from .._models import Message, Peer, SocketKind, StatusCode
from ..telemetry import tracing
from ..telemetry.access import trace_id_of
from ..telemetry.tracing import body_size
from .base import MeshSocket
from .core import Payload
from .core_reqrep import ServerCore
from .deadlines import enter, leave
from .drivers import REFRESH_INTERVAL, Op
from .frames import send_message
from .idioms import RecvIdioms, SendIdioms
from .receiving import flags_timeout, receive

if TYPE_CHECKING:
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

_NOBLOCK = int(zmq.NOBLOCK)
_OK = StatusCode.OK  # a plain name: an enum member lookup per reply is measurable


class _Server(MeshSocket, SendIdioms, RecvIdioms):
    """REP: a server over ROUTER; replies go to the right client, in any order."""

    burst = False
    #: A reply handed over is a reply the handler gave: close() lets it go for up to a
    #: second (a server that answers and exits must not lose its last answer), never more.
    close_linger_ms = 1000

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.REP, driver)
        self.core = ServerCore(mesh._in_force, "", mesh.limits, self.drops)
        self.core.metrics = mesh.metrics
        self.core.access = mesh.access
        self._last: Message | None = None
        # what a request's Message.reply calls: one bound method for every request
        self._replier: Callable[..., None] = self._reply

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        if server:  # a reply that cannot go (its client's queue is full, or it left) is told
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # to us, dropped and counted: not silent

    def _judge(self, frames: tuple[bytes, ...], peer: Peer) -> Message | None:
        msg, immediate = self.core.request(frames, peer, time.time(), self._replier)
        if immediate is not None:
            self._send_reply(immediate)
        return msg

    def _reply(
        self,
        msg: Message,
        payload: Payload,
        headers: Mapping[str, str] | None = None,
        *,
        status: StatusCode = StatusCode.OK,
        detail: str = "",
        retriable: bool = False,
    ) -> None:
        """Answer ``msg``, a request received here (its ``Message.reply``)."""
        if status is _OK:
            frames = self.core.reply_frames(msg._route, msg.message_id, payload, headers)
        else:
            frames = self.core.error_frames(
                msg._route, msg.message_id, status, detail, retriable=retriable
            )
        self._send_reply(frames)

    def _send_reply(self, frames: list[bytes]) -> None:
        server = self._server
        if server is None or self._closing:
            raise self._closed_error()
        try:
            sent = send_message(server, frames, _NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self.drops.drop("reply-unroutable", "the client left before its reply")
            return
        if not sent:
            self.drops.drop("reply-hwm", "the client is not reading its replies")

    def _reply_last(self, payload: Payload, headers: Mapping[str, str] | None) -> None:
        if self._last is None:
            raise MeshError("no request to reply to: call recv() first")
        msg, self._last = self._last, None
        msg.reply(payload, headers=headers)

    def _default_timeout(self) -> float | None:
        return None if self._rcvtimeo < 0 else self._rcvtimeo / 1000

    def _recv_op(self, timeout: float | None) -> Op:
        msg = yield from self._receive_op(timeout, self._judge)
        self._last = msg
        return msg

    def _server_span(self, msg: Message) -> Any:
        """The request's SERVER span and the context it continues; None if not traced."""
        return self._mesh.tracing.start_server(
            self._mesh._in_force.policy,
            self.service,
            msg.method,
            msg.trace,
            msg.headers,
            str(msg.peer.spiffe_id) if msg.peer.spiffe_id else "",
        )

    def _observed(
        self,
        msg: Message,
        traced: Any,
        status: StatusCode,
        error: Exception | None,
        started: float,
        result: Payload | None = None,
    ) -> None:
        """End the request's span, record its duration: what the handler's outcome was."""
        if traced is not None:
            tracing.end(traced[0], status, error=error)
        metrics = self._mesh.metrics
        seconds = time.monotonic() - started
        access = self._mesh.access
        if access.enabled():
            access.call("server", msg.peer, self.service, msg.method, status, seconds,
                        body_size(msg.payload), trace_id_of(msg.trace))  # fmt: skip
        if metrics.recording():
            metrics.server_duration.record(
                seconds, metrics.rpc_labels(self.service, msg.method, status)
            )
            istio = metrics.istio_now
            if istio is not None:
                istio.request(
                    "destination", msg.peer, self.service, status, seconds,
                    body_size(msg.payload), body_size(result) if result is not None else 0,
                )  # fmt: skip

    def reply_exception(self, msg: Message, error: BaseException) -> None:
        """Answer ``msg`` with the status an exception stands for (never a silent hang)."""
        if isinstance(error, RemoteError):
            msg.reply_error(error.status, str(error), retriable=getattr(error, "retriable", False))
        else:
            log.error("handler for %r raised", msg.method, exc_info=error)
            msg.reply_error(StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


def status_of(error: BaseException) -> StatusCode:
    """The status a handler's exception is answered with (``reply_exception``)."""
    return error.status if isinstance(error, RemoteError) else StatusCode.INTERNAL


# -- the facades ---------------------------------------------------------------------


class RepSocket(_Server):
    def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The next authorized request; answer it with ``msg.reply(...)`` or :meth:`send`."""
        msg = receive(self, flags_timeout(timeout, flags, self._default_timeout()), self._judge)
        self._last = msg
        return msg

    def send(
        self, payload: Payload = b"", *, headers: Mapping[str, str] | None = None, flags: int = 0
    ) -> None:
        """Reply to the last request received (pyzmq's REP idiom)."""
        self._reply_last(payload, headers)

    def handle(self, msg: Message, handler: Callable[[Message], Payload | None]) -> None:
        """Run ``handler`` on a request and reply with its result; an exception becomes an error reply.

        An :class:`~zmeshlib.ApplicationError` keeps its retriable flag; any
        other MeshError its status; anything else is INTERNAL (and logged).
        """
        traced = self._server_span(msg)
        if traced is not None or self._mesh.metrics.recording() or self._mesh.access.enabled():
            return self._handle_observed(msg, handler, traced)
        token = enter(msg.deadline)
        try:
            result = handler(msg)
        except Exception as e:
            self.reply_exception(msg, e)
            return
        finally:
            leave(token)
        msg.reply(b"" if result is None else result)

    def _handle_observed(
        self, msg: Message, handler: Callable[[Message], Payload | None], traced: Any
    ) -> None:
        """:meth:`handle` inside the request's span (if traced), its duration recorded (if
        metered)."""
        started = time.monotonic()
        token = enter(msg.deadline)
        current = tracing.use(*traced) if traced is not None else None
        try:
            result = handler(msg)
        except Exception as e:
            self.reply_exception(msg, e)
            self._observed(msg, traced, status_of(e), e, started)
            return
        finally:
            if current is not None:
                tracing.unuse(current)
            leave(token)
        msg.reply(b"" if result is None else result)
        self._observed(msg, traced, _OK, None, started, result)

    def serve(
        self,
        handler: Callable[[Message], Payload | None],
        *,
        max_requests: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Answer requests with ``handler`` until ``stop()`` is true, ``max_requests`` were
        served, or the socket is closed (from any thread); returns how many were served."""
        served = 0
        try:
            while (max_requests is None or served < max_requests) and not (stop and stop()):
                try:
                    msg = receive(self, REFRESH_INTERVAL * 5, self._judge)
                except Timeout:
                    continue
                self.handle(msg, handler)
                served += 1
        except Closed:
            pass
        return served


class AsyncRepSocket(_Server):
    async def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The next authorized request (as :meth:`RepSocket.recv`)."""
        op = self._recv_op(flags_timeout(timeout, flags, self._default_timeout()))
        return await self._driver.run(self, op)

    async def send(
        self, payload: Payload = b"", *, headers: Mapping[str, str] | None = None, flags: int = 0
    ) -> None:
        self._reply_last(payload, headers)

    async def serve(
        self,
        handler: Callable[[Message], Any],
        *,
        max_requests: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Answer requests with ``handler`` (sync or async) until stopped or closed;
        errors become replies."""
        served = 0
        try:
            while (max_requests is None or served < max_requests) and not (stop and stop()):
                try:
                    msg = await self.recv(timeout=REFRESH_INTERVAL * 5)
                except Timeout:
                    continue
                traced = self._server_span(msg)
                started = time.monotonic()
                token = enter(msg.deadline)
                current = tracing.use(*traced) if traced is not None else None
                try:
                    result = handler(msg)
                    if hasattr(result, "__await__"):
                        result = await result
                except Exception as e:
                    self.reply_exception(msg, e)
                    self._observed(msg, traced, status_of(e), e, started)
                else:
                    msg.reply(b"" if result is None else result)
                    self._observed(msg, traced, _OK, None, started, result)
                finally:
                    if current is not None:
                        tracing.unuse(current)
                    leave(token)
                served += 1
        except Closed:
            pass
        return served
