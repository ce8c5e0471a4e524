"""Backoff between retries: fully jittered and exponential (Envoy's and AWS's "full jitter").

Rules this module keeps:

* Retry ``n`` (0 for the first retry) waits a uniform draw in
  ``[0, min(cap, base * 2**n)]``: the jitter spreads the retries of many
  clients, the cap bounds the wait.
* Pure: the random source is the caller's.
"""

from __future__ import annotations

import random


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry`` (0-based)."""
    ceiling = min(cap, base * (1 << min(max(retry, 0), 32)))
    return rng.uniform(0.0, ceiling)
