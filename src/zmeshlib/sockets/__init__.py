"""The mesh sockets: a Mesh, the socket kinds' engines and their sync and asyncio facades."""

from .base import MeshSocket
from .client import AsyncReqSocket, ReqSocket
from .mesh import Mesh
from .pipeline import AsyncPullSocket, AsyncPushSocket, PullSocket, PushSocket
from .pubsub import AsyncPubSocket, AsyncSubSocket, PubSocket, SubSocket
from .server import AsyncRepSocket, RepSocket

__all__ = [
    "AsyncPubSocket",
    "AsyncPullSocket",
    "AsyncPushSocket",
    "AsyncRepSocket",
    "AsyncReqSocket",
    "AsyncSubSocket",
    "Mesh",
    "MeshSocket",
    "PubSocket",
    "PullSocket",
    "PushSocket",
    "RepSocket",
    "ReqSocket",
    "SubSocket",
]
