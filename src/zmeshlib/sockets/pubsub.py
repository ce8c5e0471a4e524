"""PUB and SUB: publications whose every subscription and every delivery is authorized.

Rules this module keeps:

* A publisher is an XPUB with ``XPUB_MANUAL``: a subscription takes effect
  only as the publisher's core grants it (narrowed, or never applied), so a
  peer without permission receives nothing, whatever it asks for.
* What a publisher remembers of each peer's requests is bounded by the
  core (count and bytes per peer, then the peer's junk is dropped and
  counted), and the subscription messages it reads per housekeeping tick are
  bounded, so one peer's flood cannot stall publishing to the others.
* XPUB cannot withdraw one peer's subscription (DESIGN.md): when a new
  policy would grant a remembered request differently, or junk might have
  paired a subscription with the wrong pipe, the publisher rebinds and every
  subscriber re-sends (docs/authorization.md).
* A subscriber checks its own subscriptions and judges every publication it
  receives (the sender may publish the topic, this workload may receive it).
* The sync and asyncio facades differ only in how they wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from threading import get_ident
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import InvalidArgument, MeshError
from .._models import Delivery, Message, Peer, SocketKind, TraceContext
from ..telemetry.access import trace_id_of
from ..telemetry.tracing import body_size
from .base import MeshSocket
from .consume import serve_messages, serve_messages_async
from .core import MAX_TOPIC_BYTES, Payload
from .core_pubsub import PublisherCore, SubscriberCore
from .frames import recv_message, send_message
from .idioms import RecvIdioms, SendIdioms
from .receiving import flags_timeout, receive

if TYPE_CHECKING:
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

_NOBLOCK = int(zmq.NOBLOCK)
JUNK_RESTART_INTERVAL = 1.0  # at most one rebind a second for junk sent to a publisher
SUBSCRIPTION_HWM = 64  # subscription messages queued per peer: libzmq keeps each in a trie
BAN_SECONDS = 60.0  # how long a peer that flooded a publisher is refused at its handshake
DRAIN_INTERVAL = 0.002  # seconds between reads of a publisher's subscription messages
DRAIN_BATCH = 256  # subscription messages read per socket per drain, at most


class _Publisher(MeshSocket, SendIdioms):
    """PUB over XPUB with XPUB_MANUAL: every subscription is authorized before it applies."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.PUB, driver)
        self.core = PublisherCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops
        )
        self._next_drain = 0.0
        self._junk = False
        self._next_junk_restart = 0.0

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        # what an XPUB receives is subscriptions: one byte and a prefix; a longer frame is a
        # peer's junk, and libzmq drops its connection before buffering it
        sock.maxmsgsize = MAX_TOPIC_BYTES + 1
        sock.rcvhwm = SUBSCRIPTION_HWM

    def _publish(
        self,
        payload: Payload,
        topic: str,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> None:
        """Publish on ``topic``. Never blocks: like zmq.PUB, drops for slow subscribers at the HWM."""
        self._busy += 1
        self._owner = get_ident()
        try:
            if self._closing:
                raise self._closed_error()
            now = time.monotonic()
            if now >= self._next_drain:
                self._next_drain = now + DRAIN_INTERVAL
                self._refresh()
                self._drain()
            span = None
            if trace is None and self._mesh.tracing.recording():
                traced = self._mesh.tracing.start_producer("publish", topic, headers, payload)
                if traced is not None:
                    span, trace, headers = traced
            frames = self.core.publication(topic, payload, headers, trace)
            if self._server is not None:
                send_message(self._server, frames, _NOBLOCK)  # XPUB drops at the HWM itself
            for up in self._upstreams.values():
                if not send_message(up.sock, frames, _NOBLOCK):
                    self.drops.drop("hwm")
            if span is not None:
                span.end()
            metrics = self._mesh.metrics
            if metrics.recording():
                self.counts["messages_sent"] += 1  # messaging.client.sent.messages
                istio = metrics.istio_now
                if istio is not None:
                    istio.message("source", "publish", None, self.service, topic,
                                  metrics.topic_depth(), body_size(payload))  # fmt: skip
            access = self._mesh.access
            if access.enabled():
                access.message("publisher", "publish", None, self.service, topic,
                               body_size(payload), trace_id_of(trace))  # fmt: skip
        finally:
            self._busy -= 1
            if self._closing and not self._busy:
                self._finish_close()

    def _send_parts(self, parts: list[bytes], flags: int, **kw: Any) -> Any:
        # pyzmq's pattern: the first frame of a publication is its topic
        if "topic" not in kw:
            if len(parts) < 1:
                raise InvalidArgument(
                    "a publication needs a topic: send_multipart([topic, payload...])",
                    delivery=Delivery.NOT_SENT,
                )
            head, parts = parts[0], parts[1:]
            try:
                kw["topic"] = head.decode() if isinstance(head, bytes) else str(head)
            except UnicodeDecodeError as e:
                raise InvalidArgument(
                    f"a topic is UTF-8 text: {head[:40]!r}", delivery=Delivery.NOT_SENT
                ) from e
        return self.send(parts, flags=flags, **kw)

    def _housekeeping(self) -> None:
        self._drain()
        if self.core.must_rebind():
            self._restart()

    def _drain(self) -> None:
        """Apply (or refuse) the subscription messages that arrived since the last call."""
        sockets: list[tuple[zmq.Socket, Peer | None]] = []
        if self._server is not None:
            sockets.append((self._server, None))
        sockets.extend((up.sock, up.peer) for up in self._upstreams.values())
        for sock, known in sockets:
            for _ in range(DRAIN_BATCH):  # bounded: the rest waits for the next tick
                got = recv_message(sock, _NOBLOCK, known is None)
                if got is None:
                    break
                frames, user_id = got
                data = frames[0]
                if len(frames) != 1 or not data or data[0] > 1:
                    # Not a subscription. libzmq pairs queued subscriptions with their pipes
                    # only for real subscriptions, so after junk a SUBSCRIBE could land on
                    # another peer's pipe: rebind, and let every subscriber re-send.
                    self.drops.drop("subscription-malformed", "junk on a publisher socket")
                    self._junk = True
                    continue
                if known is not None:
                    self._apply(sock, data, str(known.spiffe_id or ""), known)
                elif user_id is not None:
                    self._apply(sock, data, user_id, self._peers[user_id])
                # else: an unsubscription libzmq generates when a subscriber's connection
                # ends (no handshake metadata): it has already removed that pipe's
                # subscriptions itself
        if self.core.abusers:
            self._shed(self.core.abusers)
        if self._junk and time.monotonic() >= self._next_junk_restart:
            self._junk = False
            self._next_junk_restart = time.monotonic() + JUNK_RESTART_INTERVAL
            self.counts["junk_restarts"] += 1
            self._restart()

    def _shed(self, abusers: set[str]) -> None:
        """Keep peers that asked for more than is remembered out for ``BAN_SECONDS``, and drop
        their connections (the rebind below): libzmq holds what they sent until then."""
        for user_id in abusers:
            self.counts["peers_banned"] += 1
            self._mesh._zap.ban(self._zap_domain, user_id, BAN_SECONDS)
            self._mesh._log_limited(
                "publisher-flood",
                "%s sent more subscriptions than the publisher %s remembers: refused for %gs",
                user_id or "anonymous",
                self.service,
                BAN_SECONDS,
            )
        for up in list(self._upstreams.values()):  # a connected publisher's abusive SUB
            if str(up.peer.spiffe_id or "") in abusers:
                self._shun(up.address, BAN_SECONDS)
        abusers.clear()
        self._junk = True  # rebind (at most once a second): the abusers' pipes go with it

    def _apply(self, sock: zmq.Socket, data: bytes, user_id: str, peer: Peer) -> None:
        change = self.core.on_subscription(data, user_id, peer)
        if change is None:
            return
        opt = zmq.SUBSCRIBE if change.action == "subscribe" else zmq.UNSUBSCRIBE
        for prefix in change.prefixes:  # applies to the pipe of the message just read
            sock.setsockopt(opt, prefix)

    def _restart(self) -> None:
        """Rebind the XPUB so every subscriber re-sends, and each request is judged afresh.

        XPUB cannot take back one peer's subscription: see docs/authorization.md.
        """
        self.counts["restarts"] += 1
        log.info(
            "re-binding %s to apply policy %s to subscriptions",
            self._bound,
            self._mesh.policy.revision,
        )
        self._sources.clear()
        self._ready = ()
        if self._server is not None:
            self._unwatch()
            self._server.close(linger=0)
            self._server = self._new_socket(zmq.XPUB, server=True)
            self._sources[self._server] = None
            self._watch(self._server)
            for address in self._bound:
                _bind_retrying(self._server, address)
        for address, up in list(self._upstreams.items()):
            up.sock.close(linger=0)
            up.sock = self._new_socket(zmq.XPUB, server=False, server_key=up.key)
            up.sock.connect(address)
            self._sources[up.sock] = up.peer
        self.core.forget_all()


class _Subscriber(MeshSocket, RecvIdioms):
    """SUB: delivers publications whose sender may publish their topic."""

    def __init__(self, mesh: Mesh, driver: Any) -> None:
        super().__init__(mesh, SocketKind.SUB, driver)
        self.core = SubscriberCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops
        )
        self.core.tracing = mesh.tracing
        self.core.metrics = mesh.metrics
        self.core.access = mesh.access
        self._prefixes: list[bytes] = []

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        for p in self._prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, p)

    def subscribe(self, prefix: str | bytes = "") -> None:
        """Ask for topics starting with ``prefix``; PermissionDenied if the policy forbids it all."""
        text = _prefix_text(prefix)
        with self._operation():
            self.core.check_subscribe(text)
            raw = text.encode()
            if raw in self._prefixes:
                return
            self._prefixes.append(raw)
            for s in self.underlying():
                s.setsockopt(zmq.SUBSCRIBE, raw)

    def unsubscribe(self, prefix: str | bytes = "") -> None:
        raw = _prefix_text(prefix).encode()
        with self._operation():
            if raw in self._prefixes:
                self._prefixes.remove(raw)
                for s in self.underlying():
                    s.setsockopt(zmq.UNSUBSCRIBE, raw)

    def _parts_of(self, msg: Message) -> list[bytes]:
        return [(msg.topic or "").encode(), *msg.frames]

    def _default_timeout(self) -> float | None:
        return None if self._rcvtimeo < 0 else self._rcvtimeo / 1000


