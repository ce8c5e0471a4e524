"""The verifying registry: finds cards by CURVE key, service or endpoint, and trusts none unverified.

Rules this module keeps:

* A store is untrusted. Every card it returns is decoded and verified against
  the current trust bundles before any lookup hands it out; what fails is
  ignored and counted, never raised (a bad entry must not break a lookup or a
  handshake).
* Secure naming: a card is returned for service ``S`` (by :meth:`by_service`
  or :meth:`by_endpoint`) only if ``may_serve(S, spiffe_id)`` allows its
  identity. :meth:`by_key` applies no naming: it answers "who holds this key".
* Verification is cached per card bytes (SHA-256) and trust bundles object.
  The cached verdict is reached at the card's own ``not_before``; because a
  valid card's window lies inside its SVID chain's, that verdict holds for the
  whole window, so a later lookup re-checks only the window (no signature
  or chain work). A new bundles object re-verifies lazily.
* Counters count distinct entries, not lookups: a corrupt file read a
  thousand times counts once.

======================  ======================================================
counter                 counts
======================  ======================================================
``published``           cards this registry published
``corrupt``             entries that do not decode (``Card.from_bytes`` failed)
``invalid``             cards that decode but fail verification, or sit under
                        another key's id
``stale``               verified cards seen after their ``not_after``
``not_yet_valid``       verified cards seen before their ``not_before``
``misnamed``            (card, service) pairs refused by secure naming
======================  ======================================================

Theory of operation: :meth:`by_key` reads one entry (one file for a
:class:`~zmeshlib.registry.DirStore`) per call and serves its verdict from the
cache. :meth:`by_service` and :meth:`by_endpoint` read an index of the whole
store, rebuilt only when the store's ``version()`` token changes.
:meth:`changed_since` is meant to be polled (every ~100 ms): its token
combines the index's content digest, the bundles generation, and how many
card window boundaries (a ``not_before`` or ``not_after``) have passed, so it
moves when a lookup's answer may move, and only then.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._exceptions import IdentityError, RegistryError
from ..identity.card import Card, coerce_curve_key
from .stores import CardStore, open_store

if TYPE_CHECKING:
    from ..identity.spiffe_id import SpiffeId
    from ..identity.svid import Bundles

COUNTERS = ("published", "corrupt", "invalid", "stale", "not_yet_valid", "misnamed")
_CACHE_SIZE = 4096


class _Entry:
    """The cached verdict on one card's bytes under one bundles object."""

    __slots__ = ("bundles", "card", "digest", "noted", "problem", "rule")

    def __init__(
        self, digest: bytes, bundles: object, card: Card | None, problem: str, rule: str
    ) -> None:
        self.digest = digest  # SHA-256 of the card bytes
        self.bundles = bundles
        self.card = card  # decoded card (None when corrupt)
        self.problem = problem  # "" (verified), "corrupt" or "invalid"
        self.rule = rule  # the IdentityError rule when problem is set
        self.noted: set[str] = set()  # counter events already counted for this entry


