"""The mesh sockets: thin shells that move frames between libzmq and the cores.

Rules this module keeps:

* One shell, two drivers. Every operation that may wait is a generator that
  yields a :class:`Wait` (which underlying sockets, which events, how long)
  and is resumed with the events that happened. The sync classes drive it
  with blocking waits (:func:`sync_wait`: a read under RCVTIMEO when the wait
  is for one socket, a ``zmq.Poller`` otherwise); the asyncio classes
  (``zmeshlib.asyncio``) with an awaited poll. Nothing else differs, so no
  logic is written twice. The sync REQ and the sync receive also make their
  first wait inline, before building an operation: most calls end there.
* A mesh socket is used from one thread (or one event loop), as a zmq socket
  is. Other threads talk to it only through the Mesh's policy and registry,
  which the socket reads at its next operation.
* Each upstream endpoint has its own underlying socket, connected with the
  server key from its verified card: the peer of whatever arrives on it is
  that card's identity. A bound socket learns the peer from the User-Id the
  handshake set.
* While waiting, a socket wakes at least every ``REFRESH_INTERVAL`` seconds to
  pick up registry changes (endpoints that appeared, servers that restarted
  with a new key) and policy changes.

Underlying sockets per mesh kind:

=====  ===============  ==================  ===============================
kind   bound            connected           connects to (card endpoint kind)
=====  ===============  ==================  ===============================
PUB    XPUB (manual)    XPUB (manual)       SUB
SUB    SUB              SUB                 PUB
REQ    (not bindable)   DEALER              REP
REP    ROUTER           (not connectable)   REQ
PUSH   PUSH             PUSH                PULL
PULL   PULL             PULL                PUSH
=====  ===============  ==================  ===============================
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import zmq
from zmq.utils.monitor import recv_monitor_message

from .._exceptions import IdentityError, MeshError, RemoteError, Timeout, Unavailable
from .._models import ANONYMOUS, Message, Peer, SocketKind, StatusCode, TraceContext
from ..identity.card import Card
from ..wire.envelope import Kind
from .core import (
    ClientCore,
    Drops,
    Payload,
    PeerBook,
    Pending,
    PublisherCore,
    PushCore,
    ServerCore,
    SubscriberCore,
)
from .frames import Received, recv_message, send_message
from .handshake import ZAP_DOMAIN

if TYPE_CHECKING:
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

REFRESH_INTERVAL = 0.1  # seconds between registry/policy checks while waiting or sending
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: enum arithmetic per frame is measurable
_POLLIN = int(zmq.POLLIN)
_OK = StatusCode.OK  # a plain name: an enum member lookup per reply is measurable
WAIT_MS = int(REFRESH_INTERVAL * 1000)  # every underlying socket's RCVTIMEO: the longest wait
_FAILURE_NAMES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no-detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
_HANDSHAKE_FAILURES = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
JUNK_RESTART_INTERVAL = 1.0  # at most one rebind a second for junk sent to a publisher
GC_LINGER_MS = 1000  # how long an underlying socket dropped without close() may flush
DRAIN_INTERVAL = 0.002  # seconds between reads of a publisher's subscription messages

_UNDERLYING = {
    SocketKind.PUB: (zmq.XPUB, zmq.XPUB),
    SocketKind.SUB: (zmq.SUB, zmq.SUB),
    SocketKind.REQ: (None, zmq.DEALER),
    SocketKind.REP: (zmq.ROUTER, None),
    SocketKind.PUSH: (zmq.PUSH, zmq.PUSH),
    SocketKind.PULL: (zmq.PULL, zmq.PULL),
}


@attrs.define(slots=True)
class Wait:
    """What an operation waits for: events on some underlying sockets, for at most ``timeout`` s."""

    sockets: tuple[zmq.Socket, ...]
    events: int
    timeout: float
    poller: zmq.Poller | None = (
        None  # a prepared poller for the sync driver (cached per socket set)
    )


#: What a wait found, by socket: its poll events, or (the sync driver, waiting to read one
#: socket) the message it already received from it.
Events = Mapping[zmq.Socket, "int | Received"]
Op = Generator[Wait, Events, Any]


@attrs.define(eq=False)
class Upstream:
    """One connected endpoint: its own underlying socket and the verified card it was dialled with."""

    address: str
    sock: zmq.Socket
    card: Card | None
    peer: Peer

    @property
    def key(self) -> bytes | None:
        return self.card.curve_key if self.card else None


class MeshSocket:
    """What every mesh socket kind shares: bind, connect, upstreams, housekeeping, waiting."""

    kind: SocketKind
    core: Any  # the kind's sans-I/O core (sockets/core.py): exactly one per socket
    #: After a message, read on without polling (throughput: SUB, PULL), or poll first
    #: (latency: REP, whose next request is rarely queued; a failed read costs more than a poll).
    burst: bool = True
    #: Driven by :func:`drive`, which waits on one socket with a blocking read under
    #: RCVTIMEO (``WAIT_MS``); the asyncio driver polls, and zmq.asyncio fails a poll of a
    #: socket with RCVTIMEO set, so its sockets keep the default.
    blocking_reads: bool = True

    def __init__(self, mesh: Mesh, kind: SocketKind) -> None:
        self._mesh = mesh
        self.kind = kind
        self.service = ""
        self.drops = Drops()
        self._peers = PeerBook()
        self._server: zmq.Socket | None = None
        self._bound: list[str] = []
        self._upstreams: dict[str, Upstream] = {}
        self._targets: list[tuple[str, str]] = []  # ("service", name) or ("address", addr)
        self._registry_token: object = None
        self._policy_seen: object = None
        self._next_refresh = 0.0
        self._rr = 0
        self._closed = False
        self.counts: Counter[str] = Counter()
        # every underlying socket we read from -> its peer (None: the bound socket, peer by User-Id)
        self._sources: dict[zmq.Socket, Peer | None] = {}
        self._ready: tuple[zmq.Socket, ...] = ()  # sockets the last poll said were readable
        self._poller_key: tuple[zmq.Socket, ...] = ()
        self._poller = zmq.Poller()
        self._monitor: zmq.Socket | None = None  # handshake failures libzmq decides before ZAP

    # -- public surface ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def endpoints(self) -> list[str]:
        """The addresses this socket is bound to (resolved: no port 0)."""
        return list(self._bound)

    @property
    def upstreams(self) -> list[str]:
        """The addresses of the endpoints this socket is connected to now."""
        return list(self._upstreams)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: drops by reason (``drop.<reason>``) and per-kind counts."""
        out = {f"drop.{k}": v for k, v in self.drops.counts.items()}
        out.update(self.counts)
        out.update(getattr(self.core, "counts", {}))
        return out

    def bind(self, address: str, *, service: str = "") -> str:
        """Bind and add the endpoint to this workload's card; returns the resolved address."""
        self._check_open()
        server_type = _UNDERLYING[self.kind][0]
        if server_type is None:
            raise MeshError(
                f"a {self.kind.name} socket cannot bind: connect it (service= or address)"
            )
        self._set_service(service)
        if self._server is None:
            self._server = self._new_socket(server_type, server=True)
            self._sources[self._server] = None
            self._watch(self._server)
        self._server.bind(address)
        resolved = self._server.getsockopt_string(zmq.LAST_ENDPOINT)
        self._bound.append(resolved)
        self._mesh._add_endpoint(resolved, self.kind.name, self.service)
        return resolved

    def connect(self, address: str | None = None, *, service: str | None = None) -> None:
        """Connect to a service's verified endpoints (``service=``) or to one address.

        Endpoints found later in the registry are connected as they appear.
        """
        self._check_open()
        if _UNDERLYING[self.kind][1] is None:
            raise MeshError(f"a {self.kind.name} socket cannot connect: bind it")
        if (address is None) == (service is None):
            raise MeshError("connect() takes an address or service=..., exactly one of them")
        if service is not None:
            self._set_service(service)
            self._targets.append(("service", service))
        else:
            self._targets.append(("address", str(address)))
        self._refresh(force=True)
        if service is not None and not self._upstreams:
            self._explain_empty(service)

    def close(self, linger: int = 0) -> None:
        """Close every underlying socket; ``linger`` ms for queued messages (0: drop them)."""
        if self._closed:
            return
        self._closed = True
        for up in self._upstreams.values():
            up.sock.close(linger=linger)
        self._upstreams.clear()
        if self._server is not None:
            self._server.close(linger=linger)
            self._server = None
        self._sources.clear()
        self._ready = ()
        self._unwatch()
        self._mesh._forget_socket(self)

    def __enter__(self) -> MeshSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def underlying(self) -> list[zmq.Socket]:
        """The libzmq sockets behind this mesh socket (for monitoring; do not send on them)."""
        socks = [self._server] if self._server is not None else []
        return socks + [u.sock for u in self._upstreams.values()]

    # -- internals: sockets ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MeshError(f"this {self.kind.name} socket is closed")

    def _set_service(self, service: str) -> None:
        if service and self.service and service != self.service:
            raise MeshError(
                f"this socket already serves {self.service!r}: use one socket per service ({service!r})"
            )
        if service:
            self.service = service
            self.core.service = service

    def _new_socket(
        self, socket_type: int, *, server: bool, server_key: bytes | None = None
    ) -> zmq.Socket:
        mesh = self._mesh
        sock = mesh._zmq_context.socket(socket_type)
        # a socket garbage-collected with messages still queued gets this long to flush them;
        # close() and Mesh.close() choose their own linger
        sock.linger = GC_LINGER_MS
        secure = mesh.mode != "DISABLE"
        if server:
            sock.zap_domain = ZAP_DOMAIN
            if secure:
                sock.curve_server = True
                sock.curve_secretkey = mesh._curve_secret
                sock.curve_publickey = mesh.curve_public
        elif secure or server_key is not None:
            if server_key is None:
                raise IdentityError("no server key to connect with", rule="no-card")
            sock.curve_serverkey = server_key
            sock.curve_secretkey = mesh._curve_secret
            sock.curve_publickey = mesh.curve_public
        if self.blocking_reads:
            sock.setsockopt(zmq.RCVTIMEO, WAIT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._configure(sock, server)
        return sock

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        """Kind-specific socket options (XPUB_MANUAL, subscriptions...)."""

    # -- internals: upstream resolution ------------------------------------------------

    def _wanted(self) -> dict[str, Card | None]:
        """The endpoints the connect targets resolve to now: address -> verified card."""
        registry = self._mesh.registry
        want_kind = self.kind.counterpart.name
        wanted: dict[str, Card | None] = {}
        for how, name in self._targets:
            if how == "service":
                for card in registry.by_service(name, kind=want_kind):
                    for ep in card.endpoints_for(name, want_kind):
                        old = wanted.get(ep.address)
                        if old is None or card.not_before > old.not_before:
                            wanted[ep.address] = card
            else:
                card = registry.by_endpoint(name)
                if card is not None or self._mesh.mode == "DISABLE":
                    wanted[name] = card
        return wanted

    def _refresh(self, *, force: bool = False) -> None:
        """Re-resolve the connect targets when the registry or the policy changed."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_INTERVAL
        if self._monitor is not None:
            self._count_handshake_failures()
        self._housekeeping()
        if not self._targets:
            return
        changed, self._registry_token = self._mesh.registry.changed_since(self._registry_token)
        policy = self._mesh.policy
        if not (changed or force or policy is not self._policy_seen):
            return
        self._policy_seen = policy
        wanted = self._wanted()
        for address in list(self._upstreams):
            up = self._upstreams[address]
            card = wanted.get(address, "gone")
            if card == "gone" or (card is not None and card.curve_key != up.key):
                log.info("disconnecting %s (%s)", address, "gone" if card == "gone" else "new key")
                up.sock.close(linger=0)
                del self._upstreams[address]
                self._sources.pop(up.sock, None)
                self._ready = ()
        client_type = _UNDERLYING[self.kind][1]
        for address, card in wanted.items():
            if address in self._upstreams:
                if card is not None:
                    self._upstreams[address].card = card
                continue
            sock = self._new_socket(
                client_type, server=False, server_key=card.curve_key if card else None
            )
            sock.connect(address)
            up = Upstream(address, sock, card, card.peer if card else ANONYMOUS)
            self._upstreams[address] = up
            self._sources[sock] = up.peer
            log.info("connected %s to %s (%s)", self.kind.name, address, up.peer)

    def _explain_empty(self, service: str) -> None:
        misnamed = self._mesh.registry.misnamed(service, kind=self.kind.counterpart.name)
        if misnamed:
            who = ", ".join(sorted({str(c.spiffe_id) for c in misnamed}))
            raise IdentityError(
                f"refusing to connect to service {service!r}: its only cards are signed for "
                f"{who}, which the policy does not allow to serve {service!r} (secure naming); "
                f"add the identity to services.{service}.identities if it is legitimate",
                rule="secure-naming",
            )

    def _watch(self, server: zmq.Socket) -> None:
        """Monitor a bound socket for handshakes that fail before ZAP is asked (e.g. a plain
        peer at a CURVE listener): ZAP's counters cannot see those."""
        self._monitor = server.get_monitor_socket(_HANDSHAKE_FAILURES)

    def _unwatch(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def _count_handshake_failures(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, _NOBLOCK)  # type: ignore[arg-type]
            except zmq.Again:
                return
            reason = _FAILURE_NAMES.get(event["event"], "other")
            self.counts[f"handshake_failed.{reason}"] += 1
            log.warning(
                "handshake on %s failed (%s, code %s): a peer without a valid CURVE handshake",
                event.get("endpoint", b"").decode(errors="replace"),
                reason,
                event["value"],
            )

    def _housekeeping(self) -> None:
        """Hook run at most every REFRESH_INTERVAL from the socket's own thread."""

    # -- internals: receiving ------------------------------------------------------------

    def _take(self, sock: zmq.Socket) -> tuple[tuple[bytes, ...], Peer] | None:
        """One message from ``sock`` without waiting, with its authenticated peer; None if empty."""
        got = recv_message(sock, _NOBLOCK, sock is self._server)
        return None if got is None else (got[0], self._peer(sock, got[1]))

    def _peer(self, sock: zmq.Socket, user_id: str | None) -> Peer:
        """Who sent a message read from ``sock``: the card an upstream was dialled with, or on
        the bound socket the User-Id its handshake set (none: anonymous)."""
        return self._sources.get(sock) or self._peers[user_id or ""]

    def _arrivals(self, events: Events) -> Iterator[tuple[tuple[bytes, ...], Peer]]:
        """The messages a wait found: the one the driver already read, then whatever else is
        queued on the ready sockets, read without waiting."""
        for sock, got in events.items():
            if sock not in self._sources:
                continue
            if got.__class__ is not int:
                yield got[0], self._peer(sock, got[1])  # type: ignore[index]
            while (taken := self._take(sock)) is not None:
                yield taken

    def _wait(
        self,
        deadline: float | None,
        events: int = zmq.POLLIN,
        socks: tuple[zmq.Socket, ...] | None = None,
    ) -> Wait:
        """A Wait until ``deadline`` (monotonic), capped so housekeeping keeps running; on
        ``socks`` (default: every socket this one reads from)."""
        timeout = REFRESH_INTERVAL
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        if socks is None:
            socks = tuple(self._sources)
        if events != zmq.POLLIN or len(socks) == 1:  # one socket: the sync driver needs no poller
            return Wait(socks, events, timeout)
        return Wait(socks, events, timeout, self._read_poller(socks))

    def _read_poller(self, socks: tuple[zmq.Socket, ...]) -> zmq.Poller:
        """A POLLIN poller of ``socks``, kept while the set of sockets stays the same."""
        if socks != self._poller_key:
            self._poller = zmq.Poller()
            for sock in socks:
                self._poller.register(sock, zmq.POLLIN)
            self._poller_key = socks
        return self._poller

    def _drain_ready(self, events: Events, judge: Callable[[tuple[bytes, ...], Peer], Any]) -> Any:
        """Judge what a wait found until a message gives a result; remembers which sockets
        may hold more (read first next time, without a wait, when ``burst``)."""
        for taken in self._arrivals(events):
            result = judge(*taken)
            if result is not None:
                self._ready = tuple(s for s in events if s in self._sources) if self.burst else ()
                return result
        self._ready = ()
        return None

    def _receive_op(
        self, timeout: float | None, judge: Callable[[tuple[bytes, ...], Peer], Any]
    ) -> Op:
        """Wait for the next message that ``judge`` turns into a result (None = dropped, keep waiting)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: Events = dict.fromkeys(self._ready, 0)
        while True:
            self._refresh()
            result = self._drain_ready(events, judge)
            if result is not None:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"nothing received on this {self.kind.name} socket within {timeout}s; "
                    "raise the timeout or check that a peer is sending"
                )
            events = yield self._wait(deadline)

    def _receive(
        self, timeout: float | None, judge: Callable[[tuple[bytes, ...], Peer], Any]
    ) -> Any:
        """Sync receive. The fast path (inlined: it runs once per message) reads a socket the
        last wait said was readable, or waits once, without building an operation."""
        ready = self._ready
        if ready and time.monotonic() < self._next_refresh:
            sock = ready[0]
            taken = self._take(sock)
            if taken is None:
                self._ready = ready[1:]
            else:
                result = judge(*taken)
                if result is not None:
                    if not self.burst:
                        self._ready = ()
                    return result
        elif self._sources and time.monotonic() < self._next_refresh:
            # nothing known to be queued: one wait before building an operation
            start = time.monotonic()
            if len(self._sources) == 1 and (timeout is None or timeout >= REFRESH_INTERVAL):
                (sock,) = self._sources  # a bound REP, PULL or SUB, or one upstream
                got = recv_message(sock, 0, sock is self._server)  # RCVTIMEO: at most WAIT_MS
                if got is not None:
                    # self._peer(sock, got[1]), inlined: this runs once per message
                    result = judge(got[0], self._sources[sock] or self._peers[got[1] or ""])
                    if result is not None:
                        if self.burst:
                            self._ready = (sock,)
                        return result
            else:
                wait = self._wait(None if timeout is None else start + timeout)
                result = self._drain_ready(sync_wait(wait), judge)
                if result is not None:
                    return result
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        return drive(self._receive_op(timeout, judge))

    def poll(self, timeout: float | None = None) -> bool:
        """True if a message may be received without waiting (it may still be dropped as invalid)."""
        self._refresh()
        if self._ready:
            return True
        poller = self._read_poller(tuple(self._sources))
        events = dict(poller.poll(None if timeout is None else int(timeout * 1000)))
        self._ready = tuple(sock for sock in events if sock in self._sources)
        return bool(self._ready)


# -- drivers -------------------------------------------------------------------------


def sync_wait(wait: Wait) -> Events:
    """One wait of the sync driver.

    Waiting to read one socket (a REP's ROUTER, a REQ's DEALER for its reply,
    a SUB with one publisher) is a blocking receive under RCVTIMEO rather than
    a poll and then a read, which cost a client 10-15 us more CPU per request
    (docs/performance.md). The message read comes back as the socket's value.
    """
    ms = int(wait.timeout * 1000)
    if wait.events == _POLLIN and len(wait.sockets) == 1:
        sock = wait.sockets[0]
        if ms != WAIT_MS:  # the last wait before a deadline
            sock.setsockopt(zmq.RCVTIMEO, ms)
        try:
            got = recv_message(sock, 0, True)
        finally:
            if ms != WAIT_MS:
                sock.setsockopt(zmq.RCVTIMEO, WAIT_MS)
        return {} if got is None else {sock: got}
    poller = wait.poller
    if poller is None:
        poller = zmq.Poller()
        for sock in wait.sockets:
            poller.register(sock, wait.events)
    return dict(poller.poll(ms))


def drive(op: Op) -> Any:
    """Run an operation to completion, blocking between steps (:func:`sync_wait`)."""
    try:
        wait = next(op)
        while True:
            wait = op.send(sync_wait(wait))
    except StopIteration as stop:
        return stop.value


# -- the kinds -----------------------------------------------------------------------


class PubSocket(MeshSocket):
    """PUB over XPUB with XPUB_MANUAL: every subscription is authorized before it applies."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.PUB)
        self.core = PublisherCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops
        )
        self._next_drain = 0.0
        self._junk = False
        self._next_junk_restart = 0.0

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        sock.setsockopt(zmq.XPUB_MANUAL, 1)

    def send(
        self,
        payload: Payload,
        *,
        topic: str,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        """Publish on ``topic``. Never blocks: like zmq.PUB, drops for slow subscribers at the HWM."""
        now = time.monotonic()
        if now >= self._next_drain:
            self._next_drain = now + DRAIN_INTERVAL
            self._refresh()
            self._drain()
        frames = self.core.publication(topic, payload, headers, trace)
        if self._server is not None:
            send_message(self._server, frames, _NOBLOCK)  # XPUB drops at the HWM itself
        for up in self._upstreams.values():
            if not send_message(up.sock, frames, _NOBLOCK):
                self.drops.drop("hwm")

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
            while (got := recv_message(sock, _NOBLOCK, known is None)) is not None:
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
        if self._junk and time.monotonic() >= self._next_junk_restart:
            self._junk = False
            self._next_junk_restart = time.monotonic() + JUNK_RESTART_INTERVAL
            self.counts["junk_restarts"] += 1
            self._restart()

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


class _Receiving(MeshSocket):
    """What SUB and PULL share: a SubscriberCore judges every message received."""

    core: SubscriberCore

    def _recv_op(self, timeout: float | None) -> Op:
        return self._receive_op(timeout, self.core.message)

    def recv(self, timeout: float | None = None) -> Message:
        return self._receive(timeout, self.core.message)


class SubSocket(_Receiving):
    """SUB: delivers publications whose sender may publish their topic."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.SUB)
        self.core = SubscriberCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops
        )
        self._prefixes: list[bytes] = []

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        for p in self._prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, p)

    def subscribe(self, prefix: str | bytes = "") -> None:
        """Ask for topics starting with ``prefix``; PermissionDenied if the policy forbids it all."""
        text = prefix.decode() if isinstance(prefix, bytes) else prefix
        self.core.check_subscribe(text)
        raw = text.encode()
        if raw in self._prefixes:
            return
        self._prefixes.append(raw)
        for s in self.underlying():
            s.setsockopt(zmq.SUBSCRIBE, raw)

    def unsubscribe(self, prefix: str | bytes = "") -> None:
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        if raw in self._prefixes:
            self._prefixes.remove(raw)
            for s in self.underlying():
                s.setsockopt(zmq.UNSUBSCRIBE, raw)


class PullSocket(_Receiving):
    """PULL: delivers pipeline messages whose sender may push to this service."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.PULL)
        self.core = SubscriberCore(
            mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits, self.drops, kind=Kind.PUSH
        )


class PushSocket(MeshSocket):
    """PUSH: round-robin over the connected PULL endpoints (or the bound socket's peers)."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.PUSH)
        self.core = PushCore(mesh._in_force, "", lambda: mesh.spiffe_id, mesh.limits)

    def _send_op(
        self,
        payload: Payload,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
        timeout: float | None,
    ) -> Op:
        self._refresh()
        frames = self.core.frames(payload, headers, trace)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            targets = self.underlying()
            n = len(targets)
            for i in range(n):
                sock = targets[(self._rr + i) % n]
                if not send_message(sock, frames, _NOBLOCK):
                    continue
                self._rr = (self._rr + i + 1) % n
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"no PULL peer of {self.service or 'this socket'} could take a message within "
                    f"{timeout}s (none connected, or all at their high-water mark)"
                )
            yield self._wait(deadline, zmq.POLLOUT)
            self._refresh()

    def send(
        self,
        payload: Payload,
        *,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send to one PULL peer; waits (up to ``timeout``) while none can take it, as zmq.PUSH does."""
        drive(self._send_op(payload, headers, trace, timeout))


class ReqSocket(MeshSocket):
    """REQ: a client over one DEALER per upstream endpoint. Never locks up.

    Unlike zmq.REQ, a lost reply costs one Timeout, not the socket: replies
    carry the request id, and late or duplicate ones are dropped and counted.
    """

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.REQ)
        self.core = ClientCore("", mesh.limits, self.drops)
        self.default_timeout = 5.0

    def _pick(self) -> Upstream | None:
        ups = list(self._upstreams.values())
        if not ups:
            return None
        self._rr = (self._rr + 1) % len(ups)
        return ups[self._rr]

    def _request_op(
        self,
        payload: Payload,
        method: str,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        trace: TraceContext | None,
    ) -> Op:
        timeout = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._refresh()
        up = self._pick()
        while up is None:  # no endpoint yet: wait for one to appear in the registry
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"no verified endpoint of service {self.service!r} within {timeout}s: "
                    "check that a server is bound for it and that its card is in the registry"
                )
            yield self._wait(deadline)
            self._refresh()
            up = self._pick()
        now = time.monotonic()
        pending, frames = self.core.request(
            payload,
            method=method,
            timeout=deadline - now,
            now=now,
            wall=time.time(),
            endpoint=up.address,
            headers=headers,
            trace=trace,
        )
        return (yield from self._exchange_op(up, pending, frames, timeout))

    def _exchange_op(
        self, up: Upstream, pending: Pending, frames: list[bytes] | None, timeout: float
    ) -> Op:
        """Send a request's ``frames`` (None: already sent) and wait for its reply."""
        deadline = pending.deadline
        method = pending.method
        try:
            while frames is not None:
                if send_message(up.sock, frames, _NOBLOCK):
                    frames = None
                else:
                    if time.monotonic() >= deadline:
                        raise Timeout(
                            f"{method or 'request'} to {up.address}: could not send within {timeout}s "
                            "(the server is not taking messages)"
                        ) from None
                    yield Wait(
                        (up.sock,), zmq.POLLOUT, min(REFRESH_INTERVAL, deadline - time.monotonic())
                    )
            only = (up.sock,)  # one request at a time: a reply on another upstream is late
            while True:
                events = yield self._wait(deadline, socks=only)
                for taken in self._arrivals(events):
                    result = self.core.answer(pending, *taken)
                    if result is not None:
                        return result
                self._refresh()
                if self._upstreams.get(up.address) is not up:
                    # the endpoint went away or came back with a new key: no reply can arrive on
                    # the old connection. Whether the request was processed is unknown, so this
                    # is the caller's (or a retry policy's) decision, not a silent re-send.
                    self.counts["upstream_lost"] += 1
                    raise Unavailable(
                        f"{method or 'request'} to {up.address}: the endpoint went away or restarted "
                        "with a new key while the request was in flight; it may or may not have "
                        "been processed"
                    )
                if time.monotonic() >= deadline:
                    self.counts["timeouts"] += 1
                    raise Timeout(
                        f"{method or 'request'} to service {self.service or up.address!r} got no reply "
                        f"from {up.address} ({up.peer}) within {timeout}s; the socket stays usable"
                    )
        finally:
            self.core.forget(pending)

    def request(
        self,
        payload: Payload = b"",
        *,
        method: str = "",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        trace: TraceContext | None = None,
    ) -> Message:
        """Send one request and wait for its reply (``timeout`` seconds, default 5).

        The usual call (one endpoint, no refresh due, a timeout of at least one
        blocking read) sends and makes its first wait inline, and only builds
        the operation when that read does not bring the reply.
        """
        if timeout is None:
            timeout = self.default_timeout
        now = time.monotonic()
        if len(self._upstreams) != 1 or now >= self._next_refresh or timeout < REFRESH_INTERVAL:
            return drive(self._request_op(payload, method, timeout, headers, trace))
        (up,) = self._upstreams.values()
        sock = up.sock
        core = self.core
        frames, mid = core.request_frames(
            payload, method, int((time.time() + timeout) * 1000), headers, trace
        )
        sent = send_message(sock, frames, _NOBLOCK)
        pending = core.expect(mid, now + timeout, method, up.address)  # while the request travels
        if not sent:
            return drive(self._exchange_op(up, pending, frames, timeout))
        try:
            got = recv_message(sock)  # RCVTIMEO: at most WAIT_MS, within the timeout
        except BaseException:
            core.forget(pending)
            raise
        if got is not None:
            result = core.answer(pending, got[0], up.peer)
            if result is not None:
                return result
        return drive(self._exchange_op(up, pending, None, timeout))