def _prefix_text(prefix: object) -> str:
    if isinstance(prefix, bytes):
        try:
            text = prefix.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgument(
                f"a subscription prefix is UTF-8 text (topics are): {prefix[:40]!r} is not",
                delivery=Delivery.NOT_SENT,
            ) from e
    elif isinstance(prefix, str):
        text = prefix
    else:
        raise InvalidArgument(
            f"subscribe() takes a str (or UTF-8 bytes) prefix, not {type(prefix).__name__}",
            delivery=Delivery.NOT_SENT,
        )
    if len(text.encode()) > MAX_TOPIC_BYTES:
        raise InvalidArgument(
            f"a subscription prefix is at most {MAX_TOPIC_BYTES} bytes (topics are too)",
            delivery=Delivery.NOT_SENT,
        )
    if "\0" in text:
        raise InvalidArgument(
            "a subscription prefix cannot contain NUL", delivery=Delivery.NOT_SENT
        )
    return text


def _bind_retrying(sock: zmq.Socket, address: str, attempts: int = 50) -> None:
    """Bind an address just released by a closed socket (the port may linger a moment)."""
    for i in range(attempts):
        try:
            sock.bind(address)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or i == attempts - 1:
                raise MeshError(f"cannot rebind {address!r}: {e.strerror}") from e
            time.sleep(0.01)  # the port is released by libzmq's I/O thread: nothing to wait on


