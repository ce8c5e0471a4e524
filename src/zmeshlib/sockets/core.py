"""The sans-I/O cores of the mesh sockets: what a message means, not how it moves.

Rules this module keeps:

* No sockets, no threads, no clock of its own: every function takes the
  frames it judges and the time it judges them at, and returns frames to
  send or a :class:`~zmeshlib.Message` (or a reason to drop). The sync and
  asyncio shells (``sockets/pubsub.py``, ``client.py``, ``server.py``,
  ``pipeline.py``) only move frames.
* The sender of a message is who the handshake said it is: the User-Id of a
  bound socket's connection, or the verified card of the endpoint a
  connected socket dialled. Nothing in a message can claim otherwise.
* A malformed frame from the network is dropped and counted (``drops``,
  labelled by reason), never raised to the application.
* Authorization is asked of the current policy's compiled authorizer; what
  is cached here is cached per policy object, so a new policy takes effect
  at the next message, and never when a CUSTOM provider could answer
  differently next time.
* Frames: pub/sub ``[topic NUL envelope][payload...]``; everything else
  ``[envelope][payload...]`` (docs/protocol.md, "Message framing").

Theory of operation. Each socket kind has a core (the shared parts are here; the
pub/sub and pipeline cores are in ``core_pubsub.py``, the request/reply ones in
``core_reqrep.py``):

================  ==========================================================
core              decides
================  ==========================================================
PublisherCore     the frames of a publication; which prefixes to apply for
                  each subscription request (XPUB_MANUAL); what to redo when
                  the policy changes
SubscriberCore    whether the subscriber may ask for a prefix; which received
                  publications to deliver (the sender may publish the topic,
                  this workload may receive it); with ``kind=PUSH`` the same
                  for a PULL socket (the "publish" resource is the service)
PushCore          the frames of a pipeline message, and the sender's own
                  publish check
ClientCore        request ids, deadlines, matching replies, dropping late and
                  duplicate ones, turning a status into an exception
ServerCore        decoding requests, call authorization, expired deadlines,
                  building replies (errors included)
================  ==========================================================
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import (
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
)
from .._models import ANONYMOUS, Delivery, Peer, TraceContext
from ..identity.spiffe_id import SpiffeId
from ..telemetry.logs import LimitedLog
from ..wire.envelope import (
    Envelope,
    Kind,
    Limits,
    encode,
    encode_minimal,
)

if TYPE_CHECKING:
    from ..policy import Policy

log = logging.getLogger("zmeshlib.sockets")
#: The lines a peer can cause (a denied call, a denied subscription), at a bounded rate.
limited = LimitedLog(log)

# Enum members the per-message code tests against, as plain names: looking a member up on
# its class costs more than the identity test it serves.
_PUBLISH, _REQUEST, _REPLY, _PUSH = Kind.PUBLISH, Kind.REQUEST, Kind.REPLY, Kind.PUSH

#: The longest topic (and subscription prefix), in UTF-8 bytes: libzmq keeps every prefix in
#: a trie per subscriber, and a megabyte-long one has crashed it.
MAX_TOPIC_BYTES = 4096
#: What a publisher remembers of one peer's subscription requests, at most (count, bytes);
#: past it the peer's further requests are refused and counted, never remembered.
MAX_REQUESTS_PER_PEER = 1024
MAX_REQUEST_BYTES_PER_PEER = 256 * 1024
MAX_REQUESTS = 65536  # of every peer together
CACHED_RESOURCE_BYTES = 256  # a verdict on a longer topic is not cached (bounded by bytes)

Frames = Sequence[bytes]
Payload = bytes | Sequence[bytes]


def payload_size(frames: Sequence[bytes]) -> int:
    """Total bytes of a payload's frames (one frame, the usual case, without a generator)."""
    return len(frames[0]) if len(frames) == 1 else sum(map(len, frames))


def payload_frames(payload: Payload, limits: Limits) -> list[bytes]:
    """Normalise a payload argument (bytes or a list of frames) and check its size."""
    if type(payload) is bytes:
        if len(payload) <= limits.max_message_bytes:  # the usual case, first
            return [payload]
        frames = [payload]
    elif isinstance(payload, (bytearray, memoryview)):
        frames = [bytes(payload)]
    else:
        frames = _frames_of(payload)
    size = payload_size(frames)
    if size > limits.max_message_bytes:
        raise ProtocolError(
            f"payload of {size} bytes exceeds max_message_bytes={limits.max_message_bytes}: "
            "split it, or raise the limit on both sides (Mesh(limits=...))",
            reason="too-large",
        )
    return frames


