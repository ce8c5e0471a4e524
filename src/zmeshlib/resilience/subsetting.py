"""Which endpoints a client socket connects to when ``pool.max_connections`` caps them.

Rules this module keeps:

* at most ``limit`` endpoints of each group: the service as a whole, and
  each subset the policy defines for it (so a 90/10 canary split still finds
  both subsets; connections stay within ``limit`` x (subsets + 1));
* an endpoint kept for any group is connected;
* the choice is rendezvous hashing (highest random weight) keyed by the
  socket's own seed. It is stable: an endpoint joining or leaving a group
  changes at most one of that group's choices, so a registry change never
  reshuffles the connections. And it spreads: each client draws its own
  seed, so a fleet of clients covers every server about evenly (deterministic
  subsetting, as in Google's SRE book, without a coordinator).

Theory of operation: the socket resolves its targets to endpoints as usual,
groups them by subset, and asks :func:`keep` which to dial; outlier
detection, balancing and breaking then work over the endpoints kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(seed: bytes, address: str) -> bytes:
    """The endpoint's rank for this seed: its keyed hash (bytes compare in order)."""
    return hashlib.blake2b(address.encode(), key=seed, digest_size=8).digest()


def keep(groups: Iterable[Iterable[str]], limit: int, seed: bytes) -> set[str]:
    """The endpoints to connect: the ``limit`` heaviest of each group, together."""
    kept: set[str] = set()
    for group in groups:
        ranked = sorted(set(group), key=lambda a: weight(seed, a), reverse=True)
        kept.update(ranked[:limit])
    return kept