# -- the facades ---------------------------------------------------------------------


class PubSocket(_Publisher):
    def send(
        self,
        payload: Payload,
        *,
        topic: str,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        flags: int = 0,
    ) -> None:
        """Publish on ``topic``. Never blocks (``flags`` is accepted for pyzmq's sake)."""
        self._publish(payload, topic, headers, trace)


class AsyncPubSocket(_Publisher):
    async def send(
        self,
        payload: Payload,
        *,
        topic: str,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        flags: int = 0,
    ) -> None:
        """Publish on ``topic``. Never waits; a coroutine for a uniform surface."""
        self._publish(payload, topic, headers, trace)


class SubSocket(_Subscriber):
    def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The next authorized publication; ``timeout`` in seconds (default: the ``rcvtimeo``
        option, else wait for ever). ``Timeout`` (a ``zmq.Again``) when none came; with
        ``flags=zmq.NOBLOCK`` at once."""
        return receive(
            self, flags_timeout(timeout, flags, self._default_timeout()), self.core.message
        )

    def serve(
        self,
        handler: Callable[[Message], Any],
        *,
        max_messages: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Handle each message with ``handler`` inside ``msg.process()`` (its CONSUMER span),
        until ``stop()`` is true, ``max_messages`` were handled, or the socket is closed;
        returns how many. A handler's exception is counted and logged, never fatal."""
        return serve_messages(self, handler, max_messages, stop)


class AsyncSubSocket(_Subscriber):
    async def recv(self, timeout: float | None = None, *, flags: int = 0) -> Message:
        """The next authorized publication (as :meth:`SubSocket.recv`)."""
        op = self._receive_op(
            flags_timeout(timeout, flags, self._default_timeout()), self.core.message
        )
        return await self._driver.run(self, op)

    async def serve(
        self,
        handler: Callable[[Message], Any],
        *,
        max_messages: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Handle each message with ``handler`` (sync or async) inside ``msg.process()``
        (as :meth:`SubSocket.serve`)."""
        return await serve_messages_async(self, handler, max_messages, stop)
