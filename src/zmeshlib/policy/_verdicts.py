"""Remembered outcomes of the signed-policy checks that depend on bytes alone.

Rules this module keeps:

* Only checks whose outcome follows from the document's bytes (and the trust
  bundles they were checked against) are remembered: the signature with the
  chain at the signing time, and the policy rebuild. The clock, the signer
  patterns and the version applied are checked by the caller on every call.
* An outcome is reused only for bundles equal to the ones it was reached with;
  other bundles check again (and replace it).
* A refusal is remembered too and raised again as a fresh
  :class:`~zmeshlib.SignedPolicyError` with the same message and reason.
* Bounded: the ``size`` outcomes used last are kept. Two threads racing on one both
  compute it; neither waits for the other.

Why: every Mesh of a process that follows one registry judges the same document
at each push. Remembered, a push is judged once per process instead of once per
Mesh (250 Meshes of a process verified it 250 times, about 1 ms each under load).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from .._exceptions import SignedPolicyError

_T = TypeVar("_T")


class Verdicts:
    """Outcomes by key, each with the bundles it was reached under (None: no bundles)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._outcomes: OrderedDict[tuple[str, bytes], tuple[object, object]] = OrderedDict()

    def judge(self, key: tuple[str, bytes], bundles: object, check: Callable[[], _T]) -> _T:
        """``check()``'s outcome for ``key`` under ``bundles``: its value, or its
        SignedPolicyError raised again."""
        with self._lock:
            hit = self._outcomes.get(key)
            if hit is not None:
                self._outcomes.move_to_end(key)  # the least recently used go first
        if hit is None or not (hit[0] is bundles or hit[0] == bundles):
            try:
                outcome: object = check()
            except SignedPolicyError as e:
                outcome = e
            hit = (bundles, outcome)
            with self._lock:
                self._outcomes[key] = hit
                self._outcomes.move_to_end(key)
                while len(self._outcomes) > self._size:
                    self._outcomes.popitem(last=False)
        if isinstance(hit[1], SignedPolicyError):
            raise SignedPolicyError(str(hit[1]), reason=hit[1].reason)
        return hit[1]  # type: ignore[return-value]

    def clear(self) -> None:
        with self._lock:
            self._outcomes.clear()


#: The process's one table: every follower (and publish_policy's own check) shares it.
VERDICTS = Verdicts()
