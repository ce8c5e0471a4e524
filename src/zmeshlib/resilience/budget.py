"""The retry budget: retries may add a share of the requests, plus a small floor (Linkerd's).

Rules this module keeps:

* Over the last ``ttl`` seconds, retries (and hedges) stay within
  ``retry_ratio * requests + min_retries_per_second * ttl``. Every logical
  request deposits once; every retry or hedge withdraws once, and only when
  it fits. The first attempt of a request never withdraws.
* A rate, not a share of requests in flight (Envoy's budget): it bounds a
  sequential client too, which has one request in flight at a time.
* The window is ``BUCKETS`` fixed buckets of ``ttl / BUCKETS`` seconds: memory
  is constant, and a count leaves the window when its bucket does (exact at
  bucket granularity: a deposit at ``t`` counts until the bucket holding
  ``t`` is ``BUCKETS`` buckets old).
* Thread-safe: one tracker serves every socket of a Mesh for one service.

===========================  ==============================================
event                        effect
===========================  ==============================================
``deposit(now)``             requests of the current bucket + 1
``try_withdraw(now)``        True and retries + 1 when they still fit
===========================  ==============================================
"""

from __future__ import annotations

import math
import threading

from ..policy.model import RetryBudget

BUCKETS = 10


class RetryBudgetTracker:
    """Linkerd's retry budget over a sliding window of buckets (module docstring)."""

    def __init__(self, spec: RetryBudget) -> None:
        self.spec = spec
        self._width = spec.ttl / BUCKETS
        self._epochs = [-1] * BUCKETS  # which bucket of time each slot holds
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._lock = threading.Lock()
        self.refused = 0  # withdrawals refused so far

    def _slot(self, now: float) -> int:
        """The slot of ``now``'s bucket, emptied when it last held an older bucket."""
        epoch = math.floor(now / self._width)
        slot = epoch % BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _window(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now / self._width) - BUCKETS
        requests = retries = 0
        for slot in range(BUCKETS):
            if self._epochs[slot] > oldest:
                requests += self._requests[slot]
                retries += self._retries[slot]
        return requests, retries

    def deposit(self, now: float) -> None:
        epoch = int(now // self._width)
        slot = epoch % BUCKETS
        with self._lock:
            if self._epochs[slot] != epoch:
                self._slot(now)
            self._requests[slot] += 1

    def try_withdraw(self, now: float) -> bool:
        spec = self.spec
        with self._lock:
            slot = self._slot(now)
            requests, retries = self._window(now)
            allowed = spec.retry_ratio * requests + spec.min_retries_per_second * spec.ttl
            if retries + 1 > allowed:
                self.refused += 1
                return False
            self._retries[slot] += 1
            return True

    def window(self, now: float) -> tuple[int, int]:
        """(requests, retries) counted in the window at ``now``."""
        with self._lock:
            return self._window(now)
