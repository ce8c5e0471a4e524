"""The sans-I/O cores of request/reply: request ids, deadlines and reply matching at the
client; request decoding, call authorization and replies at the server.

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
    RemoteError,
    error_for_status,
)
from .._models import Message, Peer, StatusCode, TraceContext
from ..telemetry.access import trace_id_of
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
    pass

from .core import (
    _REPLY,
    _REQUEST,
    Drops,
    Frames,
    Payload,
    PolicyInForce,
    _PolicyBound,
    limited,
    new_message_ids,
    payload_frames,
    payload_size,
)

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
