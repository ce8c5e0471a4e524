"""zmeshlib: service-mesh semantics inside ZeroMQ sockets.

SPIFFE identity bound to CURVE keys, authorization per topic and method,
and one live-reloadable policy for the whole mesh. See docs/.
"""

from ._exceptions import (
    ApplicationError,
    Cancelled,
    Closed,
    IdentityError,
    InternalError,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    PolicyError,
    ProtocolError,
    RegistryError,
    RemoteError,
    ResourceExhausted,
    SignedPolicyError,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_for_status,
)
from ._models import (
    ANONYMOUS,
    Delivery,
    Endpoint,
    Message,
    Peer,
    SocketKind,
    StatusCode,
    TraceContext,
)
from .identity import Bundles, DevCA, Identity, SpiffeId, TrustBundle, X509Svid, verify_chain
from .identity.card import Card
from .policy import Policy, PolicyFollower, PolicyWatcher, SignedPolicy, publish_policy
from .registry import Registry
from .sockets import Mesh
from .wire.envelope import Limits

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "ApplicationError",
    "Bundles",
    "Cancelled",
    "Card",
    "Closed",
    "Delivery",
    "DevCA",
    "Endpoint",
    "Identity",
    "IdentityError",
    "InternalError",
    "InvalidArgument",
    "Limits",
    "Mesh",
    "MeshError",
    "Message",
    "NotFound",
    "Peer",
    "PermissionDenied",
    "Policy",
    "PolicyError",
    "PolicyFollower",
    "PolicyWatcher",
    "ProtocolError",
    "Registry",
    "RegistryError",
    "RemoteError",
    "ResourceExhausted",
    "SignedPolicy",
    "SignedPolicyError",
    "SocketKind",
    "SpiffeId",
    "StatusCode",
    "Timeout",
    "TraceContext",
    "TrustBundle",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "X509Svid",
    "error_for_status",
    "publish_policy",
    "verify_chain",
]
