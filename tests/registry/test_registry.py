"""The verifying registry over an in-memory store: lookups, secure naming, counters, caching."""

from __future__ import annotations

import threading

import attrs
import pytest

from zmeshlib._exceptions import IdentityError, RegistryError
from zmeshlib._models import Endpoint
from zmeshlib.identity.card import Card
from zmeshlib.identity.devca import DevCA
from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import Policy
from zmeshlib.registry import COUNTERS, MemoryStore, Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
ROGUE = "spiffe://example.org/ns/rogue/sa/mallory"
SERVES = {"orders": {ORDERS}, "payment": {PAYMENT}}


def may_serve(service: str, spiffe_id: SpiffeId) -> bool:
    return str(spiffe_id) in SERVES.get(service, {str(spiffe_id)})


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def registry(store, ca, clock):
    with Registry(store, bundles=ca.bundles, may_serve=may_serve, clock=clock) as reg:
        yield reg


def orders_card(make_card, port: int = 5555, **kw) -> Card:
    kw.setdefault("labels", {"service": "orders"})
    kw.setdefault("endpoints", [Endpoint(f"tcp://127.0.0.1:{port}", "PUB")])
    return make_card(ORDERS, **kw)


def test_publish_then_find_by_key_service_and_endpoint(registry, make_card):
    card = orders_card(make_card)
    registry.publish(card)
    assert registry.by_key(card.curve_key) == card
    assert registry.by_key(card.curve_key_z85) == card
    assert registry.by_service("orders") == [card]
    assert registry.by_service("orders", kind="PUB") == [card]
    assert registry.by_service("orders", kind="REP") == []
    assert registry.by_service("payment") == []
    assert registry.by_endpoint("tcp://127.0.0.1:5555") == card
    assert registry.by_endpoint("tcp://127.0.0.1:5556") is None
    assert registry.stats == dict.fromkeys(COUNTERS, 0) | {"published": 1}
    registry.withdraw(card.curve_key)
    assert registry.by_key(card.curve_key) is None
    assert registry.by_service("orders") == []


def test_by_service_is_ordered_by_key_id_and_filters_by_kind(registry, make_card):
    cards = [orders_card(make_card, 6000 + i) for i in range(5)]
    rep = make_card(ORDERS, endpoints=[Endpoint("tcp://127.0.0.1:7000", "REP", "orders")])
    for card in [*cards, rep]:
        registry.publish(card)
    assert registry.by_service("orders") == sorted([*cards, rep], key=lambda c: c.key_id)
    assert registry.by_service("orders", kind="REP") == [rep]


def test_publish_refuses_invalid_and_misnamed_cards(registry, make_card, store, sign_card):
    rogue_orders = make_card(ROGUE, labels={"service": "orders"})
    with pytest.raises(IdentityError) as info:
        registry.publish(rogue_orders)
    assert info.value.rule == "card-misnamed"
    foreign = DevCA.create("example.org").issue_svid(ORDERS, key="ed25519")
    with pytest.raises(IdentityError) as info:
        registry.publish(sign_card(foreign))
    assert info.value.rule == "untrusted"
    assert list(store.scan()) == []


def test_secure_naming_ignores_and_counts_a_card_claiming_a_service_it_may_not_serve(
    registry, store, make_card
):
    good = orders_card(make_card, 5555)
    rogue = make_card(ROGUE, labels={"service": "orders"}, endpoints=[Endpoint("tcp://x:1", "PUB")])
    sneaky = make_card(ROGUE, endpoints=[Endpoint("tcp://127.0.0.1:5555", "PUB", "orders")])
    registry.publish(good)
    store.put(rogue.key_id, rogue.to_bytes())  # written straight to the untrusted store
    store.put(sneaky.key_id, sneaky.to_bytes())
    for _ in range(3):
        assert registry.by_service("orders") == [good]
        assert registry.by_endpoint("tcp://x:1") is None
        assert registry.by_endpoint("tcp://127.0.0.1:5555") == good
    assert registry.stats["misnamed"] == 2  # once per card, not per lookup
    assert registry.by_key(rogue.curve_key) == rogue  # by key: who holds it, no naming


def test_without_may_serve_every_claim_is_accepted(store, ca, make_card):
    rogue = make_card(ROGUE, labels={"service": "orders"})
    with Registry(store, bundles=ca.bundles) as open_registry:
        open_registry.publish(rogue)
        assert open_registry.by_service("orders") == [rogue]


def test_corrupt_and_invalid_entries_are_skipped_and_counted_once(
    registry, store, make_card, sign_card
):
    good = orders_card(make_card)
    registry.publish(good)
    store.put("junk", b"not a card")
    store.put("f" * 64, good.to_bytes()[:-5])
    foreign = sign_card(DevCA.create("example.org").issue_svid(ORDERS, key="ed25519"))
    store.put("e" * 64, foreign.to_bytes())
    misfiled = orders_card(make_card)
    store.put("d" * 64, misfiled.to_bytes())  # a valid card under another key's id
    for _ in range(3):
        assert registry.by_service("orders") == [good]
        assert registry.by_key(bytes.fromhex("f" * 64)) is None
        assert registry.by_key(bytes.fromhex("d" * 64)) is None
    assert registry.stats["corrupt"] == 2
    assert registry.stats["invalid"] == 2
    assert registry.rejected() == {
        "junk": "card-malformed",
        "f" * 64: "card-malformed",
        "e" * 64: "untrusted",
        "d" * 64: "card-wrong-key",
    }


