"""Mesh sockets: identity-checked handshakes and the six socket kinds, over one sans-I/O core."""

from .mesh import Mesh
from .shell import MeshSocket, PubSocket, PullSocket, PushSocket, RepSocket, ReqSocket, SubSocket

__all__ = [
    "Mesh",
    "MeshSocket",
    "PubSocket",
    "PullSocket",
    "PushSocket",
    "RepSocket",
    "ReqSocket",
    "SubSocket",
]