class Registry:
    """Verified card lookups over an untrusted :class:`CardStore`. Thread-safe."""

    def __init__(
        self,
        store: CardStore | str,
        *,
        bundles: Callable[[], Bundles] | Bundles,
        may_serve: Callable[[str, SpiffeId], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._owns_store = isinstance(store, str)
        self.store: CardStore = open_store(store) if isinstance(store, str) else store
        self._bundles_fn: Callable[[], Bundles] = (
            bundles if callable(bundles) else (lambda: bundles)  # type: ignore[assignment,return-value]
        )
        self._may_serve = may_serve
        self._clock = clock
        self._lock = threading.RLock()
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._bundles: object = None
        self._bundles_gen = 0
        self._store_token: object = None
        self._index: list[tuple[str, _Entry]] = []
        self._index_gen = -1
        self._content = b""
        self._boundaries: list[float] = []
        self._closed = False

    # -- writing ---------------------------------------------------------------

    def publish(self, card: Card) -> None:
        """Verify ``card`` (and that its identity may serve what it claims), then store it."""
        with self._lock:
            self._check_open()
            card.verify(self._current_bundles(), self._clock())
            for service in sorted(card.services):
                if not self._allowed(service, card):
                    raise IdentityError(
                        f"{card.spiffe_id} may not serve {service!r} (secure naming): add it to "
                        f"the policy's services.{service}.identities or remove the claim",
                        rule="card-misnamed",
                    )
            self.store.put(card.key_id, card.to_bytes())
            self._counters["published"] += 1

    def withdraw(self, curve_key: bytes | str) -> None:
        """Remove the card of ``curve_key`` (the store is untrusted: anyone may; this is housekeeping)."""
        with self._lock:
            self._check_open()
            self.store.delete(coerce_curve_key(curve_key).hex())

    # -- lookups -----------------------------------------------------------------

    def by_key(self, curve_key: bytes | str) -> Card | None:
        """The verified, currently valid card of ``curve_key``, or None."""
        key_id = coerce_curve_key(curve_key).hex()
        with self._lock:
            self._check_open()
            data = self.store.get(key_id)
            if data is None:
                return None
            return self._usable(key_id, self._entry(data), self._clock())

    def by_service(self, service: str, kind: str | None = None) -> list[Card]:
        """Verified cards serving ``service`` (with an endpoint of socket ``kind`` when given).

        Ordered by key id, so every process sees the same order.
        """
        with self._lock:
            return [
                card
                for entry, card in self._claimants(service, kind)
                if self._named(entry, service)
            ]

    def misnamed(self, service: str, kind: str | None = None) -> list[Card]:
        """Verified cards that claim ``service`` although secure naming forbids it.

        What :meth:`by_service` leaves out, so a client can say why it found nothing.
        """
        with self._lock:
            return [
                card
                for _, card in self._claimants(service, kind)
                if not self._allowed(service, card)
            ]

    def _claimants(self, service: str, kind: str | None) -> list[tuple[_Entry, Card]]:
        """Usable cards that claim ``service`` (with an endpoint of ``kind``); caller holds the lock."""
        self._refresh()
        now = self._clock()
        found = []
        for key_id, entry in self._index:
            card = self._usable(key_id, entry, now)
            if card is None or service not in card.services:
                continue
            if kind is not None and not card.endpoints_for(service, kind):
                continue
            found.append((entry, card))
        return found

    def by_endpoint(self, address: str) -> Card | None:
        """The verified card that lists ``address`` (exact string); the newest one if several do."""
        with self._lock:
            self._refresh()
            now = self._clock()
            best: Card | None = None
            for key_id, entry in self._index:
                card = self._usable(key_id, entry, now)
                if card is None:
                    continue
                default = card.labels.get("service", "")
                services = {ep.service or default for ep in card.endpoints if ep.address == address}
                if not services:
                    continue
                named = all(self._named(entry, s) for s in sorted(services) if s)
                if named and (best is None or card.not_before > best.not_before):
                    best = card
            return best

    def changed_since(self, token: object) -> tuple[bool, object]:
        """``(changed, new_token)``: whether a lookup's answer may differ from when ``token`` was taken.

        Start with ``token=None``. Cheap when nothing changed (a ``stat`` for a
        :class:`~zmeshlib.registry.DirStore`).
        """
        with self._lock:
            self._refresh()
            epoch = bisect.bisect_right(self._boundaries, self._clock())
            current = (self._content, self._bundles_gen, epoch)
            return current != token, current

    def rejected(self) -> dict[str, str]:
        """Entries of the store that no lookup returns, by key id: the rule that rejects each."""
        with self._lock:
            self._refresh()
            now = self._clock()
            out = {}
            for key_id, entry in self._index:
                if entry.problem:
                    out[key_id] = entry.rule
                elif entry.card is not None and entry.card.key_id != key_id:
                    out[key_id] = "card-wrong-key"
                elif entry.card is not None:
                    try:
                        entry.card.check_window(now)
                    except IdentityError as e:
                        out[key_id] = e.rule
            return out

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (module docstring's table)."""
        with self._lock:
            return dict(self._counters)

    def close(self) -> None:
        """Drop the cache; close the store if this registry opened it from a URL."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            self._index = []
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.store!r})"

    # -- internals (call with the lock held) --------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("this registry is closed; open a new one")

    def _current_bundles(self) -> object:
        bundles = self._bundles_fn()
        if bundles is not self._bundles:
            self._bundles = bundles
            self._bundles_gen += 1
        return bundles

    def _entry(self, data: bytes) -> _Entry:
        """The cached verdict on ``data`` under the current bundles (verifying on a miss)."""
        bundles = self._current_bundles()
        digest = hashlib.sha256(data).digest()
        entry = self._cache.get(digest)
        if entry is not None and entry.bundles is bundles:
            self._cache.move_to_end(digest)
            return entry
        try:
            card = Card.from_bytes(data)
        except IdentityError as e:
            entry = _Entry(digest, bundles, None, "corrupt", e.rule)
        else:
            try:
                card.verify(bundles, now=card.not_before)  # type: ignore[arg-type]
                entry = _Entry(digest, bundles, card, "", "")
            except IdentityError as e:
                entry = _Entry(digest, bundles, card, "invalid", e.rule)
        self._cache[digest] = entry
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry

    def _note(self, entry: _Entry, counter: str, detail: str = "") -> None:
        event = f"{counter}:{detail}"
        if event not in entry.noted:
            entry.noted.add(event)
            self._counters[counter] += 1

    def _usable(self, key_id: str, entry: _Entry, now: float) -> Card | None:
        """The entry's card if it verified, is filed under its own key and is in its window."""
        if entry.problem:
            self._note(entry, entry.problem)
            return None
        card = entry.card
        assert card is not None
        if card.key_id != key_id:
            self._note(entry, "invalid", key_id)
            return None
        if now < card.not_before:
            self._note(entry, "not_yet_valid")
            return None
        if now >= card.not_after:
            self._note(entry, "stale")
            return None
        return card

    def _allowed(self, service: str, card: Card) -> bool:
        return self._may_serve is None or bool(self._may_serve(service, card.spiffe_id))

    def _named(self, entry: _Entry, service: str) -> bool:
        """Secure naming for ``service``; a refusal is counted once per card and service."""
        assert entry.card is not None
        if self._allowed(service, entry.card):
            return True
        self._note(entry, "misnamed", service)
        return False

    def _refresh(self) -> None:
        """Rebuild the index when the store or the bundles changed."""
        self._check_open()
        self._current_bundles()
        token = self.store.version()
        if token == self._store_token and self._index_gen == self._bundles_gen:
            return
        index = [(key_id, self._entry(data)) for key_id, data in self.store.scan()]
        content = hashlib.sha256()
        boundaries = []
        for key_id, entry in index:
            content.update(key_id.encode() + b"\x00" + entry.digest)
            if not entry.problem and entry.card is not None:
                boundaries += (entry.card.not_before, entry.card.not_after)
        self._index = index
        self._index_gen = self._bundles_gen
        self._store_token = token
        self._content = content.digest()
        self._boundaries = sorted(boundaries)
