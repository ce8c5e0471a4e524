"""Bounded memory and work: a verdict cache bounded by entries and bytes, junk decoded once."""

from __future__ import annotations

import pytest

from zmeshlib._exceptions import RegistryError
from zmeshlib.identity.card import Card
from zmeshlib.registry import DirStore, MemoryStore, Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


def count_calls(monkeypatch, owner, name: str) -> list[object]:
    """Record every call of ``owner.name``: the card verified, the bytes decoded, the path read."""
    calls: list[object] = []
    real = getattr(owner, name)
    if name == "from_bytes":

        def from_bytes(data, **kw):
            calls.append(bytes(data))
            return real(data, **kw)

        monkeypatch.setattr(owner, name, staticmethod(from_bytes))
        return calls

    def method(self, first, *args, **kw):
        calls.append(self if name == "verify" else first)
        return real(self, first, *args, **kw)

    monkeypatch.setattr(owner, name, method)
    return calls


def test_the_cache_is_bounded_by_bytes_as_well_as_entries(ca, make_card, monkeypatch):
    store = MemoryStore()
    big = make_card(ORDERS, labels={f"k{i:02}": "v" * 1000 for i in range(40)})  # ~40 KB
    small = [make_card(ORDERS) for _ in range(30)]  # ~1 KB each
    assert len(big.to_bytes()) > 40_000 and all(len(c.to_bytes()) < 2_000 for c in small)
    for card in (big, *small):
        store.put(card.key_id, card.to_bytes())
    verified = count_calls(monkeypatch, Card, "verify")

    def look_up_all() -> None:
        assert verified.clear() is None
        for card in (big, *small):
            assert registry.by_key(card.curve_key) == card

    # room for every entry by count, and for the small cards' bytes, not the big one's too
    with Registry(store, bundles=ca.bundles, cache_bytes=150_000) as registry:
        look_up_all()
        assert len(verified) == 31
        for card in small:  # the most recent ones are still cached
            assert registry.by_key(card.curve_key) == card
        assert len(verified) == 31
        assert registry.by_key(big.curve_key) == big  # the big one was evicted
        assert len(verified) == 32
    with Registry(store, bundles=ca.bundles) as roomy:  # the default bounds hold all 31
        registry = roomy
        look_up_all()
        look_up_all()
        assert verified == []


def test_the_cache_is_bounded_by_entries(ca, make_card, monkeypatch):
    store = MemoryStore()
    cards = [make_card(ORDERS) for _ in range(4)]
    for card in cards:
        store.put(card.key_id, card.to_bytes())
    verified = count_calls(monkeypatch, Card, "verify")
    with Registry(store, bundles=ca.bundles, cache_entries=3) as registry:
        for card in cards:
            assert registry.by_key(card.curve_key) == card
        for card in cards[1:]:
            assert registry.by_key(card.curve_key) == card
        assert len(verified) == 4
        assert registry.by_key(cards[0].curve_key) == cards[0]
        assert len(verified) == 5


@pytest.mark.parametrize("bad", [{"cache_entries": 0}, {"cache_bytes": 0}, {"cache_entries": -1}])
def test_cache_bounds_must_be_positive(ca, bad):
    with pytest.raises(RegistryError, match="must be positive"):
        Registry(MemoryStore(), bundles=ca.bundles, **bad)


def test_a_store_full_of_junk_costs_one_read_per_entry_and_one_decode_per_distinct_entry(
    tmp_path, ca, make_card, monkeypatch
):
    # racy_window=3600: every version() differs, so every lookup rescans the directory
    store = DirStore(tmp_path, racy_window=3600)
    good = make_card(ORDERS, labels={"service": "orders"})
    store.put(good.key_id, good.to_bytes())
    distinct = 200
    for i in range(distinct):
        (tmp_path / f"junk{i:03}.card").write_bytes(b"junk %d" % i)
    for i in range(50):  # the same bytes under many names: one decode
        (tmp_path / f"copy{i:02}.card").write_bytes(b"the same junk")
    entries = distinct + 50 + 1
    reads = count_calls(monkeypatch, DirStore, "_read")
    decodes = count_calls(monkeypatch, Card, "from_bytes")
    verified = count_calls(monkeypatch, Card, "verify")
    # a cache far smaller than the store: the index keeps what it lists
    with Registry(store, bundles=ca.bundles, cache_entries=8) as registry:
        for _ in range(3):
            assert registry.by_service("orders") == [good]
            assert registry.by_key(good.curve_key) == good
            assert registry.by_key(bytes.fromhex("ab" * 32)) is None  # not in the store
        assert len(reads) == 3 * entries + 3 + 3  # each rescan reads each entry once
        assert len(decodes) == distinct + 1 + 1  # every distinct entry decoded once
        assert verified == [good]
        assert len(registry.rejected()) == entries - 1
        assert registry.stats["corrupt"] == entries - 1  # counted once each


def test_renewed_cards_do_not_fill_the_cache(ca, make_card):
    """A Mesh renews its card every third of a lease: the verdicts on the cards it replaced
    are forgotten when the store is next read, not kept until the cache's bound."""
    import zmq

    store = MemoryStore()
    public, secret = zmq.curve_keypair()
    other = make_card(ORDERS, labels={"service": "orders"})
    store.put(other.key_id, other.to_bytes())
    with Registry(store, bundles=ca.bundles) as registry:
        for _ in range(50):  # fifty renewals of one workload's card
            card = make_card(ORDERS, public=public, secret=secret, labels={"service": "orders"})
            store.put(card.key_id, card.to_bytes())
            assert card in registry.by_service("orders")
            assert len(registry._cache) <= 2  # the two cards the store holds, no more
