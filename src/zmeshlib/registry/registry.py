"""The verifying registry: finds cards by CURVE key, service or endpoint, and trusts none unverified.

Rules this module keeps:

* A store is untrusted. Every card it returns is decoded and verified against
  the current trust bundles before any lookup hands it out; what fails is
  ignored and counted, never raised (a bad entry must not break a lookup or a
  handshake). That holds for *any* failure: an entry whose decoding or
  verification raises something other than :class:`~zmeshlib.IdentityError`
  (a certificate that trips the X.509 parser, say) is rejected as
  ``card-unverifiable``, and an entry the store cannot read as bytes (a FIFO,
  a symlink) is rejected with the store's rule (``not-a-file``).
* Secure naming: a card is returned for service ``S`` (by :meth:`by_service`
  or :meth:`by_endpoint`) only if ``may_serve(S, spiffe_id)`` allows its
  identity. :meth:`by_key` applies no naming: it answers "who holds this key".
* Nothing slow happens under the lock that lookups share: store reads and
  verification run outside it, and the lock is taken only to look a verdict
  up and to install one. A card that is slow to verify delays the lookups
  that need that card, never the others (the ZAP handler calls
  :meth:`by_key` for every handshake). Two threads may verify the same bytes
  at once; both reach the same verdict.
* A verdict holds only as long as everything it rested on: see "How long a
  verdict holds" below.
* Memory and work are bounded per entry: the verdict cache holds at most
  ``cache_entries`` verdicts and about ``cache_bytes`` bytes (least recently
  used go first), and the index of the whole store keeps the verdict of
  every entry it lists, so a rescan decodes no entry twice: a store full of
  junk costs one read per entry per rescan and one decode per distinct entry.
* Counters count distinct entries, not lookups: a corrupt file read a
  thousand times counts once.

======================  ======================================================
counter                 counts
======================  ======================================================
``published``           cards this registry published
``corrupt``             entries that do not decode (``Card.from_bytes`` refused
                        them) or that the store cannot read (``not-a-file``)
``invalid``             cards that fail verification, whose decoding or
                        verification failed unexpectedly
                        (``card-unverifiable``), or that sit under another
                        key's id
``stale``               verified cards seen after their ``not_after``
``not_yet_valid``       verified cards seen before their ``not_before``
``misnamed``            (card, service) pairs refused by secure naming
======================  ======================================================

How long a verdict holds. Verdicts are cached per card bytes (SHA-256) and
trust bundles object. A card's window lies inside its own SVID chain's, so
the chain it carries is valid for the whole window; the trust bundle's
authorities are not in the card, and may expire first. A verdict is reached
at the lookup's clock when that lies inside the card's window (else at the
card's ``not_before``), and holds:

==========================================  ===================================
at a later lookup, ``now`` is               the answer
==========================================  ===================================
before the card's ``not_before``            not yet valid (counted)
at or after the card's ``not_after``        stale (counted)
after ``trusted_until``: the earliest       verify again, at ``now``; the new
``not_after`` of the card's trust domain's  verdict replaces the old (an
authorities that were valid when the        expired root makes it ``expired``,
verdict was reached                         another root may still vouch)
otherwise                                   the cached verdict: no signature or
                                            chain work
==========================================  ===================================

A rejection stands for its bytes and bundles object; a new bundles object
re-verifies lazily. A full read of the store forgets every cached verdict on
bytes the store no longer holds: a card superseded by its renewal (a Mesh
renews every third of a lease) is never read again.

Theory of operation: :meth:`by_key` reads one entry (one file for a
:class:`~zmeshlib.registry.DirStore`) per call and serves its verdict from the
cache; when the store cannot be read, it answers with the newest card of that
key it holds a verdict on, while that card is inside its window (so a Redis
restart does not refuse the handshakes of known peers). :meth:`by_service` and :meth:`by_endpoint` read an index of the whole
store, rebuilt only when the store's ``version()`` token or the bundles
change (a store that names the keys that changed, ``changed_keys``, as Redis
does, has only those read again and patched in, when they are few), and look
only through its verified entries (the rejected ones are
counted once, when the index is installed); each rebuild is tagged with a sequence number taken under the lock
when it started, so a slow rebuild never replaces one that started later.
:meth:`changed_since` is meant to be polled (every ~100 ms): its token
combines the index's content digest (entries and their verdicts), the bundles
generation, and how many window boundaries have passed (each card's
``not_before`` and ``not_after``, and each verdict's ``trusted_until``), so it
moves when a lookup's answer may move, and only then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .._exceptions import IdentityError, RegistryError
from ..identity.card import Card, coerce_curve_key
from ._index import _EMPTY, UNVERIFIABLE, _digest, _Entry, _Index, _judge, _rule, _verify
from .stores import DEFAULT_LEASE, CardStore, Unreadable, open_store, split_url

if TYPE_CHECKING:
    from ..identity.spiffe_id import SpiffeId
    from ..identity.svid import Bundles

log = logging.getLogger("zmeshlib.registry")

COUNTERS = ("published", "corrupt", "invalid", "stale", "not_yet_valid", "misnamed")
CACHE_ENTRIES = 4096
# a rebuild reads the changed cards alone when they are at most this many, or half the store
PATCH_MIN = 64
CACHE_BYTES = 16 << 20


class Registry:
    """Verified card lookups over an untrusted :class:`CardStore`. Thread-safe."""

    def __init__(
        self,
        store: CardStore | str,
        *,
        bundles: Callable[[], Bundles] | Bundles,
        may_serve: Callable[[str, SpiffeId], bool] | None = None,
        clock: Callable[[], float] = time.time,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
        lease: float | None = None,
    ) -> None:
        if cache_entries < 1 or cache_bytes < 1:
            raise RegistryError(
                f"cache_entries and cache_bytes must be positive, not {cache_entries} and "
                f"{cache_bytes}; the defaults are {CACHE_ENTRIES} and {CACHE_BYTES}"
            )
        self._owns_store = isinstance(store, str)
        self.store: CardStore = open_store(store) if isinstance(store, str) else store
        #: How long a Mesh's card is valid unless renewed (``?lease=`` in the URL, else the
        #: store's own ``lease``: a RedisStore's TTL must not be shorter).
        self.lease: float = lease or (
            split_url(store)[1]
            if isinstance(store, str)
            else float(getattr(store, "lease", DEFAULT_LEASE))
        )
        if callable(bundles):
            self._bundles_fn: Callable[[], Bundles] = bundles
        else:
            fixed = bundles
            self._bundles_fn = lambda: fixed
        self._may_serve = may_serve
        self._clock = clock
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._lock = threading.RLock()
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._cached_bytes = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._bundles: object = None
        self._bundles_gen = 0
        self._index = _EMPTY
        self._index_seq = 0  # sequence number of the installed index's rebuild
        self._seq = 0  # last sequence number handed out
        self._closed = False

    # -- writing ---------------------------------------------------------------

    def publish(self, card: Card) -> None:
        """Verify ``card`` (and that its identity may serve what it claims), then store it."""
        with self._lock:
            self._check_open()
            bundles, _ = self._current_bundles()
        try:
            card.verify(bundles, self._clock())  # outside the lock: lookups go on meanwhile
        except IdentityError:
            raise
        except Exception as e:
            raise IdentityError(
                f"the card of {card.spiffe_id} could not be verified ({type(e).__name__}: {e}); "
                "sign it again from a valid SVID",
                rule=UNVERIFIABLE,
            ) from e
        for service in sorted(card.services):
            if not self._allowed(service, card):
                raise IdentityError(
                    f"{card.spiffe_id} may not serve {service!r} (secure naming): add it to "
                    f"the policy's services.{service}.identities or remove the claim",
                    rule="card-misnamed",
                )
        self.store.put(card.key_id, card.to_bytes())
        with self._lock:
            self._counters["published"] += 1

    def withdraw(self, curve_key: bytes | str) -> None:
        """Remove the card of ``curve_key`` (the store is untrusted: anyone may; this is housekeeping)."""
        key_id = coerce_curve_key(curve_key).hex()
        with self._lock:
            self._check_open()
        self.store.delete(key_id)

    def holds(self, card: Card) -> bool:
        """Whether the store holds exactly ``card`` (its bytes: a workload checking that its
        own card is still there needs no verification). Raises RegistryError when the
        store cannot be read, which is not the same as "gone"."""
        with self._lock:
            self._check_open()
        return self.store.get(card.key_id) == card.to_bytes()

    # -- lookups -----------------------------------------------------------------

    def by_key(self, curve_key: bytes | str) -> Card | None:
        """The verified, currently valid card of ``curve_key``, or None."""
        key_id = coerce_curve_key(curve_key).hex()
        with self._lock:
            self._check_open()
            bundles, _ = self._current_bundles()
            index = self._index
        try:
            data = self.store.get(key_id)
        except RegistryError:
            card = self._last_known(key_id, bundles, index)
            if card is None:
                raise
            return card  # the store is away: what was verified keeps working in its window
        if data is None:
            return None
        now = self._clock()
        entry = self._verdict(key_id, data, bundles, now, index.by_digest)
        with self._lock:
            return self._usable(key_id, entry, now)

    def _last_known(self, key_id: str, bundles: Bundles, index: _Index) -> Card | None:
        """The newest card of ``key_id`` verified under ``bundles`` and usable now, if any."""
        now = self._clock()
        with self._lock:
            known = [*self._cache.values(), *(entry for _, entry in index.verified)]
        cards = [
            e.card
            for e in known
            if e.card is not None and not e.problem and e.bundles is bundles
            and e.card.key_id == key_id and not e.lapsed(now)
            and e.card.not_before <= now < e.card.not_after
        ]  # fmt: skip
        return max(cards, key=lambda card: card.not_before, default=None)

    def by_service(self, service: str, kind: str | None = None) -> list[Card]:
        """Verified cards serving ``service`` (with an endpoint of socket ``kind`` when given).

        Ordered by key id, so every process sees the same order.
        """
        index, now = self._current()
        with self._lock:
            return [
                card
                for entry, card in self._claimants(index, now, service, kind)
                if self._named(entry, service)
            ]

    def misnamed(self, service: str, kind: str | None = None) -> list[Card]:
        """Verified cards that claim ``service`` although secure naming forbids it.

        What :meth:`by_service` leaves out, so a client can say why it found nothing.
        """
        index, now = self._current()
        with self._lock:
            return [
                card
                for _, card in self._claimants(index, now, service, kind)
                if not self._allowed(service, card)
            ]

    def by_endpoint(self, address: str) -> Card | None:
        """The verified card that lists ``address`` (exact string); the newest one if several do."""
        index, now = self._current()
        with self._lock:
            best: Card | None = None
            for key_id, entry in index.verified:
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
        index, now = self._current()
        current = (index.content, index.gen, index.epoch(now))
        return current != token, current

    def rejected(self) -> dict[str, str]:
        """Entries of the store that no lookup returns, by key id: the rule that rejects each."""
        index, now = self._current()
        out = {}
        for key_id, entry in index.entries:
            rule = _rule(key_id, entry, now)
            if rule:
                out[key_id] = rule
        return out

    def entries(self) -> list[tuple[str, Card | None, str]]:
        """Every entry of the store as ``(key_id, card or None, rule)``, ordered by key id.

        ``rule`` is ``""`` for a card a lookup by key would return now, else
        the rule that rejects the entry (as :meth:`rejected`); ``card`` is the
        decoded card whenever the entry decodes, even when it is rejected, so
        a listing can show what an entry claims and why it is not believed.
        Secure naming is not applied (it depends on the service asked for).
        """
        index, now = self._current()
        return [(key_id, entry.card, _rule(key_id, entry, now)) for key_id, entry in index.entries]

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
            self._cached_bytes = 0
            self._index = _EMPTY
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.store!r})"

    # -- verdicts and the index (the lock only around shared state) ---------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("this registry is closed; open a new one")

    def _current_bundles(self) -> tuple[Bundles, int]:
        """The bundles in force and their generation; call with the lock held."""
        bundles = self._bundles_fn()
        if bundles is not self._bundles:
            self._bundles = bundles
            self._bundles_gen += 1
        return bundles, self._bundles_gen

    def _verdict(
        self,
        key_id: str,
        data: bytes | Unreadable,
        bundles: Bundles,
        now: float,
        known: Mapping[bytes, _Entry],
    ) -> _Entry:
        """The verdict on ``data`` under ``bundles``: remembered, or reached outside the lock."""
        digest = _digest(data, key_id)
        entry = known.get(digest)
        if entry is None or entry.bundles is not bundles:
            with self._lock:
                entry = self._cache.get(digest)
                if entry is not None:
                    self._cache.move_to_end(digest)
        if entry is not None and entry.bundles is bundles and not entry.lapsed(now):
            return entry
        entry = _judge(digest, data, bundles, now)
        with self._lock:
            if not self._closed:
                self._remember(entry)
        return entry

    def _remember(self, entry: _Entry) -> None:
        """Cache ``entry``, evicting the least recently used past either bound; lock held."""
        old = self._cache.pop(entry.digest, None)
        if old is not None:
            self._cached_bytes -= old.cost
        self._cache[entry.digest] = entry
        self._cached_bytes += entry.cost
        while len(self._cache) > self._cache_entries or (
            self._cached_bytes > self._cache_bytes and len(self._cache) > 1
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.cost

    def _forget_all_but(self, live: Mapping[bytes, _Entry]) -> None:
        """Evict every cached verdict whose bytes are not among ``live`` (lock held): a card
        superseded by its renewal is never read again, and a workload renews its card
        every third of a lease, so these would otherwise fill the cache to its bound."""
        for digest in [d for d in self._cache if d not in live]:
            self._cached_bytes -= self._cache.pop(digest).cost

    def _current(self) -> tuple[_Index, float]:
        """The index, brought up to date, and the instant it answers for.

        The store is read and entries verified outside the lock; the result is
        installed only if no rebuild that started later was installed first.
        """
        with self._lock:
            self._check_open()
            bundles, gen = self._current_bundles()
            index = self._index
            self._seq += 1
            seq = self._seq
        now = self._clock()
        token = self.store.version()
        if index.gen == gen and index.token == token:
            if now <= index.next_lapse:
                return index, now
            if not any(entry.lapsed(now) for _, entry in index.entries):
                return index, now
            entries = self._reached_again(index.entries, bundles, now)
        else:
            changed = self._changed(index, gen)
            if changed is not None:  # patch the index with the cards that changed
                entries = self._patched(index, changed, bundles, now)
            else:
                known = index.by_digest if index.gen == gen else {}
                entries = [
                    (key_id, self._verdict(key_id, data, bundles, now, known))
                    for key_id, data in self.store.scan()
                ]
        scanned = not (index.gen == gen and index.token == token)
        fresh = _Index(entries, token, gen)
        with self._lock:
            if seq > self._index_seq and not self._closed:
                self._index = fresh
                self._index_seq = seq
                if scanned:  # verdicts on bytes the store no longer holds are dead weight
                    self._forget_all_but(fresh.by_digest)
                for key_id, entry in entries:  # once here, as name lookups skip them
                    if entry.problem:
                        self._note(entry, entry.problem, key_id)
            return (self._index if self._index_seq > seq else fresh), now

    def _changed(self, index: _Index, gen: int) -> frozenset[str] | None:
        """The key ids changed since ``index`` was read, when the store can tell (Redis:
        its change feed names them) and they are few enough to read one by one."""
        since = getattr(self.store, "changed_keys", None)  # with it, the store has get_many
        if since is None or index.gen != gen or index.token is None:
            return None
        changed: frozenset[str] | None = since(index.token)
        if changed is None or len(changed) > max(PATCH_MIN, len(index.entries) // 2):
            return None
        return changed

    def _patched(
        self, index: _Index, changed: frozenset[str], bundles: Bundles, now: float
    ) -> list[tuple[str, _Entry]]:
        """``index``'s entries with those of ``changed`` read again, lapsed ones re-reached."""
        entries = dict(index.entries)
        order = sorted(changed)
        for key_id, data in zip(order, self.store.get_many(order), strict=True):  # type: ignore[attr-defined]
            if data is None:
                entries.pop(key_id, None)
            else:
                entries[key_id] = self._verdict(key_id, data, bundles, now, index.by_digest)
        return self._reached_again(sorted(entries.items()), bundles, now)

    def _reached_again(
        self, entries: list[tuple[str, _Entry]], bundles: Bundles, now: float
    ) -> list[tuple[str, _Entry]]:
        """``entries`` with every lapsed verdict reached again at ``now``."""
        return [
            (key_id, self._reverify(entry, bundles, now) if entry.lapsed(now) else entry)
            for key_id, entry in entries
        ]

    def _reverify(self, entry: _Entry, bundles: Bundles, now: float) -> _Entry:
        """A lapsed verdict reached again at ``now`` (outside the lock)."""
        assert entry.card is not None
        fresh = _verify(entry.digest, entry.card, entry.cost, bundles, now)
        with self._lock:
            if not self._closed:
                self._remember(fresh)
        return fresh

    # -- decisions on verdicts (call with the lock held: they count) ---------------

    def _claimants(
        self, index: _Index, now: float, service: str, kind: str | None
    ) -> list[tuple[_Entry, Card]]:
        """Usable cards that claim ``service`` (with an endpoint of ``kind``)."""
        found = []
        for key_id, entry in index.verified:
            card = self._usable(key_id, entry, now)
            if card is None or service not in card.services:
                continue
            if kind is not None and not card.endpoints_for(service, kind):
                continue
            found.append((entry, card))
        return found

    def _note(self, entry: _Entry, counter: str, detail: str = "") -> None:
        event = f"{counter}:{detail}"
        if event not in entry.noted:
            entry.noted.add(event)
            self._counters[counter] += 1

    def _usable(self, key_id: str, entry: _Entry, now: float) -> Card | None:
        """The entry's card if it verified, is filed under its own key and is in its window."""
        if entry.problem:
            self._note(entry, entry.problem, key_id)  # one verdict may serve several names
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
