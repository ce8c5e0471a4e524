"""Which card keys changed since a store token: what lets a registry patch its index
instead of reading the whole store again.

Rules this module keeps:

* The token is a count of changes; each change is recorded with what it touched:
  a key id, :data:`NO_CARD` (the policy key: no card moved), or :data:`UNKNOWN`
  (anything may have moved: a (re)subscription, a resync tick, cards written back
  after a restart, a message it cannot read).
* :meth:`ChangeLog.since` answers the key ids touched after a token, or None when
  it cannot tell: an UNKNOWN among them, a token it never gave, or changes older
  than the log keeps (``size``). None means "read everything", never "nothing".
* Not locked: its owner calls it with its own lock held (the Redis store's).

Why: a fleet renews its cards every third of a lease, so with 1,000 workloads the
store changes 200 times a second; rebuilding a service index from every card
after each change read all 1,000 each time (13 lookups a second). Patched, a
rebuild reads only the cards that changed.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

#: What a change touched when it was no card (the signed policy).
NO_CARD = ""
#: What a change touched when anything may have moved.
UNKNOWN = None


class ChangeLog:
    """A count of changes, and what each of the last ``size`` of them touched."""

    def __init__(self, size: int = 4096) -> None:
        self.count = 0
        self._touched: deque[tuple[int, str | None]] = deque(maxlen=size)

    def moved(self, touched: str | None) -> int:
        """Record one change (a key id, NO_CARD or UNKNOWN); the new count."""
        self.count += 1
        self._touched.append((self.count, touched))
        return self.count

    def since(self, token: object) -> frozenset[str] | None:
        """The key ids changed after ``token`` (a count this log gave), or None when that
        cannot be told."""
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token <= self.count:
            return None
        missing = self.count - token
        if missing == 0:
            return frozenset()
        if len(self._touched) < missing:  # the oldest of them are no longer kept
            return None
        keys: set[str] = set()
        for _, touched in islice(reversed(self._touched), missing):
            if touched is UNKNOWN:
                return None
            if touched != NO_CARD:
                keys.add(touched)
        return frozenset(keys)
