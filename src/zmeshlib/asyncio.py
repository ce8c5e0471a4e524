"""asyncio flavour of the mesh: the same sockets, awaited.

``zmeshlib.asyncio.Mesh`` makes sockets whose waiting methods are coroutines
(``await sub.recv()``, ``await cli.request(...)``). Each kind's engine, and
every operation it runs, is shared with the sync flavour; only the driver
differs (``sockets/drivers.py``: an awaited ``zmq.asyncio`` poll instead of a
blocking read), so the two cannot drift apart. Methods that never wait
(``bind``, ``connect``, ``subscribe``, options) are plain calls, as in
``zmq.asyncio``. Concurrent ``request()`` calls on one REQ socket each get their
own reply.
"""

from __future__ import annotations

from collections.abc import Mapping

import zmq
import zmq.asyncio

from ._models import SocketKind
from .sockets.base import MeshSocket
from .sockets.client import AsyncReqSocket
from .sockets.drivers import ASYNC
from .sockets.mesh import Mesh as _SyncMesh
from .sockets.pipeline import AsyncPullSocket, AsyncPushSocket
from .sockets.pubsub import AsyncPubSocket, AsyncSubSocket
from .sockets.server import AsyncRepSocket


class Mesh(_SyncMesh):
    """The asyncio Mesh: ``mesh.socket(kind)`` gives sockets whose waiting methods are coroutines."""

    _socket_classes: Mapping[SocketKind, type[MeshSocket]] = {
        SocketKind.PUB: AsyncPubSocket,
        SocketKind.SUB: AsyncSubSocket,
        SocketKind.REQ: AsyncReqSocket,
        SocketKind.REP: AsyncRepSocket,
        SocketKind.PUSH: AsyncPushSocket,
        SocketKind.PULL: AsyncPullSocket,
    }
    _driver = ASYNC

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
