"""The sans-I/O cores of pub/sub and pipelines: publication frames, subscription
authorization at the publisher, what a subscriber (or a PULL) delivers, and a PUSH's frames.

The rules these cores keep, and the table of which core decides what, are the package's
(:mod:`zmeshlib.sockets.core`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._exceptions import (
    ProtocolError,
)
from .._models import Message, Peer, TraceContext
from ..identity.spiffe_id import SpiffeId
from ..telemetry.access import trace_id_of
from ..wire.envelope import (
    Kind,
    Limits,
    decode,
)

if TYPE_CHECKING:
    pass

from .core import (
    _PUBLISH,
    _PUSH,
    CACHED_RESOURCE_BYTES,
    MAX_REQUEST_BYTES_PER_PEER,
    MAX_REQUESTS,
    MAX_REQUESTS_PER_PEER,
    MAX_TOPIC_BYTES,
    Drops,
    Frames,
    Payload,
    PolicyInForce,
    _PolicyBound,
    denied,
    limited,
    log,
    payload_frames,
    payload_size,
)

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