def test_stale_and_not_yet_valid_cards_are_ignored_and_counted(registry, store, make_card, clock):
    card = orders_card(make_card, ttl=60, now=clock.now)
    registry.publish(card)
    later = orders_card(make_card, now=clock.now + 30)
    store.put(later.key_id, later.to_bytes())
    assert registry.by_service("orders") == [card]
    assert registry.stats["not_yet_valid"] == 1
    clock.now += 30
    assert sorted(registry.by_service("orders"), key=lambda c: c.not_before) == [card, later]
    clock.now += 30
    assert registry.by_service("orders") == [later]
    assert registry.by_key(card.curve_key) is None
    assert registry.stats["stale"] == 1
    assert registry.rejected() == {card.key_id: "card-expired"}


def test_verification_is_cached_per_card_bytes(registry, make_card, monkeypatch):
    calls = []
    real_verify = Card.verify

    def counting_verify(self, *args, **kw):
        calls.append(self.key_id)
        return real_verify(self, *args, **kw)

    card = orders_card(make_card)
    registry.publish(card)  # publish verifies once, at the registry's clock
    monkeypatch.setattr(Card, "verify", counting_verify)
    for _ in range(5):
        assert registry.by_key(card.curve_key) == card
        assert registry.by_service("orders") == [card]
    assert calls == [card.key_id]


def test_new_bundles_reverify_and_can_revoke_a_whole_ca(store, ca, make_card, clock):
    card = orders_card(make_card)
    current = {"bundles": ca.bundles}
    with Registry(store, bundles=lambda: current["bundles"], clock=clock) as registry:
        registry.publish(card)
        changed, token = registry.changed_since(None)
        assert changed and registry.by_service("orders") == [card]
        current["bundles"] = ca.bundles  # equal, but a new object: re-verified, still good
        assert registry.by_key(card.curve_key) == card
        current["bundles"] = DevCA.create("example.org").bundles  # the CA was replaced
        assert registry.by_key(card.curve_key) is None
        assert registry.by_service("orders") == []
        assert registry.changed_since(token)[0]
        assert registry.stats["invalid"] == 1


def test_changed_since_moves_on_publish_withdraw_and_window_boundaries(registry, make_card, clock):
    changed, token = registry.changed_since(None)
    assert changed
    assert registry.changed_since(token) == (False, token)
    card = orders_card(make_card, ttl=60, now=clock.now)
    registry.publish(card)
    changed, token = registry.changed_since(token)
    assert changed and registry.changed_since(token) == (False, token)
    clock.now += 59
    assert registry.changed_since(token) == (False, token)
    clock.now += 1  # the card's not_after passed: lookups now answer differently
    changed, token = registry.changed_since(token)
    assert changed and registry.by_service("orders") == []
    registry.withdraw(card.curve_key)
    assert registry.changed_since(token)[0]


def test_by_endpoint_prefers_the_newest_card_for_an_address(registry, make_card, clock):
    old = orders_card(make_card, 5555, now=clock.now - 5)
    new = orders_card(make_card, 5555, now=clock.now)
    registry.publish(new)
    registry.publish(old)
    assert registry.by_endpoint("tcp://127.0.0.1:5555") == new


def test_lookups_on_a_tampered_stored_card_return_nothing(registry, store, make_card):
    card = orders_card(make_card)
    tampered = attrs.evolve(card, labels={"service": "orders", "version": "evil"})
    store.put(card.key_id, tampered.to_bytes())
    assert registry.by_key(card.curve_key) is None
    assert registry.by_service("orders") == []
    assert registry.rejected() == {card.key_id: "card-signature"}


def test_a_registry_opened_from_a_url_and_closed(ca, make_card, tmp_path):
    registry = Registry(f"dir://{tmp_path}", bundles=ca.bundles)
    card = orders_card(make_card)
    registry.publish(card)
    assert (tmp_path / f"{card.key_id}.card").read_bytes() == card.to_bytes()
    registry.close()
    registry.close()
    with pytest.raises(RegistryError, match="closed"):
        registry.by_service("orders")


def test_secure_naming_from_a_real_policy_document(store, ca, make_card):
    policy = Policy.from_dict(
        {"version": 1, "services": {"orders": {"identities": ["example.org/ns/shop/sa/orders"]}}}
    )
    good = orders_card(make_card)
    rogue = make_card(ROGUE, labels={"service": "orders"})
    store.put(rogue.key_id, rogue.to_bytes())
    with Registry(store, bundles=ca.bundles, may_serve=policy.may_serve) as registry:
        registry.publish(good)
        assert registry.by_service("orders") == [good]
        assert registry.stats["misnamed"] == 1


def test_threads_publishing_and_looking_up_at_once(registry, make_card):
    cards = [orders_card(make_card, 8000 + i) for i in range(40)]
    failures: list[BaseException] = []

    def publisher(part: list[Card]) -> None:
        for card in part:
            registry.publish(card)

    def reader() -> None:
        try:
            for _ in range(100):
                for card in registry.by_service("orders"):
                    assert registry.by_key(card.curve_key) == card
                registry.changed_since(None)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=publisher, args=(cards[i::4],)) for i in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert registry.by_service("orders") == sorted(cards, key=lambda c: c.key_id)
    assert registry.stats["published"] == 40