def _frames_of(payload: object) -> list[bytes]:
    """A payload given as a sequence of frames, each bytes-like; a typed error otherwise."""
    if isinstance(payload, str):
        raise InvalidArgument(
            "a payload is bytes (or a list of bytes frames), not str: encode it, or use "
            "send_string()",
            delivery=Delivery.NOT_SENT,
        )
    try:
        return [f if type(f) is bytes else memoryview(f).tobytes() for f in payload]  # type: ignore[attr-defined]
    except TypeError:
        kinds = sorted({type(f).__name__ for f in payload})  # type: ignore[attr-defined]
        raise InvalidArgument(
            f"a payload is bytes or a list of bytes frames; got {type(payload).__name__} of "
            f"{', '.join(kinds) or 'nothing'} (encode text, or use send_string/send_json)",
            delivery=Delivery.NOT_SENT,
        ) from None


def new_message_ids() -> Callable[[], int]:
    """Message ids: a random 32-bit process prefix and a counter, so ids from two senders rarely meet."""
    start = int.from_bytes(os.urandom(4), "big") << 32
    return itertools.count(start).__next__


def denied(decision: Any) -> PermissionDenied:
    """The error for a denied operation of this workload's own: the decision's reason, and what to do."""
    return PermissionDenied(
        f"{decision.reason}; change the authorization policy if this should be allowed",
        policy=decision.policy,
        detail=decision.reason,
    )


class PeerBook(dict[str, Peer]):
    """User-Id (the SPIFFE ID string the handshake set) -> Peer: ``book[user_id]``.

    A dict, so that a known peer costs one C-level lookup per message; an
    unknown one is parsed once (anything unparsable is anonymous).
    """

    limit = 65536  # peers remembered; past it the book starts over

    def __init__(self) -> None:
        super().__init__({"": ANONYMOUS})

    def __missing__(self, user_id: str) -> Peer:
        try:
            peer = Peer(SpiffeId.parse(user_id))
        except Exception:
            peer = ANONYMOUS
        if len(self) > self.limit:  # bounded: forget everyone, keep the anonymous entry
            self.clear()
            self[""] = ANONYMOUS
        self[user_id] = peer
        return peer


class Drops:
    """Counters of what a socket dropped and why; shared by every core of one socket."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._last_log = 0.0

    def drop(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:  # at most one line a second: a flood must not flood the log
            self._last_log = now
            log.warning("dropped a message (%s)%s", reason, f": {detail}" if detail else "")


class PolicyInForce:
    """The policy in force: the one reference ``Mesh.update_policy`` replaces, and which
    every core reads once per message (one attribute of a small object: the cheapest
    look there is, where a property or a call would be a Python frame per message)."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy = policy


class _PolicyBound:
    """A core whose caches live as long as one policy object.

    ``policy`` is anything with a ``policy`` attribute holding the policy in force
    (a :class:`PolicyInForce`), read once per message: a new policy takes effect at the
    next message.
    """

    def __init__(
        self,
        policy: PolicyInForce,
        service: str,
        self_id: Callable[[], SpiffeId | None],
        limits: Limits,
    ) -> None:
        self._in_force = policy
        self.service = service
        self._self_id = self_id
        self.limits = limits
        self.next_id = new_message_ids()
        self._policy: Policy | None = None
        self._authz: Any = None

    def _authorizer(self) -> Any:
        policy = self._in_force.policy
        if policy is not self._policy:
            self._policy = policy
            self._authz = policy.authorizer()
            # header-free decisions are pure unless a CUSTOM provider is consulted
            self._pure = not any(p.action == "CUSTOM" for p in policy.authorization)
            self.policy_changed()
        return self._authz

    def policy_changed(self) -> None:
        """Hook for cores that must redo something when the policy changes."""

    def _unauthenticated(self, peer: Peer) -> bool:
        """An anonymous peer in STRICT mode: never delivered, whatever the authorization
        policy says (an inproc peer, or a connection made while the mode was PERMISSIVE)."""
        if peer.spiffe_id is None and self._in_force.policy.peer_authentication.mode == "STRICT":
            self.drops.drop("unauthenticated", "an anonymous peer in STRICT mode")  # type: ignore[attr-defined]
            return True
        return False

    def check(
        self,
        action: str,
        principal: SpiffeId | None,
        resource: str,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One decision of the current policy (the authorizer caches what may be cached)."""
        return self._authorizer().check(principal, action, self.service, resource, headers)

    def envelope(
        self, kind: Kind, headers: Mapping[str, str] | None, trace: TraceContext | None
    ) -> bytes:
        """The envelope of a new one-way message (publication or push), with a fresh id."""
        if headers or trace:
            env = Envelope(kind, self.next_id(), headers=headers or {}, trace=trace)
            return encode(env, self.limits)
        return encode_minimal(kind, self.next_id())

    def require(
        self,
        action: str,
        principal: SpiffeId | None,
        resource: str,
        headers: Mapping[str, str] | None,
    ) -> None:
        """This workload's own operation: PermissionDenied naming the policy when denied."""
        decision = self.check(action, principal, resource, headers)
        if not decision.allowed:
            raise denied(decision)
