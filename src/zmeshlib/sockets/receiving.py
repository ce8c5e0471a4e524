"""How a mesh socket receives: waits, draining what a wait found, the sync fast path.

Rules this module keeps (those of :mod:`zmeshlib.sockets.base`, for receiving):

* A receive is an operation (a generator yielding :class:`~zmeshlib.sockets.drivers.Wait`)
  that the socket's driver runs; the sync :func:`receive` makes the operation's first
  wait inline (one read per message) and builds the operation only when that brings
  nothing deliverable: the fast path is the first step of the one state machine.
* What arrives is judged by the kind's core (``judge``): None means dropped, keep waiting.
* The peer of a message is who the handshake said: the card an upstream was dialled
  with, or the User-Id the bound socket's handshake set.
* A wait is capped at ``REFRESH_INTERVAL`` so housekeeping keeps running; with nothing
  to poll it sleeps on an event, never spins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import InvalidArgument, Timeout
from .._models import Delivery, Peer, SocketKind
from .drivers import REFRESH_INTERVAL, Events, Op, Wait
from .frames import recv_message

if TYPE_CHECKING:
    from .base import MeshSocket
    from .core import PeerBook
    from .readiness import Readiness

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: enum arithmetic per frame is measurable


class Receiving:
    """The receiving half of :class:`~zmeshlib.sockets.base.MeshSocket` (whose state it
    reads: declared here for the type checker, set by MeshSocket.__init__)."""

    kind: SocketKind
    burst: bool
    _sources: dict[zmq.Socket, Peer | None]
    _peers: PeerBook
    _server: zmq.Socket | None
    _ready: tuple[zmq.Socket, ...]
    _poller: zmq.Poller
    _poller_key: tuple[zmq.Socket, ...]
    _blocking: bool
    _readiness: Readiness | None

    def _refresh(self, *, force: bool = False) -> None:
        """Housekeeping before each wait: MeshSocket's (re-resolving upstreams, policy)."""
        raise NotImplementedError  # MeshSocket overrides it; Receiving is never used alone

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
        if events != zmq.POLLIN or len(socks) <= 1 or not self._blocking:
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
        """Wait for the next message that ``judge`` turns into a result (None = dropped, keep
        waiting); ``timeout`` 0 reads what is queued and raises ``Timeout`` (a ``zmq.Again``)
        if nothing deliverable is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: Events = dict.fromkeys(self._ready, 0)
        if timeout == 0:  # NOBLOCK: what is queued now, on every socket
            events = dict.fromkeys(self._sources, 0)
        while True:
            self._refresh()
            result = self._drain_ready(events, judge)
            if result is not None:
                if self._readiness is not None:
                    self._update_readiness()
                return result
            if deadline is not None and time.monotonic() >= deadline:
                if self._readiness is not None:
                    self._update_readiness()
                raise Timeout(
                    f"nothing received on this {self.kind.name} socket within {timeout}s; "
                    "raise the timeout or check that a peer is sending",
                    delivery=Delivery.NOT_SENT,
                )
            events = yield self._wait(deadline)

    def _update_readiness(self) -> None:
        """Keep the fileno() level-triggered: readable while a message is known to be queued."""
        readiness = self._readiness
        assert readiness is not None
        readiness.track(self._sources)
        queued = bool(self._ready) or any(
            int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN for sock in self._sources
        )
        readiness.mark(queued)

    def _poll_op(self, timeout: float | None) -> Op:
        """Wait until a message may be received without waiting, or ``timeout`` passed
        (a wait that peeks at the sockets' events and never reads)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._refresh()
            if self._ready:
                return True
            wait = self._wait(deadline)
            events = yield Wait(wait.sockets, wait.events, wait.timeout, peek=True)
            ready = tuple(s for s, ev in events.items() if ev and s in self._sources)
            if ready:
                self._ready = ready
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False


def flags_timeout(timeout: Any, flags: int, default: float | None) -> float | None:
    """The timeout an operation waits: pyzmq's ``NOBLOCK`` flag (also when passed where
    pyzmq has its ``flags`` argument, first) means 0; None means ``default``."""
    if isinstance(timeout, zmq.Flag):
        flags, timeout = int(timeout), None
    if flags & _NOBLOCK:
        return 0.0
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise InvalidArgument(
            f"timeout is a number of seconds >= 0 (or None to wait for ever), not {timeout!r}",
            delivery=Delivery.NOT_SENT,
        )
    return float(timeout)


def receive(
    sock: MeshSocket, timeout: float | None, judge: Callable[[tuple[bytes, ...], Peer], Any]
) -> Any:
    """The sync receive. Its fast path is the operation's first wait, made inline (it runs
    once per message): read a socket the last wait said was readable, or make one blocking
    read, and build the operation only when that brings nothing deliverable."""
    sock._busy += 1
    sock._owner = threading.get_ident()
    try:
        if sock._closing:
            raise sock._closed_error()
        ready = sock._ready
        now = time.monotonic()
        if ready and now < sock._next_refresh:
            taken = sock._take(ready[0])
            if taken is None:
                sock._ready = ready[1:]
            else:
                result = judge(*taken)
                if result is not None:
                    if not sock.burst:
                        sock._ready = ()
                    return result
        elif (
            len(sock._sources) == 1
            and now < sock._next_refresh
            and (timeout is None or timeout >= REFRESH_INTERVAL)
            and sock._readiness is None
        ):
            (source,) = sock._sources  # a bound REP, PULL or SUB, or one upstream
            got = recv_message(source, 0, source is sock._server)  # RCVTIMEO: at most WAIT_MS
            if got is not None:
                # sock._peer(source, got[1]), inlined: this runs once per message
                result = judge(got[0], sock._sources[source] or sock._peers[got[1] or ""])
                if result is not None:
                    if sock.burst:
                        sock._ready = (source,)
                    return result
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - now))
    finally:
        sock._busy -= 1
        if sock._closing and not sock._busy:
            sock._finish_close()
    return sock._driver.run(sock, sock._receive_op(timeout, judge))
