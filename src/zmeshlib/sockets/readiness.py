"""A mesh socket as one pollable file descriptor, for ``zmq.Poller`` and event loops.

Rules this module keeps:

* ``fileno()`` is an epoll descriptor. It holds the ``ZMQ_FD`` of every
  underlying socket (readable when libzmq has news for that socket: a
  message may have arrived) and one pipe of our own, which the mesh socket
  keeps readable while it knows a message is queued (after a read that left
  more behind) and pokes when the registry view moves (an upstream to
  connect). A poller that watches the descriptor wakes in either case.
* ``ZMQ_FD`` is edge-triggered (libzmq's documented rule: readable means
  "check ``ZMQ_EVENTS``", not "a message is there"), so the pipe carries the
  level: the socket updates it after every receive (``mark``). A wake-up may
  therefore find nothing to deliver; read with ``NOBLOCK``.
* Linux only: epoll is what lets one descriptor stand for several sockets.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterable

import zmq

from .._exceptions import MeshError


class Readiness:
    """The epoll descriptor of one mesh socket (module docstring). Thread-safe ``poke``."""

    def __init__(self) -> None:
        if not hasattr(select, "epoll"):
            raise MeshError(
                "registering a mesh socket in a poller needs Linux epoll; elsewhere, use "
                "sock.poll(timeout) or the asyncio flavour"
            )
        self._epoll = select.epoll()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._epoll.register(self._r, select.EPOLLIN)
        self._tracked: dict[zmq.Socket, int] = {}
        self._marked = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    def track(self, sockets: Iterable[zmq.Socket]) -> None:
        """Watch exactly these underlying sockets (called from the socket's own thread)."""
        wanted = {s for s in sockets if not s.closed}
        for sock in list(self._tracked):
            if sock not in wanted:
                fd = self._tracked.pop(sock)
                try:
                    self._epoll.unregister(fd)
                except OSError:  # the socket (and its fd) are already gone
                    pass
        for sock in wanted:
            if sock not in self._tracked:
                fd = int(sock.getsockopt(zmq.FD))
                try:
                    self._epoll.register(fd, select.EPOLLIN)
                except FileExistsError:  # a closed socket's number, not yet unregistered
                    self._epoll.modify(fd, select.EPOLLIN)
                self._tracked[sock] = fd

    def mark(self, queued: bool) -> None:
        """Keep the descriptor readable (``queued``) or let it rest."""
        if queued and not self._marked:
            self.poke()
            self._marked = True
        elif not queued:
            self._drain()
            self._marked = False

    def poke(self) -> None:
        """Make a poller of the descriptor wake (from any thread)."""
        try:
            os.write(self._w, b"\0")
        except (BlockingIOError, OSError):  # full (it is readable already) or closed
            pass

    def _drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._tracked.clear()
        self._epoll.close()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
