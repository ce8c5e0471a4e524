"""What every mesh socket shares: lifecycle, options, addresses, upstreams (receiving is
``receiving.py``).

Rules this module keeps:

* A mesh socket is an engine shared by both flavours. Every operation that
  may wait is a generator that yields a :class:`~zmeshlib.sockets.drivers.Wait`
  and is resumed with what happened; the socket's *driver* (sync or asyncio,
  ``sockets/drivers.py``) does the waiting. The kinds' facades
  (``pubsub.py``, ``client.py``, ``server.py``, ``pipeline.py``) are thin: a sync method
  runs an operation with the sync driver, its asyncio twin awaits it.
* One thread (or one event loop) uses a socket, as with a zmq socket; other
  threads may only close it. Only the thread inside an operation touches
  the underlying libzmq sockets, so :meth:`MeshSocket.close` from another
  thread asks that thread to close them (it wakes within one
  ``REFRESH_INTERVAL``) and waits for it: closing a libzmq socket under a
  thread that is using it is what aborts a process in libzmq.
* After ``close()`` every operation raises :class:`~zmeshlib.Closed`; a
  blocked one ends with it (``serve()`` returns).
* Each upstream endpoint has its own underlying socket, connected with the
  server key from its verified card, so the peer of whatever arrives on it
  is that card's identity; a bound socket learns the peer from the User-Id
  its handshake set. Upstreams follow the Mesh's :class:`Directory`: a
  socket re-resolves when its generation moves, and never reads the store.
* Options a pyzmq user sets (``setsockopt``, ``sndhwm = 0``...) apply to every
  underlying socket, present and future; options the mesh must own (CURVE,
  ZAP, routing ids, XPUB_MANUAL...) are refused with the reason.
* While waiting, a socket wakes at least every ``REFRESH_INTERVAL`` seconds for
  housekeeping (policy changes, handshake failures, a publisher's
  subscriptions), and never spins: with nothing to poll it waits on an event.

The lifecycle protocol, without a lock on the hot path (the GIL orders these
plain attribute writes): an operation increments ``_busy`` and then reads
``_closing``; ``close()`` sets ``_closing`` and then reads ``_busy``. At least
one of the two sees the other, so either the operation raises ``Closed``
before touching libzmq, or ``close()`` sees it busy and leaves the closing
to it (``_leave``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs
import zmq
from zmq.utils.monitor import recv_monitor_message

from .._exceptions import Closed, IdentityError, MeshError
from .._models import ANONYMOUS, Peer, SocketKind
from ..identity.card import Card
from ..policy.model import Subset
from . import options as _options
from .addresses import advertised_address, check_address
from .core import Drops, PeerBook
from .drivers import REFRESH_INTERVAL, WAIT_MS
from .handshake import ZAP_DOMAIN
from .readiness import Readiness
from .receiving import _NOBLOCK, Receiving

if TYPE_CHECKING:
    from .mesh import Mesh

log = logging.getLogger("zmeshlib.sockets")

_FAILURE_NAMES = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "no-detail",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "protocol",
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "auth",
}
_HANDSHAKE_FAILURES = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_DOMAIN_IDS = itertools.count(1)
GC_LINGER_MS = 1000  # how long an underlying socket dropped without close() may flush
CLOSE_WAIT = 2.0  # seconds close() waits for the thread inside an operation to finish it

#: Underlying libzmq socket types per mesh kind: (bound, connected); None = not allowed.
UNDERLYING: dict[SocketKind, tuple[int | None, int | None]] = {
    SocketKind.PUB: (zmq.XPUB, zmq.XPUB),
    SocketKind.SUB: (zmq.SUB, zmq.SUB),
    SocketKind.REQ: (None, zmq.DEALER),
    SocketKind.REP: (zmq.ROUTER, None),
    SocketKind.PUSH: (zmq.PUSH, zmq.PUSH),
    SocketKind.PULL: (zmq.PULL, zmq.PULL),
}
#: What ``sock.type`` reports: the zmq constant of the pattern the mesh socket plays.
ZMQ_TYPES: dict[SocketKind, int] = {
    SocketKind.PUB: zmq.PUB,
    SocketKind.SUB: zmq.SUB,
    SocketKind.REQ: zmq.REQ,
    SocketKind.REP: zmq.REP,
    SocketKind.PUSH: zmq.PUSH,
    SocketKind.PULL: zmq.PULL,
}


@attrs.define(eq=False)
class Upstream:
    """One connected endpoint: its own underlying socket and the verified card it was dialled with."""

    address: str
    sock: zmq.Socket
    card: Card | None
    peer: Peer
    #: When a request last went to it (``pool.idle_timeout``), and whether its connection
    #: is closed for idleness (its next request reconnects it).
    last_used: float = attrs.field(factory=time.monotonic)
    idle: bool = False
    #: Its card left the registry while requests were in flight on it: no new request goes
    #: to it, and it is dropped once they are answered or given up (a server's clean exit
    #: withdraws its card before its last replies have all arrived).
    draining: bool = False

    @property
    def key(self) -> bytes | None:
        return self.card.curve_key if self.card else None


class MeshSocket(Receiving, _options.OptionProperties):
    """The engine every mesh socket kind shares (module docstring)."""

    kind: SocketKind
    core: Any  # the kind's sans-I/O core (sockets/core.py): exactly one per socket
    #: After a message, read on without polling (throughput: SUB, PULL), or poll first
    #: (latency: REP, whose next request is rarely queued; a failed read costs more than a poll).
    burst: bool = True
    #: How long close() lets queued messages go when neither ``close(linger=)`` nor the
    #: ``linger`` option says: 0, drop them (a gone peer never holds close() up).
    close_linger_ms: int = 0

    def __init__(self, mesh: Mesh, kind: SocketKind, driver: Any) -> None:
        self._mesh = mesh
        self.kind = kind
        self._driver = driver
        #: The sync driver waits on one socket with a blocking read under RCVTIMEO
        #: (``WAIT_MS``); zmq.asyncio fails a poll of a socket with RCVTIMEO set.
        self._blocking = driver.blocking_reads
        self.service = ""
        self.drops = Drops()
        self._peers = PeerBook()
        self._server: zmq.Socket | None = None
        self._bound: list[str] = []  # what LAST_ENDPOINT said for each bind
        self._advertised: list[str] = []  # what the card lists for each bind, same order
        self._upstreams: dict[str, Upstream] = {}
        self._targets: list[tuple[str, str]] = []  # ("service", name) or ("address", addr)
        #: Services the socket connects for itself, after the user's targets (a REQ's mirrors),
        #: and the addresses only they resolved to, by service.
        self._also: frozenset[str] = frozenset()
        self._subsets: dict[str, str] = {}  # service -> the subset connect(subset=) keeps to
        self._also_only: dict[str, str] = {}
        self._shunned: dict[str, float] = {}  # address -> until (monotonic): not connected
        self._generation = -1
        self._policy_seen: object = None
        self._next_refresh = 0.0
        self.counts: Counter[str] = Counter()
        # every underlying socket we read from -> its peer (None: the bound socket, peer by User-Id)
        self._sources: dict[zmq.Socket, Peer | None] = {}
        self._ready: tuple[zmq.Socket, ...] = ()  # sockets the last wait said were readable
        self._poller_key: tuple[zmq.Socket, ...] = ()
        self._poller = zmq.Poller()
        self._monitor: zmq.Socket | None = None  # handshake failures libzmq decides before ZAP
        self._options: dict[int, Any] = {}  # pyzmq options the user set, for every socket
        self._rcvtimeo = -1  # ms: the default timeout of recv(); -1 = wait for ever
        self._sndtimeo = -1
        self._readiness: Readiness | None = None  # made by the first fileno()
        # its own ZAP domain, so the handshake authority can refuse a peer at this socket only
        self._zap_domain = b"%s/%d" % (ZAP_DOMAIN, next(_DOMAIN_IDS))
        # lifecycle (module docstring)
        self._busy = 0
        self._owner = 0
        self._closing = False
        self._closed = False
        self._close_linger: int | None = None
        self._close_lock = threading.Lock()
        self._done = threading.Event()
        #: Set when the registry view moves or the socket closes: what a wait with no socket
        #: to poll waits on, instead of spinning.
        self._idle = threading.Event()
        mesh._directory.add_waiter(self._idle.set)

    # -- public surface ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    @property
    def type(self) -> int:
        """The zmq socket type this mesh socket plays (``zmq.SUB``...), as ``zmq.Socket.type``."""
        return ZMQ_TYPES[self.kind]

    @property
    def endpoints(self) -> list[str]:
        """The addresses peers dial for this socket's binds (as its card lists them)."""
        return list(self._advertised)

    @property
    def upstreams(self) -> list[str]:
        """The addresses of the endpoints this socket dials now (one closed for idleness
        included: its next request reconnects it)."""
        return list(self._upstreams)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: drops by reason (``drop.<reason>``) and per-kind counts."""
        out = {f"drop.{k}": v for k, v in self.drops.counts.items()}
        out.update(self.counts)
        out.update(getattr(self.core, "counts", {}))
        return out

    def bind(self, address: str, *, service: str = "", advertise: str | None = None) -> str:
        """Bind, and add the endpoint to this workload's card; returns the address peers dial.

        A wildcard host (``tcp://*:0``, ``tcp://0.0.0.0:0``) is advertised as the Mesh's
        ``advertise_host`` (this host's address by default); ``advertise=`` names the
        address for the card explicitly (behind NAT, say).
        """
        with self._operation():
            server_type = UNDERLYING[self.kind][0]
            if server_type is None:
                raise MeshError(
                    f"a {self.kind.name} socket cannot bind: connect it (service= or address)"
                )
            check_address(address, self._mesh.mode, "bind")
            if advertise is not None:
                check_address(advertise, self._mesh.mode, "advertise")
            self._set_service(service)
            if self._server is None:
                self._server = self._new_socket(server_type, server=True)
                self._sources[self._server] = None
                self._watch(self._server)
                self._ready = ()
            try:
                self._server.bind(address)
            except zmq.ZMQError as e:
                raise MeshError(f"cannot bind {address!r}: {e.strerror}") from e
            resolved = self._server.getsockopt_string(zmq.LAST_ENDPOINT)
            public = advertise or advertised_address(resolved, self._mesh.advertise_host)
            self._bound.append(resolved)
            self._advertised.append(public)
            self._mesh._add_endpoint(public, self.kind.name, self.service)
            return public

    def unbind(self, address: str) -> None:
        """Stop listening on ``address`` (as bound or as advertised) and drop it from the card."""
        with self._operation():
            found = [
                i
                for i, pair in enumerate(zip(self._bound, self._advertised, strict=True))
                if address in pair
            ]
            if not found:
                raise MeshError(f"{address!r} is not bound by this socket (bound: {self._bound})")
            i = found[0]
            bound, public = self._bound[i], self._advertised[i]
            if self._server is not None:
                try:
                    self._server.unbind(bound)
                except zmq.ZMQError as e:
                    raise MeshError(f"cannot unbind {bound!r}: {e.strerror}") from e
            del self._bound[i], self._advertised[i]
            self._mesh._remove_endpoints([public])

    def connect(
        self,
        address: str | None = None,
        *,
        service: str | None = None,
        subset: str | None = None,
    ) -> None:
        """Connect to a service's verified endpoints (``service=``) or to one address.

        Endpoints that appear later in the registry are connected as they appear, and
        vanished ones are dropped. ``subset=`` (with ``service=``) keeps to the servers of
        that subset (``services.<service>.subsets`` of the policy in force, by card labels).
        """
        with self._operation():
            if UNDERLYING[self.kind][1] is None:
                raise MeshError(f"a {self.kind.name} socket cannot connect: bind it")
            if (address is None) == (service is None):
                raise MeshError("connect() takes an address or service=..., exactly one of them")
            if subset is not None:
                self._check_subset(service, subset)
            if service is not None:
                if not isinstance(service, str) or not service:
                    raise MeshError(f"service= takes a service name, not {service!r}")
                self._set_service(service)
                target = ("service", service)
                if subset is not None:
                    self._subsets[service] = subset
                else:
                    self._subsets.pop(service, None)
            else:
                check_address(str(address), self._mesh.mode, "connect")
                target = ("address", str(address))
            if target not in self._targets:
                self._targets.append(target)
            self._refresh(force=True)
            if service is not None and not self._upstreams:
                self._explain_empty(service)
            elif address is not None and address not in self._upstreams:
                log.warning(
                    "%s connect(%r): not connected yet: %s",
                    self.kind.name,
                    address,
                    self._mesh._directory.why_none("address", str(address)),
                )

    def _check_subset(self, service: str | None, subset: str) -> None:
        if self.kind is SocketKind.REQ:
            raise MeshError(
                "a REQ socket chooses subsets per request from traffic.<service>.split and "
                "routes in the policy: connect(service=...) without subset="
            )
        if service is None:
            raise MeshError("subset= goes with service=: connect(service=..., subset=...)")
        spec = self._mesh.policy.services.get(service)
        if spec is None or subset not in spec.subsets:
            known = sorted(spec.subsets) if spec is not None else []
            raise MeshError(
                f"subset {subset!r} of service {service!r} is not defined in the policy in "
                f"force (services.{service}.subsets: {known or 'none'})"
            )

    def disconnect(self, address: str | None = None, *, service: str | None = None) -> None:
        """Undo a :meth:`connect` (of that address, or every endpoint of that service)."""
        with self._operation():
            target = ("service", service) if service is not None else ("address", str(address))
            if target not in self._targets:
                raise MeshError(f"this socket is not connected to {target[0]} {target[1]!r}")
            self._targets.remove(target)
            self._refresh(force=True)

    def close(self, linger: int | None = None) -> None:
        """Close every underlying socket; ``linger`` ms for queued messages (default: the
        ``linger`` option if set, else :attr:`close_linger_ms`). Safe from any thread, idempotent."""
        with self._close_lock:
            if self._closed or self._closing:
                wait = not self._closed
            else:
                wait = False
                self._closing = True
                self._close_linger = linger
        if wait:  # another thread is closing it: be done when it is
            self._done.wait(CLOSE_WAIT)
            return
        if self._busy and self._owner != threading.get_ident():
            # another thread is inside an operation: it closes the sockets (_leave)
            self._idle.set()
            if self._readiness is not None:
                self._readiness.poke()
            if self._done.wait(CLOSE_WAIT):
                return
            log.warning(
                "%s socket: the thread using it did not end its operation within %ss; "
                "closing it from here",
                self.kind.name,
                CLOSE_WAIT,
            )
        self._finish_close()

    def __enter__(self) -> MeshSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def underlying(self) -> list[zmq.Socket]:
        """The libzmq sockets behind this mesh socket (for monitoring; do not send on them)."""
        socks = [self._server] if self._server is not None else []
        return socks + [u.sock for u in self._upstreams.values()]

    def fileno(self) -> int:
        """A file descriptor that is readable when a message may be received: register the
        socket in a ``zmq.Poller`` (or ``zmq.asyncio.Poller``) beside plain zmq sockets.

        As with :meth:`poll`, a wake-up may find nothing deliverable (a message dropped as
        invalid, or the registry moved); read with ``flags=zmq.NOBLOCK``. Linux only (epoll).
        """
        if self.kind in (SocketKind.PUB, SocketKind.PUSH):
            raise MeshError(
                f"a {self.kind.name} socket receives nothing: register the sockets that receive"
            )
        with self._operation():
            if self._readiness is None:
                self._readiness = Readiness()
                self._mesh._directory.add_waiter(self._readiness.poke)
            self._update_readiness()
            return self._readiness.fileno()

    # -- lifecycle internals --------------------------------------------------------------

    def _closed_error(self) -> Closed:
        mesh = " (its Mesh was closed)" if self._mesh.closed else ""
        return Closed(f"this {self.kind.name} socket is closed{mesh}")

    def _enter(self) -> None:
        self._busy += 1
        self._owner = threading.get_ident()
        if self._closing:
            self._leave()
            raise self._closed_error()

    def _leave(self) -> None:
        self._busy -= 1
        if self._closing and not self._busy:
            self._finish_close()

    def _operation(self) -> _Operation:
        return _Operation(self)

    def _finish_close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        linger = self._close_linger
        if linger is None:
            linger = self._options.get(zmq.LINGER, self.close_linger_ms)
        for up in self._upstreams.values():
            up.sock.close(linger=linger)
        self._upstreams.clear()
        if self._server is not None:
            self._server.close(linger=linger)
            self._server = None
        self._sources.clear()
        self._ready = ()
        self._unwatch()
        self._mesh._directory.remove_waiter(self._idle.set)
        if self._readiness is not None:
            self._mesh._directory.remove_waiter(self._readiness.poke)
            self._readiness.close()
        self._mesh._forget_socket(self, self._advertised)
        self._idle.set()
        self._done.set()

    # -- options -----------------------------------------------------------------------

    def setsockopt(self, option: int, value: Any) -> None:
        """Set a libzmq option on every underlying socket, present and future (pyzmq's call)."""
        with self._operation():
            _options.set_option(self, option, value)

    def getsockopt(self, option: int) -> Any:
        with self._operation():
            return _options.get_option(self, option)

    set = setsockopt
    get = getsockopt

    def setsockopt_string(self, option: int, value: str, encoding: str = "utf-8") -> None:
        self.setsockopt(option, value.encode(encoding))

    def getsockopt_string(self, option: int, encoding: str = "utf-8") -> str:
        value = self.getsockopt(option)
        return value.decode(encoding) if isinstance(value, bytes) else str(value)

    def _apply_options(self, sock: zmq.Socket) -> None:
        for option, value in self._options.items():
            sock.setsockopt(option, value)

    # -- internals: sockets ------------------------------------------------------------

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
        secure = mesh.mode != "DISABLE"  # DISABLE is plain ZeroMQ: no CURVE either way
        if server:
            sock.zap_domain = self._zap_domain
            if secure:
                sock.curve_server = True
                sock.curve_secretkey = mesh._curve_secret
                sock.curve_publickey = mesh.curve_public
        elif secure:
            if server_key is None:
                raise IdentityError("no server key to connect with", rule="no-card")
            sock.curve_serverkey = server_key
            sock.curve_secretkey = mesh._curve_secret
            sock.curve_publickey = mesh.curve_public
        if self._blocking:
            sock.setsockopt(zmq.RCVTIMEO, WAIT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        mesh._limit(sock)
        self._configure(sock, server)
        self._apply_options(sock)
        return sock

    def _configure(self, sock: zmq.Socket, server: bool) -> None:
        """Kind-specific socket options (XPUB_MANUAL, subscriptions...)."""

    # -- internals: upstream resolution ------------------------------------------------

    def _wanted(self) -> dict[str, Card | None]:
        """The endpoints the connect targets resolve to now: address -> verified card."""
        directory = self._mesh._directory
        want_kind = self.kind.counterpart.name
        disabled = self._mesh.mode == "DISABLE"
        wanted: dict[str, Card | None] = {}
        if self._shunned:
            now = time.monotonic()
            self._shunned = {a: t for a, t in self._shunned.items() if t > now}
        for how, name in self._targets:
            if how == "service":
                chosen = self._subset_of(name) if name in self._subsets else None
                if name in self._subsets and chosen is None:
                    continue  # its subset is no longer defined: none of its servers
                for card in directory.service(name, want_kind):
                    if chosen is not None and not chosen.selects(card.labels):
                        continue
                    for ep in card.endpoints_for(name, want_kind):
                        old = wanted.get(ep.address)
                        if old is None or card.not_before > old.not_before:
                            wanted[ep.address] = card
            else:
                found = directory.address(name)
                if found is not None or disabled:
                    wanted[name] = found
        also_only: dict[str, str] = {}
        for name in sorted(self._also):
            for card in directory.service(name, want_kind):
                for ep in card.endpoints_for(name, want_kind):
                    if ep.address in wanted and ep.address not in also_only:
                        continue  # one of the user's targets already
                    old = wanted.get(ep.address)
                    if old is None or card.not_before > old.not_before:
                        wanted[ep.address] = card
                        also_only[ep.address] = name
        for address in self._shunned:
            wanted.pop(address, None)
            also_only.pop(address, None)
        self._also_only = also_only
        return wanted

    def _subset_of(self, service: str) -> Subset | None:
        """The subset ``connect(subset=)`` keeps ``service`` to, as the policy in force
        defines it; None (and a warning) when the policy no longer defines it."""
        name = self._subsets[service]
        spec = self._mesh.policy.services.get(service)
        found = spec.subsets.get(name) if spec is not None else None
        if found is None:
            self._mesh._log_limited(
                f"subset-gone-{service}-{name}",
                "subset %r of service %r is no longer defined in the policy: %s connects to "
                "none of its servers",
                name,
                service,
                self.kind.name,
            )
        return found

    def _shun(self, address: str, seconds: float) -> None:
        """Drop the upstream at ``address`` and do not connect it again for ``seconds``."""
        self._shunned[address] = time.monotonic() + seconds
        up = self._upstreams.get(address)
        if up is not None:
            self._drop_upstream(up)
            self._upstreams_changed()

    def _refresh(self, *, force: bool = False) -> None:
        """Housekeeping, and re-resolving the connect targets when the registry view or the
        policy moved; at most every ``REFRESH_INTERVAL`` unless forced."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_INTERVAL
        if self._monitor is not None:
            self._count_handshake_failures()
        self._housekeeping()
        generation = self._mesh._directory.generation
        policy = self._mesh.policy
        draining = any(up.draining for up in self._upstreams.values())
        if not (
            force or draining or generation != self._generation or policy is not self._policy_seen
        ):
            return
        self._generation = generation
        self._policy_seen = policy
        wanted = self._wanted() if self._targets else {}
        changed = False
        for address in list(self._upstreams):
            up = self._upstreams[address]
            card = wanted.get(address, "gone")
            if card == "gone" and self._in_flight_to(address):
                if not up.draining:
                    up.draining = True
                    changed = True
                    log.info("draining %s: gone, with requests in flight", address)
                continue
            if up.draining and card != "gone":
                up.draining = False  # back in the registry before it drained
                changed = True
            if card == "gone" or (isinstance(card, Card) and card.curve_key != up.key):
                log.info("disconnecting %s (%s)", address, "gone" if card == "gone" else "new key")
                self._drop_upstream(up)
                changed = True
        client_type = UNDERLYING[self.kind][1]
        for address, card in wanted.items():
            if address in self._upstreams:
                if card is not None:
                    self._upstreams[address].card = card
                continue
            assert client_type is not None
            sock = self._new_socket(
                client_type, server=False, server_key=card.curve_key if card else None
            )
            sock.connect(address)
            up = Upstream(address, sock, card, card.peer if card else ANONYMOUS)
            self._upstreams[address] = up
            self._sources[sock] = up.peer
            changed = True
            log.info("connected %s to %s (%s)", self.kind.name, address, up.peer)
        if changed:
            self._upstreams_changed()

    def _in_flight_to(self, address: str) -> bool:
        """Whether requests await replies from ``address`` (a client's; others send none)."""
        return False

    def _drop_upstream(self, up: Upstream) -> None:
        up.sock.close(linger=0)
        del self._upstreams[up.address]
        self._sources.pop(up.sock, None)
        self._ready = ()

    def _upstreams_changed(self) -> None:
        """Hook: the set of upstream endpoints changed (the REQ socket's endpoint set follows)."""
        if self._readiness is not None:
            self._readiness.track(self._sources)

    def _explain_empty(self, service: str) -> None:
        kind = self.kind.counterpart.name
        if self._mesh._directory.service(service, kind):
            return
        misnamed = self._mesh.registry.misnamed(service, kind=kind)
        if misnamed:
            raise IdentityError(
                f"refusing to connect to service {service!r}: "
                + self._mesh._directory.why_none("service", service, kind),
                rule="secure-naming",
            )

    def _why_none(self) -> str:
        """Why this socket has no upstream: each target's explanation."""
        parts = []
        for how, name in self._targets:
            kind = self.kind.counterpart.name if how == "service" else ""
            parts.append(self._mesh._directory.why_none(how, name, kind))
        return "; ".join(parts) or "it is connected to nothing: call connect()"

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
            reason = _FAILURE_NAMES.get(int(event["event"]), "other")
            self.counts[f"handshake_failed.{reason}"] += 1
            self._mesh._log_limited(
                "handshake",
                "handshake on %s failed (%s, code %s): a peer without a valid CURVE handshake",
                str(event.get("endpoint", b""), errors="replace"),
                reason,
                event["value"],
            )

    def _housekeeping(self) -> None:
        """Hook run at most every REFRESH_INTERVAL from the socket's own thread."""

    def _nudge(self) -> None:
        """Wake the other operations waiting on this socket (asyncio: several coroutines may
        wait on one socket; a message one of them read may be another's)."""
        nudge = self.__dict__.get("_nudge_event")
        if nudge is not None:
            nudge.set()

    def _wake(self) -> None:
        """Wake a wait of this socket that has nothing to poll (a slot freed, say): the sync
        one sleeps on the idle event, an asyncio one on the nudge (from its loop's thread)."""
        self._idle.set()
        self._nudge()


class _Operation:
    """``with sock._operation():`` for the operations that do not wait (bind, options...)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: MeshSocket) -> None:
        self._sock = sock

    def __enter__(self) -> None:
        self._sock._enter()

    def __exit__(self, *exc: object) -> None:
        self._sock._leave()