class RepSocket(MeshSocket):
    """REP: a server over ROUTER; replies go to the right client, in any order."""

    burst = False

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh, SocketKind.REP)
        self.core = ServerCore(mesh._in_force, "", mesh.limits, self.drops)
        self._last: Message | None = None
        # what a request's Message.reply calls: one bound method for every request
        self._replier: Callable[..., None] = self._reply

    def _judge(self, frames: tuple[bytes, ...], peer: Peer) -> Message | None:
        msg, immediate = self.core.request(frames, peer, time.time(), self._replier)
        if immediate is not None:
            self._send_reply(immediate)
        return msg

    def _reply(
        self,
        msg: Message,
        payload: Payload,
        headers: Mapping[str, str] | None = None,
        *,
        status: StatusCode = StatusCode.OK,
        detail: str = "",
        retriable: bool = False,
    ) -> None:
        """Answer ``msg``, a request received here (its ``Message.reply``)."""
        if status is _OK:
            frames = self.core.reply_frames(msg._route, msg.message_id, payload, headers)
        else:
            frames = self.core.error_frames(
                msg._route, msg.message_id, status, detail, retriable=retriable
            )
        self._send_reply(frames)

    def _send_reply(self, frames: list[bytes]) -> None:
        if self._closed:
            self._check_open()  # raises
        if not send_message(self._server, frames, _NOBLOCK):  # type: ignore[arg-type]
            self.drops.drop("reply-hwm", "the client is not reading its replies")

    def _recv_op(self, timeout: float | None) -> Op:
        msg = yield from self._receive_op(timeout, self._judge)
        self._last = msg
        return msg

    def recv(self, timeout: float | None = None) -> Message:
        """The next authorized request; answer it with ``msg.reply(...)`` or :meth:`send`."""
        self._last = msg = self._receive(timeout, self._judge)
        return msg

    def send(self, payload: Payload = b"", *, headers: Mapping[str, str] | None = None) -> None:
        """Reply to the last request received (pyzmq's REP idiom)."""
        if self._last is None:
            raise MeshError("no request to reply to: call recv() first")
        msg, self._last = self._last, None
        msg.reply(payload, headers=headers)

    def handle(self, msg: Message, handler: Callable[[Message], Payload | None]) -> None:
        """Run ``handler`` on a request and reply with its result; an exception becomes an error reply.

        An :class:`~zmeshlib.ApplicationError` keeps its retriable flag; any
        other MeshError its status; anything else is INTERNAL (and logged).
        """
        try:
            result = handler(msg)
        except Exception as e:
            self.reply_exception(msg, e)
            return
        msg.reply(b"" if result is None else result)

    def reply_exception(self, msg: Message, error: Exception) -> None:
        """Answer ``msg`` with the status an exception stands for (never a silent hang)."""
        if isinstance(error, RemoteError):
            msg.reply_error(error.status, str(error), retriable=getattr(error, "retriable", False))
        else:
            log.error("handler for %r raised", msg.method, exc_info=error)
            msg.reply_error(StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    def serve(
        self,
        handler: Callable[[Message], Payload | None],
        *,
        max_requests: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Answer requests with ``handler`` until ``stop()`` is true or ``max_requests`` were served."""
        served = 0
        while (max_requests is None or served < max_requests) and not (stop and stop()):
            try:
                msg = self._receive(REFRESH_INTERVAL * 5, self._judge)
            except Timeout:
                continue
            self.handle(msg, handler)
            served += 1
        return served


def _bind_retrying(sock: zmq.Socket, address: str, attempts: int = 50) -> None:
    """Bind an address just released by a closed socket (the port may linger a moment)."""
    for i in range(attempts):
        try:
            sock.bind(address)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or i == attempts - 1:
                raise
            time.sleep(0.01)


SYNC_CLASSES: dict[SocketKind, type[MeshSocket]] = {
    SocketKind.PUB: PubSocket,
    SocketKind.SUB: SubSocket,
    SocketKind.REQ: ReqSocket,
    SocketKind.REP: RepSocket,
    SocketKind.PUSH: PushSocket,
    SocketKind.PULL: PullSocket,
}

__all__ = [
    "SYNC_CLASSES",
    "MeshSocket",
    "PubSocket",
    "PullSocket",
    "PushSocket",
    "RepSocket",
    "ReqSocket",
    "SubSocket",
    "Wait",
    "drive",
]
