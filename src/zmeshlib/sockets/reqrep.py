"""REQ and REP: requests with ids and deadlines over DEALER/ROUTER; a reply always finds its call.

Rules this module keeps:

* A client has one DEALER per upstream endpoint, so it knows which server
  answered; a request carries an id and its deadline, replies are matched
  by id, and a late or duplicate reply is dropped and counted, never handed
  to another call. Unlike zmq.REQ, a lost reply costs one ``Timeout``, never
  the socket.
* pyzmq's REQ idiom works: ``send()`` starts a request and ``recv()`` waits
  for its reply, alternately (``request()`` is the two); a second ``send()``
  before the reply raises, as zmq.REQ's EFSM does.
* A server is a ROUTER: replies go to the right client in any order; a
  handler's exception becomes an error reply with the status it stands for;
  ``serve()`` ends cleanly when the socket is closed, from any thread.
* The sync and asyncio facades differ only in how they wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from threading import get_ident
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import Closed, MeshError, RemoteError, Timeout, Unavailable
from .._models import Delivery, Message, Peer, SocketKind, StatusCode, TraceContext
from .base import MeshSocket, Upstream, flags_timeout, receive
from .core import ClientCore, Payload, Pending, ServerCore
from .deadlines import handling, remaining
from .drivers import REFRESH_INTERVAL, Op, Started, Wait
from .frames import recv_message, send_message
from .idioms import RecvIdioms, SendIdioms

if TYPE_CHECKING:
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

_NOBLOCK = int(zmq.NOBLOCK)
_OK = StatusCode.OK  # a plain name: an enum member lookup per reply is measurable
DEFAULT_TIMEOUT = 5.0  # seconds a request waits when neither the caller nor the policy says


class _Client(MeshSocket, SendIdioms, RecvIdioms):
    """REQ: a client over one DEALER per upstream endpoint."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.REQ, driver)
        self.core = ClientCore("", mesh.limits, self.drops)
        self.default_timeout = DEFAULT_TIMEOUT
        self._rr = 0
        # send()'s request (operation, its first wait, result), until recv() takes its reply
        self._outstanding: Started | None = None

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        # queue requests only to connections whose handshake completed: a request that could
        # not be handed over was never sent (and may go elsewhere), rather than waiting in
        # the queue of a connection that may never come up (a server restarted with a new key)
        sock.setsockopt(zmq.IMMEDIATE, 1)

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

    def _pick(self) -> Upstream | None:
        ups = list(self._upstreams.values())
        if not ups:
            return None
        self._rr = (self._rr + 1) % len(ups)
        return ups[self._rr]

    def _request_op(
        self,
        payload: Payload,
        method: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> Op:
        deadline = time.monotonic() + timeout
        self._refresh()
        up = self._pick()
        while up is None:  # no endpoint yet: wait for one to appear in the registry
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"no verified endpoint of service {self.service!r} within {timeout}s: "
                    + self._why_none(),
                    delivery=Delivery.NOT_SENT,
                )
            yield self._wait(deadline)
            self._refresh()
            up = self._pick()
        now = time.monotonic()
        pending, frames = self.core.request(
            payload,
            method=method,
            timeout=deadline - now,
            now=now,
            wall=time.time(),
            endpoint=up.address,
            headers=headers,
            trace=trace,
        )
        return (yield from self._exchange_op(up, pending, frames, timeout))

    def _exchange_op(
        self, up: Upstream, pending: Pending, frames: list[bytes] | None, timeout: float
    ) -> Op:
        """Send a request's ``frames`` (None: already sent) and wait for its reply."""
        deadline = pending.deadline
        method = pending.method
        try:
            while frames is not None:
                # not sent yet, so it may go to whichever endpoint can take it now
                current = self._upstreams.get(up.address) or self._pick()
                if current is not None:
                    up = current
                    if send_message(up.sock, frames, _NOBLOCK):
                        frames = None
                        pending.endpoint = up.address
                        break
                if time.monotonic() >= deadline:
                    raise Timeout(
                        f"{method or 'request'} to {up.address}: could not send within {timeout}s "
                        "(no connection to it completed its handshake, or it is not taking "
                        "messages)",
                        delivery=Delivery.NOT_SENT,
                    ) from None
                yield Wait(
                    (up.sock,) if current is not None else (),
                    zmq.POLLOUT,
                    min(REFRESH_INTERVAL, max(0.0, deadline - time.monotonic())),
                )
                self._refresh()
            only = (up.sock,)  # one request at a time: a reply on another upstream is late
            core = self.core
            while True:
                events = yield self._wait(deadline, socks=only)
                for taken in self._arrivals(events):
                    result = core.answer(pending, *taken)
                    if result is not None:
                        return result
                if core.inbox:
                    claimed = core.claim(pending)
                    if claimed is not None:
                        return claimed
                    self._nudge()  # the replies read here belong to other waiting calls
                self._refresh()
                if self._upstreams.get(up.address) is not up:
                    # the endpoint went away or came back with a new key: no reply can arrive on
                    # the old connection. Whether the request was processed is unknown.
                    self.counts["upstream_lost"] += 1
                    raise Unavailable(
                        f"{method or 'request'} to {up.address}: the endpoint went away or restarted "
                        "with a new key while the request was in flight; it may or may not have "
                        "been processed",
                        delivery=Delivery.UNKNOWN,
                    )
                if time.monotonic() >= deadline:
                    self.counts["timeouts"] += 1
                    raise Timeout(
                        f"{method or 'request'} to service {self.service or up.address!r} got no reply "
                        f"from {up.address} ({up.peer}) within {timeout}s; the socket stays usable",
                        delivery=Delivery.UNKNOWN,
                    )
        finally:
            self.core.forget(pending)

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


