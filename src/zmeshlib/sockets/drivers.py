"""The two ways a mesh socket's operation waits: blocking (sync) and awaited (asyncio).

Rules this module keeps:

* An operation is a generator (``Op``) that yields a :class:`Wait` (which
  underlying sockets, which events, how long) and is resumed with the
  :data:`Events` that happened. A driver runs it to its return value and
  does nothing else: no decision is taken here, so the two flavours cannot
  drift apart.
* Waiting costs no CPU. A wait on nothing (a client whose server has not
  appeared yet) sleeps on the socket's idle event, which the registry view
  and ``close()`` set; it never polls an empty poller (which returns at once).
* Every wait is at most ``REFRESH_INTERVAL`` long (the operation asks for no
  more), and after each one the driver checks whether the socket is being
  closed: a blocked operation ends with :class:`~zmeshlib.Closed` within one
  interval of ``close()`` from another thread.
* The operation's ``finally`` runs however it ends (the driver closes the
  generator), so what it recorded (a pending request id) is forgotten.

The sync driver's wait to read one socket is a blocking receive under
``RCVTIMEO`` rather than a poll and then a read, which cost a client 10-15 us
more CPU per request (docs/performance.md); the message read comes back as
that socket's value in :data:`Events`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import zmq
import zmq.asyncio

from .frames import Received, recv_message

if TYPE_CHECKING:
    from .base import MeshSocket

REFRESH_INTERVAL = 0.1  # seconds between housekeeping (registry view, policy) while waiting
WAIT_MS = int(REFRESH_INTERVAL * 1000)  # every sync underlying socket's RCVTIMEO: the longest wait
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


@attrs.define(slots=True)
class Wait:
    """What an operation waits for: events on some underlying sockets, for at most ``timeout`` s.

    ``peek``: report events only, never read (``poll()``). ``writable``: more sockets,
    watched for POLLOUT (a request waiting for its connection to take it).
    """

    sockets: tuple[zmq.Socket, ...]
    events: int
    timeout: float
    poller: zmq.Poller | None = None  # a prepared poller for the sync driver (cached per set)
    peek: bool = False
    writable: tuple[zmq.Socket, ...] = ()


#: What a wait found, by socket: its poll events, or (the sync driver, waiting to read one
#: socket) the message it already received from it.
Events = Mapping[zmq.Socket, "int | Received"]
Op = Generator[Wait, Events, Any]
#: An operation advanced part way: (op, the wait it stopped at or None, its result if it ended).
Started = tuple[Op, "Wait | None", Any]


def sync_wait(wait: Wait, idle: Any) -> Events:
    """One wait of the sync driver (module docstring); ``idle`` is a threading.Event."""
    ms = int(wait.timeout * 1000)
    sockets = wait.sockets
    if not sockets and not wait.writable:
        if idle.wait(wait.timeout):
            idle.clear()
        return {}
    if wait.events == _POLLIN and len(sockets) == 1 and not (wait.peek or wait.writable):
        sock = sockets[0]
        if ms != WAIT_MS:  # the last wait before a deadline
            sock.setsockopt(zmq.RCVTIMEO, ms)
        try:
            got = recv_message(sock, 0, True)
        finally:
            if ms != WAIT_MS:
                sock.setsockopt(zmq.RCVTIMEO, WAIT_MS)
        return {} if got is None else {sock: got}
    poller = wait.poller
    if poller is None or wait.writable:
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, wait.events)
        for sock in wait.writable:
            poller.register(sock, _POLLOUT | (wait.events if sock in sockets else 0))
    return dict(poller.poll(ms))


class SyncDriver:
    """Runs operations in the calling thread, blocking between steps."""

    blocking_reads = True

    def run(self, sock: MeshSocket, op: Op, first: Wait | None = None) -> Any:
        """Run ``op`` to its result; ``first``: the wait it stopped at (:meth:`advance`)."""
        return self._drive(sock, op, first, None)[1]

    def advance(self, sock: MeshSocket, op: Op, until: Callable[[Wait], bool]) -> Started:
        """Run ``op`` until it yields a wait that ``until`` accepts (pyzmq's REQ ``send()``
        returns once the request is handed over): ``(op, that wait, None)``, or
        ``(op, None, result)`` when it finished first. :meth:`run` resumes it."""
        wait, result = self._drive(sock, op, None, until)
        return op, wait, result

    def _drive(
        self, sock: MeshSocket, op: Op, first: Wait | None, until: Callable[[Wait], bool] | None
    ) -> tuple[Wait | None, Any]:
        """(the wait ``until`` accepted, None), or (None, the result); the one loop of both."""
        sock._enter()
        paused = False
        try:
            wait = next(op) if first is None else first
            while until is None or not until(wait):
                events = sync_wait(wait, sock._idle)
                if sock._closing:
                    raise sock._closed_error()
                wait = op.send(events)
            paused = True
            return wait, None
        except StopIteration as stop:
            return None, stop.value
        except zmq.ZMQError as e:
            if sock._closing or sock._closed:
                raise sock._closed_error() from e
            raise
        finally:
            if not paused:
                op.close()
            sock._leave()

    def then(self, value: Any, fn: Callable[[Any], Any]) -> Any:
        """``fn`` of an operation's result (a coroutine of it, in the asyncio driver)."""
        return fn(value)


