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

Theory of operation. Each socket kind has a core:

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

import attrs

from .._exceptions import (
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    error_for_status,
)
from .._models import ANONYMOUS, Delivery, Message, Peer, StatusCode, TraceContext
from ..identity.spiffe_id import SpiffeId
from ..telemetry.access import trace_id_of
from ..telemetry.logs import LimitedLog
from ..wire.envelope import (
    NO_HEADERS,
    Envelope,
    Kind,
    Limits,
    decode,
    decode_plain,
    encode,
    encode_minimal,
    encode_request,
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


# -- publish / subscribe ---------------------------------------------------------


@attrs.frozen
class SubscriptionChange:
    """What the publisher must apply for one subscription message: ("subscribe"|"unsubscribe", prefixes)."""

    action: str
    prefixes: tuple[bytes, ...]


class PublisherCore(_PolicyBound):
    """Publication frames, and subscription authorization at the publisher.

    Remembers what each peer asked for, so a new policy can be re-applied:
    ``needs_restart`` turns true when a remembered request would now be
    granted differently (XPUB cannot withdraw one peer's subscription, so
    the shell rebinds and every subscriber re-sends; see docs/authorization.md).
    """

    def __init__(
        self,
        policy: PolicyInForce,
        service: str,
        self_id: Callable[[], SpiffeId | None],
        limits: Limits,
        drops: Drops,
    ) -> None:
        super().__init__(policy, service, self_id, limits)
        self.drops = drops
        # (User-Id, asked prefix) -> (principal, granted prefixes): what each peer asked for
        self.requests: dict[tuple[str, bytes], tuple[SpiffeId | None, tuple[bytes, ...]]] = {}
        self._remembered: dict[str, list[int]] = {}  # User-Id -> [requests, bytes] remembered
        #: Peers that asked for more than is remembered since the shell last looked: libzmq
        #: keeps every subscription an XPUB_MANUAL socket receives in a trie of its own, so the
        #: shell must shed their connections (and keep them out a while).
        self.abusers: set[str] = set()
        self.needs_restart = False
        self.counts: Counter[str] = Counter()

    def policy_changed(self) -> None:
        self._heads: dict[str, bytes] = {}
        authz = self._authz
        for (user_id, asked), (principal, granted) in self.requests.items():
            again = self._grant(authz, principal, asked)
            if again != granted:
                self.needs_restart = True
                log.info(
                    "policy %s changes the subscription %r of %s: %r -> %r",
                    self._policy.revision if self._policy else "", asked,
                    user_id or "anonymous", granted, again,
                )  # fmt: skip
                break

    def must_rebind(self) -> bool:
        """Whether the current policy changes a remembered grant (checks for a new policy first)."""
        self._authorizer()
        return self.needs_restart

    def forget_all(self) -> None:
        """After a restart every subscriber re-sends: start the book afresh."""
        self.requests.clear()
        self._remembered.clear()
        self.needs_restart = False

    def _grant(self, authz: Any, principal: SpiffeId | None, asked: bytes) -> tuple[bytes, ...]:
        try:
            prefix = asked.decode("utf-8")
        except UnicodeDecodeError:
            return ()
        return tuple(
            p.encode() for p in authz.allowed_subscription(principal, self.service, prefix)
        )

    def on_subscription(self, data: bytes, user_id: str, peer: Peer) -> SubscriptionChange | None:
        """Judge one XPUB subscription message (``\\x01prefix`` / ``\\x00prefix``)."""
        authz = self._authorizer()
        if not data or data[0] not in (0, 1):
            self.drops.drop("subscription-malformed")
            return None
        asked = data[1:]
        key = (user_id, asked)
        if data[0] == 0:
            if key not in self.requests:
                return None
            _, granted = self.requests.pop(key)
            self._count(user_id, asked, -1)
            return SubscriptionChange("unsubscribe", granted) if granted else None
        if len(asked) > MAX_TOPIC_BYTES:
            self.drops.drop("subscription-too-long", f"{len(asked)} bytes from {peer}")
            return None
        if key not in self.requests:
            if not self._room(user_id, asked):
                self.counts["subscriptions_over_limit"] += 1
                self.abusers.add(user_id)
                self.drops.drop(
                    "subscription-limit", f"{peer} asked for more than the publisher remembers"
                )
                return None
            self._count(user_id, asked, 1)
        granted = self._grant(authz, peer.spiffe_id, asked)
        self.requests[key] = (peer.spiffe_id, granted)
        if not granted:
            self.counts["subscriptions_denied"] += 1
            limited.warning(
                "subscription-denied",
                "subscription %r by %s denied (policy %s)",
                asked[:80],
                peer,
                self._policy.revision if self._policy else "",
            )
            return None
        if granted != (asked,):
            self.counts["subscriptions_narrowed"] += 1
            log.info("subscription %r by %s narrowed to %r", asked, peer, granted)
        else:
            self.counts["subscriptions_allowed"] += 1
        return SubscriptionChange("subscribe", granted)

    def _room(self, user_id: str, asked: bytes) -> bool:
        """Whether one more request of this peer may be remembered (the bounds above)."""
        count, size = self._remembered.get(user_id, (0, 0))
        return (
            count < MAX_REQUESTS_PER_PEER
            and size + len(asked) <= MAX_REQUEST_BYTES_PER_PEER
            and len(self.requests) < MAX_REQUESTS
        )

    def _count(self, user_id: str, asked: bytes, sign: int) -> None:
        entry = self._remembered.setdefault(user_id, [0, 0])
        entry[0] += sign
        entry[1] += sign * len(asked)
        if entry[0] <= 0:
            del self._remembered[user_id]

    def publication(
        self,
        topic: str,
        payload: Payload,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> list[bytes]:
        """Frames for one publication; PermissionDenied if this workload may not publish ``topic``."""
        self._authorizer()  # a new policy resets the caches below
        head = self._heads.get(topic)
        if head is None or headers or not self._pure:
            self.require("publish", self._self_id(), topic, headers)
            head = topic.encode() + b"\0"
            if head.index(b"\0") != len(head) - 1:
                raise ProtocolError(
                    f"topic {topic!r} contains NUL, which separates the topic from the envelope",
                    reason="topic",
                )
            if not headers and self._pure and len(self._heads) < 65536:
                # allowed, and its first-frame prefix, until the policy changes
                self._heads[topic] = head
        frames = payload_frames(payload, self.limits)
        return [head + self.envelope(_PUBLISH, headers, trace), *frames]


class SubscriberCore(_PolicyBound):
    """Which publications a subscriber delivers, and which prefixes it may ask for."""

    def __init__(
        self,
        policy: PolicyInForce,
        service: str,
        self_id: Callable[[], SpiffeId | None],
        limits: Limits,
        drops: Drops,
        kind: Kind = Kind.PUBLISH,
    ) -> None:
        super().__init__(policy, service, self_id, limits)
        self.drops = drops
        self.kind = kind
        #: The receiving mesh's tracing, which ``msg.process()`` reaches through the message,
        #: and its metrics (messages consumed).
        self.tracing: Any = None
        self.metrics: Any = None
        self.consumed = 0  # messages handed over while metrics record
        self.access: Any = None  # the Mesh's access log

    def check_subscribe(self, prefix: str) -> None:
        """The subscriber's own check against the shared policy (the publisher checks again)."""
        if not self._authorizer().allowed_subscription(self._self_id(), self.service, prefix):
            decision = self.check("subscribe", self._self_id(), prefix)
            if decision.allowed:  # the topic itself may be allowed, but no prefix grant exists
                decision = attrs.evolve(
                    decision,
                    reason=f"no part of the prefix {prefix!r} can be granted "
                    f"(a DENY rule or a conditional ALLOW covers part of it): {decision.reason}",
                )
            raise denied(decision)

    def policy_changed(self) -> None:
        # (sender, resource) -> deliver? Valid for one policy; only kept when no CUSTOM
        # provider could answer differently next time (header-free decisions are pure).
        self._verdicts: dict[tuple[SpiffeId | None, str], str] = {}  # -> _verdict()
        self._verdicts_pure = not any(
            p.action == "CUSTOM"
            for p in self._policy.authorization  # type: ignore[union-attr]
        )

    def _verdict(
        self, sender: SpiffeId | None, resource: str, headers: Mapping[str, str] | None = None
    ) -> str:
        """Why a message from ``sender`` on ``resource`` is dropped here; "" to deliver it.

        The sender must be allowed to publish ``resource``; for pub/sub this workload
        must also be allowed to receive it (the publisher enforces that too; here it
        takes effect at once on a policy change).
        """
        if not self.check("publish", sender, resource, headers).allowed:
            return "unauthorized"
        if (
            self.kind is Kind.PUBLISH
            and not self.check("subscribe", self._self_id(), resource).allowed
        ):
            return "not-subscribable"
        return ""

    def message(self, frames: Frames, peer: Peer) -> Message | None:
        """A received ``[topic NUL envelope, payload...]`` (or ``[envelope, payload...]`` for
        pipelines) -> Message, or None (dropped and counted)."""
        publish = self.kind is _PUBLISH
        head, payload = frames[0], frames[1:]
        if publish:
            sep = head.find(b"\0")
            if sep < 0:
                self.drops.drop("malformed", "no NUL between topic and envelope")
                return None
            topic_b, env_b = head[:sep], head[sep + 1 :]
        else:
            topic_b, env_b = b"", head
        try:
            env = decode(env_b, self.limits)
            topic = topic_b.decode("utf-8")
        except ProtocolError as e:
            self.drops.drop(e.reason, str(e))
            return None
        except UnicodeDecodeError:
            self.drops.drop("utf8", "topic is not UTF-8")
            return None
        if env.kind is not self.kind:
            self.drops.drop("kind", f"{env.kind.name} on a {self.kind.name} socket")
            return None
        if payload_size(payload) > self.limits.max_message_bytes:
            self.drops.drop("too-large")
            return None
        resource = topic if publish else self.service
        sender = peer.spiffe_id
        if sender is None and self._unauthenticated(peer):
            return None
        self._authorizer()  # a new policy resets the verdicts
        if env.headers:  # conditions may read headers: decide afresh
            why = self._verdict(sender, resource, env.headers)
        else:
            key = (sender, resource)
            known = self._verdicts.get(key)
            if known is None:
                why = self._verdict(sender, resource)
                if (
                    self._pure
                    and len(self._verdicts) < 65536
                    and len(resource) <= CACHED_RESOURCE_BYTES
                ):
                    self._verdicts[key] = why
            else:
                why = known
        if why:
            self.drops.drop(why, f"{peer}: {resource!r}")
            return None
        metrics = self.metrics
        if metrics is not None and metrics.recording():
            self.consumed += 1  # messaging.client.consumed.messages
            istio = metrics.istio_now
            if istio is not None:
                istio.message("destination", "receive", peer, self.service,
                              topic if publish else "", metrics.topic_depth(),
                              payload_size(payload))  # fmt: skip
        access = self.access
        if access is not None and access.enabled():
            access.message("subscriber" if publish else "puller", "receive", peer, self.service,
                           topic if publish else None, payload_size(payload),
                           trace_id_of(env.trace))  # fmt: skip
        return Message._received(
            tuple(payload),
            peer,
            topic if publish else None,
            env.headers,
            env.message_id,
            env.trace,
            receiver=self,  # msg.process(): this core's tracing and service
        )


class PushCore(_PolicyBound):
    """Frames of a pipeline message; the sender's own publish check (resource = service)."""

    def __init__(
        self,
        policy: PolicyInForce,
        service: str,
        self_id: Callable[[], SpiffeId | None],
        limits: Limits,
    ) -> None:
        super().__init__(policy, service, self_id, limits)

    def frames(
        self, payload: Payload, headers: Mapping[str, str] | None, trace: TraceContext | None
    ) -> list[bytes]:
        self.require("publish", self._self_id(), self.service, headers)
        body = payload_frames(payload, self.limits)
        return [self.envelope(_PUSH, headers, trace), *body]


# -- request / reply -------------------------------------------------------------


@attrs.define
class Pending:
    message_id: int
    deadline: float  # monotonic seconds
    method: str
    endpoint: str


MAX_SHADOWS = 1024  # mirror copies whose replies a client core recognises


class ClientCore:
    """Request ids, deadlines and reply matching for a REQ socket."""

    def __init__(self, service: str, limits: Limits, drops: Drops) -> None:
        self.service = service
        self.limits = limits
        self.drops = drops
        self.next_id = new_message_ids()
        self.pending: dict[int, Pending] = {}
        #: Replies read by one waiting call for another (asyncio: several calls share a
        #: DEALER), by request id, until that call claims them.
        self.inbox: dict[int, Message | RemoteError] = {}
        #: Ids of the latest mirror copies sent (insertion order, at most ``MAX_SHADOWS``):
        #: their replies are counted as ``mirror_replies``, not as late.
        self.shadows: dict[int, None] = {}
        self.counts: Counter[str] = Counter()

    def request(
        self,
        payload: Payload,
        *,
        method: str,
        timeout: float,
        now: float,
        wall: float,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        attempt: int = 0,
    ) -> tuple[Pending, list[bytes]]:
        """Frames ``[envelope, payload...]`` for one request, and its pending record.

        :meth:`request_frames` then :meth:`expect`, for a caller that needs the record
        before it sends.
        """
        frames, mid = self.request_frames(
            payload,
            method,
            int((wall + timeout) * 1000),
            int(timeout * 1000),
            headers,
            trace,
            attempt,
        )
        return self.expect(mid, now + timeout, method, endpoint), frames

    def request_frames(
        self,
        payload: Payload,
        method: str,
        deadline_ms: int,
        timeout_ms: int,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        attempt: int = 0,
    ) -> tuple[list[bytes], int]:
        """Frames ``[envelope, payload...]`` for one request with a fresh id, and the id.

        The deadline travels twice: as the absolute ``deadline_ms`` and as ``timeout_ms``, the
        time left when it is sent, which a server turns into its own clock (skew-proof).
        """
        timeout_ms = min(max(timeout_ms, 1), 0xFFFF_FFFF)
        if type(payload) is bytes and len(payload) <= self.limits.max_message_bytes:
            body = None  # payload_frames' first case, without the call or a list
        else:
            body = payload_frames(payload, self.limits)
        mid = self.next_id()
        env_b = b""
        if method and not (headers or trace):  # the usual request: its cached layout
            env_b = encode_request(mid, method, deadline_ms, timeout_ms, attempt)
        if not env_b or len(env_b) > self.limits.max_envelope_bytes:  # or let encode() say why
            env = Envelope(
                Kind.REQUEST,
                mid,
                method=method,
                deadline_ms=deadline_ms,
                timeout_ms=timeout_ms,
                attempt=attempt,
                headers=headers or {},
                trace=trace,
            )
            env_b = encode(env, self.limits)
        return ([env_b, payload] if body is None else [env_b, *body]), mid  # type: ignore[list-item]

    def expect(self, message_id: int, deadline: float, method: str, endpoint: str) -> Pending:
        """Await the reply to request ``message_id`` until ``deadline`` (monotonic): a sync
        caller sends first and expects after, so the bookkeeping overlaps the round trip."""
        pending = self.pending[message_id] = Pending(message_id, deadline, method, endpoint)
        return pending

    def shadow(self, message_id: int) -> None:
        """A mirror copy went out with ``message_id``: its reply is expected, and dropped."""
        shadows = self.shadows
        shadows[message_id] = None
        if len(shadows) > MAX_SHADOWS:
            del shadows[next(iter(shadows))]  # the oldest: its reply is late by now

    def forget(self, pending: Pending) -> None:
        self.pending.pop(pending.message_id, None)
        self.inbox.pop(pending.message_id, None)

    def claim(self, pending: Pending) -> Message | None:
        """The reply another call read for ``pending`` (its error raised), if one did."""
        answer = self.inbox.pop(pending.message_id, None)
        if isinstance(answer, RemoteError):
            raise answer
        return answer

    def take(self, frames: Frames, peer: Peer) -> tuple[int, Message | RemoteError] | None:
        """A received reply -> (request id, the reply or the error it stands for), for any
        pending request; None when dropped (malformed, late, a duplicate).

        The usual reply (OK, no extras, the first copy) is read without an Envelope.
        """
        plain = decode_plain(frames[0], self.limits) if frames else None
        if plain is not None and plain[0] is _REPLY:
            mid: int = plain[1]
            if self.pending.pop(mid, None) is not None:
                return mid, Message._received(tuple(frames[1:]), peer, None, NO_HEADERS, mid, None)
        return self.reply(frames, peer)

    def reply(self, frames: Frames, peer: Peer) -> tuple[int, Message | RemoteError] | None:
        """A received ``[envelope, payload...]`` -> (request id, reply or the error it stands for).

        None when the frames were dropped (malformed, or a late or duplicate reply).
        """
        if not frames:
            self.drops.drop("malformed", "empty reply")
            return None
        try:
            env = decode(frames[0], self.limits)
        except ProtocolError as e:
            self.drops.drop(e.reason, str(e))
            return None
        if env.kind is not Kind.REPLY:
            self.drops.drop("kind", f"{env.kind.name} where a REPLY was expected")
            return None
        pending = self.pending.pop(env.message_id, None)
        if pending is None:
            if env.message_id in self.shadows:
                del self.shadows[env.message_id]
                self.counts["mirror_replies"] += 1
            else:
                self.counts["late_replies"] += 1
            return None
        if env.status is not StatusCode.OK:
            return env.message_id, error_for_status(
                env.status,
                env.detail,
                policy=env.policy,
                retriable=env.retriable,
                what=f"{pending.method or 'request'} on {self.service or pending.endpoint} via {peer}",
            )
        return env.message_id, Message._received(
            tuple(frames[1:]),
            peer,
            None,
            env.headers,
            env.message_id,
            env.trace,
            attempt=env.attempt,
        )


class ServerCore(_PolicyBound):
    """Requests in, replies out, for a REP socket (over ROUTER)."""

    def __init__(self, policy: PolicyInForce, service: str, limits: Limits, drops: Drops) -> None:
        super().__init__(policy, service, lambda: None, limits)  # a server makes no calls itself
        self.drops = drops
        self.served = 0  # requests delivered: an int, counted per request
        self.denied_by: Counter[str] = Counter()  # calls denied, by the policy that decided
        self.metrics: Any = None  # the Mesh's: a denial is a request its server reports
        self.access: Any = None  # the Mesh's access log
        self._events: Counter[str] = Counter()  # everything rarer

    @property
    def counts(self) -> Counter[str]:
        """What this core counted: ``requests`` delivered, ``expired``, ``calls_denied``."""
        return self._events + Counter(requests=self.served)

    def policy_changed(self) -> None:
        # (id(peer), method) -> peer, for header-free calls the policy allows: a known caller
        # costs one lookup. The peer is kept so that its id cannot be reused; valid for one
        # policy. Not kept: audited calls (each is logged), denied ones, and anything when a
        # CUSTOM provider could answer differently next time.
        self._allowed: dict[tuple[int, str], Peer] = {}

    def request(
        self,
        frames: Frames,
        peer: Peer,
        wall: float,
        replier: Callable[..., Any],
    ) -> tuple[Message | None, list[bytes] | None]:
        """``[routing id, envelope, payload...]`` -> (request to deliver, or an immediate reply).

        The request's ``reply`` calls ``replier(msg, payload, ...)``; its routing id goes with
        it (``msg._route``).
        """
        if len(frames) < 2:
            self.drops.drop("malformed", "request without an envelope")
            return None, None
        route, env_b = frames[0], frames[1]
        plain = decode_plain(env_b, self.limits)
        if plain is not None and plain[0] is _REQUEST:  # the usual request: no Envelope
            _, mid, method, deadline_ms, timeout_ms, attempt = plain  # type: ignore[misc]
            headers, trace = NO_HEADERS, None
        else:
            try:
                env = decode(env_b, self.limits)
            except ProtocolError as e:
                self.drops.drop(e.reason, str(e))
                bad = Envelope(
                    Kind.REPLY, 0, status=StatusCode.INVALID_ARGUMENT, detail=f"protocol error: {e}"
                )
                return None, [route, self._encode_reply(bad)]
            if env.kind is not Kind.REQUEST:
                self.drops.drop("kind", f"{env.kind.name} on a REP socket")
                return None, None
            mid, method, deadline_ms = env.message_id, env.method, env.deadline_ms
            headers, trace, attempt, timeout_ms = (
                env.headers,
                env.trace,
                env.attempt,
                env.timeout_ms,
            )
        payload = tuple(frames[2:])
        size = len(payload[0]) if len(payload) == 1 else payload_size(payload)  # one frame: inline
        if size > self.limits.max_message_bytes:
            self.drops.drop("too-large")
            return None, self.error_frames(
                route, mid, StatusCode.RESOURCE_EXHAUSTED, "request too large"
            )
        if timeout_ms:  # the time left, turned into this clock: a skewed clock cannot mislead
            deadline = wall + timeout_ms / 1000
        elif deadline_ms:  # a peer that sends only the absolute deadline
            if deadline_ms < wall * 1000:
                self._events["expired"] += 1  # the client has given up: do not spend work on it
                return None, None
            deadline = deadline_ms / 1000
        else:
            deadline = None
        if self._in_force.policy is not self._policy:
            self._authorizer()  # a new policy: a new authorizer, and no remembered calls
        if peer.spiffe_id is None and self._unauthenticated(peer):
            return None, None
        key = (id(peer), method)
        if headers or self._allowed.get(key) is not peer:  # not a call known to be allowed
            decision = self._authz.check(peer.spiffe_id, "call", self.service, method, headers)
            if not decision.allowed:
                self._events["calls_denied"] += 1
                self.denied_by[decision.policy or "default"] += 1
                istio = self.metrics.istio() if self.metrics is not None else None
                if istio is not None:
                    istio.request("destination", peer, self.service,
                                  StatusCode.PERMISSION_DENIED, 0.0, size, 0)  # fmt: skip
                if self.access is not None and self.access.enabled():
                    self.access.call("server", peer, self.service, method,
                                     StatusCode.PERMISSION_DENIED, 0.0, size,
                                     trace_id_of(trace))  # fmt: skip
                limited.warning(
                    "call-denied",
                    "call %r by %s denied by policy %s",
                    method[:80],
                    peer,
                    decision.policy or "default",
                )
                reply = Envelope(
                    Kind.REPLY,
                    mid,
                    status=StatusCode.PERMISSION_DENIED,
                    detail=decision.reason,
                    policy=decision.policy,
                )
                return None, [route, self._encode_reply(reply)]
            if not (headers or decision.audited) and self._pure and len(self._allowed) < 65536:
                self._allowed[key] = peer
        self.served += 1
        msg = Message._received(
            payload,
            peer,
            None,
            headers,
            mid,
            trace,
            method,
            deadline,
            attempt,
            replier,
            route,
        )
        return msg, None

    def reply_frames(
        self,
        route: bytes,
        message_id: int,
        payload: Payload,
        headers: Mapping[str, str] | None = None,
    ) -> list[bytes]:
        if type(payload) is bytes and not headers and len(payload) <= self.limits.max_message_bytes:
            return [route, encode_minimal(_REPLY, message_id), payload]  # the usual reply
        body = payload_frames(payload, self.limits)
        if headers:
            env = encode(Envelope(Kind.REPLY, message_id, headers=headers), self.limits)
        else:
            env = encode_minimal(_REPLY, message_id)
        return [route, env, *body]

    def error_frames(
        self,
        route: bytes,
        message_id: int,
        status: StatusCode,
        detail: str = "",
        *,
        retriable: bool = False,
        policy: str = "",
    ) -> list[bytes]:
        env = Envelope(
            Kind.REPLY,
            message_id,
            status=status,
            detail=detail[:4000],
            retriable=retriable,
            policy=policy,
        )
        return [route, self._encode_reply(env)]

    def _encode_reply(self, env: Envelope) -> bytes:
        """An error reply always goes out: when its explanation does not fit the limits, without it."""
        try:
            return encode(env, self.limits)
        except ProtocolError:
            return (
                encode_minimal(Kind.REPLY, env.message_id)
                if env.status is StatusCode.OK
                else (encode(attrs.evolve(env, detail="", policy="", headers={}), self.limits))
            )