class _Server(MeshSocket, SendIdioms, RecvIdioms):
    """REP: a server over ROUTER; replies go to the right client, in any order."""

    burst = False

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.REP, driver)
        self.core = ServerCore(mesh._in_force, "", mesh.limits, self.drops)
        self._last: Message | None = None
        # what a request's Message.reply calls: one bound method for every request
        self._replier: Callable[..., None] = self._reply

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
        if not send_message(server, frames, _NOBLOCK):
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

    def reply_exception(self, msg: Message, error: BaseException) -> None:
        """Answer ``msg`` with the status an exception stands for (never a silent hang)."""
        if isinstance(error, RemoteError):
            msg.reply_error(error.status, str(error), retriable=getattr(error, "retriable", False))
        else:
            log.error("handler for %r raised", msg.method, exc_info=error)
            msg.reply_error(StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


def _handed_over(wait: Wait) -> bool:
    """A request's operation waits for its reply (POLLIN), no longer to send it (POLLOUT)."""
    return wait.events == zmq.POLLIN


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
        ``default_timeout``, 5 s). The reply's error status is raised as the error it stands for.

        The usual call (one endpoint, no refresh due, a timeout of at least one
        blocking read) sends and makes its first wait inline, and only builds
        the operation when that read does not bring the reply.
        """
        self._check_idle()
        wait = self._timeout(timeout, 0)
        if (
            len(self._upstreams) != 1
            or time.monotonic() >= self._next_refresh
            or wait < REFRESH_INTERVAL
            or self._closing
        ):
            return self._driver.run(self, self._request_op(payload, method, wait, headers, trace))
        self._busy += 1
        self._owner = get_ident()
        try:
            (up,) = self._upstreams.values()
            sock = up.sock
            core = self.core
            now = time.monotonic()
            frames, mid = core.request_frames(
                payload, method, int((time.time() + wait) * 1000), int(wait * 1000), headers, trace
            )
            unsent: list[bytes] | None = frames
            if send_message(sock, frames, _NOBLOCK):
                unsent = None
            pending = core.expect(mid, now + wait, method, up.address)  # while it travels
            if unsent is None:
                try:
                    got = recv_message(sock)  # RCVTIMEO: at most WAIT_MS, within the timeout
                except BaseException:
                    core.forget(pending)
                    raise
                if got is not None:
                    result = core.answer(pending, got[0], up.peer)
                    if result is not None:
                        return result
        finally:
            self._busy -= 1
            if self._closing and not self._busy:
                self._finish_close()
        return self._driver.run(self, self._exchange_op(up, pending, unsent, wait))

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
        """Start a request (pyzmq's REQ idiom: sent at once); :meth:`recv` waits for its reply."""
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
        """Start a request, sent at once (as :meth:`ReqSocket.send`)."""
        self._check_idle()
        op = self._request_op(payload, method, self._timeout(timeout, 0), headers, trace)
        self._outstanding = await self._driver.advance(self, op, _handed_over)

    async def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        op, first = self._take_outstanding()
        return await self._driver.run(self, op, first)


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
        try:
            with handling(msg.deadline):
                result = handler(msg)
        except Exception as e:
            self.reply_exception(msg, e)
            return
        msg.reply(b"" if result is None else result)

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
                try:
                    with handling(msg.deadline):
                        result = handler(msg)
                        if hasattr(result, "__await__"):
                            result = await result
                except Exception as e:
                    self.reply_exception(msg, e)
                else:
                    msg.reply(b"" if result is None else result)
                served += 1
        except Closed:
            pass
        return served
