"""asyncio flavour of the mesh: the same sockets, awaited.

Each class here is the sync class with its waiting operations driven by
``await zmq.asyncio.Poller.poll`` instead of a blocking poll: the operation
itself (a generator in ``sockets/shell.py``) is shared, so the two flavours
cannot drift apart. Operations that never wait (publishing, replying) are
coroutines too, for a uniform surface.

A REQ socket runs one request at a time, like ``zmq.REQ`` (concurrent
``request()`` calls on one socket queue behind a lock): use one socket per
concurrent caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from ._exceptions import Timeout
from ._models import Message, SocketKind, TraceContext
from .sockets.core import Payload
from .sockets.mesh import Mesh as _SyncMesh
from .sockets.shell import (
    REFRESH_INTERVAL,
    Op,
    PubSocket,
    PullSocket,
    PushSocket,
    RepSocket,
    ReqSocket,
    SubSocket,
)


class _Awaiting:
    """Drives a shell operation with an awaited poll (the async counterpart of ``shell.drive``)."""

    _async_wrappers: dict[zmq.Socket, zmq.asyncio.Socket]
    blocking_reads = False

    async def _run(self: Any, op: Op) -> Any:
        try:
            wait = next(op)
            while True:
                poller = zmq.asyncio.Poller()
                wrapped = {self._wrapper(s): s for s in wait.sockets}
                for w in wrapped:
                    poller.register(w, wait.events)
                events = await poller.poll(int(wait.timeout * 1000))
                wait = op.send({wrapped[w]: ev for w, ev in events if w in wrapped})
        except StopIteration as stop:
            return stop.value

    def _wrapper(self: Any, sock: zmq.Socket) -> zmq.asyncio.Socket:
        wrappers = self.__dict__.setdefault("_async_wrappers", {})
        w = wrappers.get(sock)
        if w is None:
            for old in [s for s in wrappers if s.closed]:
                del wrappers[old]
            w = wrappers[sock] = zmq.asyncio.Socket.from_socket(sock)
        return w


class AsyncPubSocket(_Awaiting, PubSocket):
    async def send(  # type: ignore[override]
        self,
        payload: Payload,
        *,
        topic: str,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        PubSocket.send(self, payload, topic=topic, headers=headers, trace=trace)


class _AsyncReceiving(_Awaiting):
    async def recv(self: Any, timeout: float | None = None) -> Message:
        return await self._run(self._recv_op(timeout))


class AsyncSubSocket(_AsyncReceiving, SubSocket):  # type: ignore[misc]
    pass


class AsyncPullSocket(_AsyncReceiving, PullSocket):  # type: ignore[misc]
    pass


class AsyncPushSocket(_Awaiting, PushSocket):
    async def send(  # type: ignore[override]
        self,
        payload: Payload,
        *,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        timeout: float | None = None,
    ) -> None:
        await self._run(self._send_op(payload, headers, trace, timeout))


class AsyncReqSocket(_Awaiting, ReqSocket):
    def __init__(self, mesh: _SyncMesh) -> None:
        super().__init__(mesh)
        self._one_at_a_time = asyncio.Lock()

    async def request(  # type: ignore[override]
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> Message:
        async with self._one_at_a_time:
            return await self._run(self._request_op(payload, method, timeout, headers, trace))


class AsyncRepSocket(_Awaiting, RepSocket):
    async def recv(self, timeout: float | None = None) -> Message:  # type: ignore[override]
        return await self._run(self._recv_op(timeout))

    async def send(  # type: ignore[override]
        self, payload: Payload = b"", *, headers: Mapping[str, str] | None = None
    ) -> None:
        RepSocket.send(self, payload, headers=headers)

    async def serve(  # type: ignore[override]
        self,
        handler: Callable[[Message], Awaitable[Payload | None] | Payload | None],
        *,
        max_requests: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Answer requests with ``handler`` (sync or async) until stopped; errors become replies."""
        served = 0
        while (max_requests is None or served < max_requests) and not (stop and stop()):
            try:
                msg = await self.recv(timeout=REFRESH_INTERVAL * 5)
            except Timeout:
                continue
            try:
                result = handler(msg)
                if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                    result = await result
            except Exception as e:
                self.reply_exception(msg, e)
            else:
                msg.reply(b"" if result is None else result)
            served += 1
        return served


class Mesh(_SyncMesh):
    """The asyncio Mesh: ``mesh.socket(kind)`` gives sockets whose waiting methods are coroutines."""

    _socket_classes = {
        SocketKind.PUB: AsyncPubSocket,
        SocketKind.SUB: AsyncSubSocket,
        SocketKind.REQ: AsyncReqSocket,
        SocketKind.REP: AsyncRepSocket,
        SocketKind.PUSH: AsyncPushSocket,
        SocketKind.PULL: AsyncPullSocket,
    }

    def _new_context(self) -> zmq.Context:
        return zmq.asyncio.Context()

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "AsyncPubSocket",
    "AsyncPullSocket",
    "AsyncPushSocket",
    "AsyncRepSocket",
    "AsyncReqSocket",
    "AsyncSubSocket",
    "Mesh",
]
