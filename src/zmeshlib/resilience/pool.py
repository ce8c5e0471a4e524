"""Circuit breaking: how many requests a Mesh has in flight to a service, and how many wait.

Rules this module keeps:

* ``max_requests`` bounds the requests in flight to one service across the
  sockets of a Mesh; ``max_pending`` how many more may wait for a slot. The
  rest fail fast (``RESOURCE_EXHAUSTED``, never sent), rather than queue
  without bound behind a slow service. ``None`` is unlimited.
* Counting only: the shell waits (a condition, or an asyncio future) and
  calls :meth:`Pool.admit_waiting` again, or :meth:`Pool.leave` when its
  deadline passed. Thread-safe.
* ``idle_timeout`` closes a connection that carried no request for that
  long and has none in flight; the endpoint stays in the set, and its next
  request reconnects it (:func:`idle` decides, the socket executes).

==================================  ========================================
state when asked                    ``admit()``
==================================  ========================================
a slot free                         ``GO`` (the slot taken)
no slot, room to wait               ``WAIT`` (a place in the queue taken)
no slot, the queue full             ``FULL``
==================================  ========================================
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Container, Mapping


class Admission(enum.Enum):
    GO = "go"
    WAIT = "wait"
    FULL = "full"


class Pool:
    """The in-flight and waiting counts of one service (module docstring)."""

    def __init__(self, max_requests: int | None, max_pending: int | None) -> None:
        self.max_requests = max_requests
        self.max_pending = max_pending
        self.active = 0
        self.waiting = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def admit(self) -> Admission:
        with self._lock:
            if self.max_requests is None or self.active < self.max_requests:
                self.active += 1
                return Admission.GO
            if self.max_pending is None or self.waiting < self.max_pending:
                self.waiting += 1
                return Admission.WAIT
            self.rejected += 1
            return Admission.FULL

    def admit_waiting(self) -> Admission:
        """For a caller that got ``WAIT``: ``GO`` once a slot is free (it stops waiting)."""
        with self._lock:
            if self.max_requests is None or self.active < self.max_requests:
                self.active += 1
                self.waiting -= 1
                return Admission.GO
            return Admission.WAIT

    def leave(self) -> None:
        """A waiting caller gives up (its deadline passed)."""
        with self._lock:
            self.waiting -= 1

    def release(self) -> None:
        """A request in flight ended: its slot is free."""
        with self._lock:
            self.active -= 1

    def full(self) -> bool:
        """Every slot taken: the next request waits or is refused (an open circuit)."""
        return self.max_requests is not None and self.active >= self.max_requests

    def refusal(self, service: str) -> str:
        """Why ``FULL``, and what to do about it."""
        return (
            f"circuit breaker of service {service!r} open: {self.active} requests in flight "
            f"(traffic.{service}.pool.max_requests = {self.max_requests}) and {self.waiting} "
            f"waiting (pool.max_pending = {self.max_pending}); not sent. Raise those limits, "
            "add replicas, or send less at once"
        )


def idle(last_used: Mapping[str, float], busy: Container[str], now: float,
         timeout: float) -> list[str]:  # fmt: skip
    """The connections to close for ``pool.idle_timeout``: no request for ``timeout``
    seconds and none in flight (Istio's idle timeout: a period with no active request)."""
    return [a for a, t in last_used.items() if now - t >= timeout and a not in busy]