class AsyncDriver:
    """Runs operations as coroutines: each wait is an awaited ``zmq.asyncio`` poll.

    The underlying sockets stay synchronous (asyncio only waits on them from outside),
    so both flavours share every operation; a shadow ``zmq.asyncio.Socket`` per
    underlying socket is what the awaited poller watches.
    """

    blocking_reads = False

    async def run(self, sock: MeshSocket, op: Op, first: Wait | None = None) -> Any:
        return (await self._drive(sock, op, first, None))[1]

    async def advance(self, sock: MeshSocket, op: Op, until: Callable[[Wait], bool]) -> Started:
        """As :meth:`SyncDriver.advance`, awaited."""
        wait, result = await self._drive(sock, op, None, until)
        return op, wait, result

    async def _drive(
        self, sock: MeshSocket, op: Op, first: Wait | None, until: Callable[[Wait], bool] | None
    ) -> tuple[Wait | None, Any]:
        """As :meth:`SyncDriver._drive`, each wait awaited."""
        sock._enter()
        paused = False
        try:
            wait = next(op) if first is None else first
            while until is None or not until(wait):
                events = await _async_wait(sock, wait)
                if sock._closing:
                    raise sock._closed_error()
                wait = op.send(events)
            paused = True
            return wait, None
        except StopIteration as stop:
            return None, stop.value
        except zmq.ZMQError as e:
            if sock._closing or sock._closed:
                raise sock._closed_error() from e
            raise
        finally:
            if not paused:
                op.close()
            sock._leave()

    def then(self, value: Any, fn: Callable[[Any], Any]) -> Any:
        async def mapped() -> Any:
            return fn(await value)

        return mapped()


def _nudge_event(sock: MeshSocket) -> asyncio.Event:
    """What a waiting coroutine of ``sock`` also wakes on (``sock._wake()``, in its loop)."""
    nudge = sock.__dict__.get("_nudge_event")
    if nudge is None:
        nudge = sock.__dict__["_nudge_event"] = asyncio.Event()
    return nudge


async def _async_wait(sock: MeshSocket, wait: Wait) -> Events:
    if not wait.sockets and not wait.writable:  # nothing to poll: until nudged, or the timeout
        nudge = _nudge_event(sock)
        try:
            await asyncio.wait_for(nudge.wait(), wait.timeout)
            nudge.clear()
        except asyncio.TimeoutError:
            pass
        return {}
    wrappers = sock.__dict__.setdefault("_async_wrappers", {})
    poller = zmq.asyncio.Poller()
    wrapped = {}
    for s in (*wait.sockets, *wait.writable):
        w = wrappers.get(s)
        if w is None:
            for old in [k for k in wrappers if k.closed]:
                del wrappers[old]
            w = wrappers[s] = zmq.asyncio.Socket.from_socket(s)
        if w in wrapped:
            poller.register(w, wait.events | _POLLOUT)
            continue
        wrapped[w] = s
        poller.register(w, wait.events if s in wait.sockets else _POLLOUT)
    polled = asyncio.ensure_future(poller.poll(int(wait.timeout * 1000)))
    if sock._busy > 1:  # others wait on these sockets too: a message one reads may be ours
        nudge = _nudge_event(sock)
        nudged = asyncio.ensure_future(nudge.wait())
        done, _ = await asyncio.wait((polled, nudged), return_when=asyncio.FIRST_COMPLETED)
        if nudged in done:
            nudge.clear()
        else:
            nudged.cancel()
        if polled not in done:
            polled.cancel()
            return {}
    found = await polled
    return {wrapped[w]: ev for w, ev in found if w in wrapped}


SYNC = SyncDriver()
ASYNC = AsyncDriver()
