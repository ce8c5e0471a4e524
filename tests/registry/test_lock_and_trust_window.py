"""Verification happens outside the registry's lock; a verdict lasts no longer than its authority."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from zmeshlib._models import Endpoint
from zmeshlib.identity.card import Card
from zmeshlib.identity.devca import DevCA
from zmeshlib.identity.svid import Bundles, TrustBundle
from zmeshlib.registry import MemoryStore, Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
DEADLINE = 10.0
DAY = datetime.timedelta(days=1)


# -- verification outside the lock ---------------------------------------------------------


class SlowVerify:
    """Card.verify that blocks for one card until released.

    Stands in for a card that takes long to verify (a pathological chain): the point is
    what other threads can do meanwhile, so the wait must be under the test's control.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, slow: Card) -> None:
        self.slow_key = slow.key_id
        self.entered = threading.Event()
        self.release = threading.Event()
        real = Card.verify

        def verify(card: Card, *args, **kw):
            if card.key_id == self.slow_key:
                self.entered.set()
                self.release.wait(6 * DEADLINE)  # set at the latest when the test ends
            return real(card, *args, **kw)

        monkeypatch.setattr(Card, "verify", verify)


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("slow_lookup", ["by_key", "by_service"])
def test_a_card_slow_to_verify_does_not_stall_lookups_of_other_keys(
    ca, make_card, monkeypatch, slow_lookup
):
    store = MemoryStore()
    slow = make_card(ORDERS, labels={"service": "orders"})
    other = make_card(PAYMENT, labels={"service": "payment"})
    for card in (slow, other):
        store.put(card.key_id, card.to_bytes())  # straight to the store: publish verifies
    gate = SlowVerify(monkeypatch, slow)
    with Registry(store, bundles=ca.bundles) as registry:
        lookup = {
            "by_key": lambda: registry.by_key(slow.curve_key),
            "by_service": lambda: registry.by_service("orders"),
        }[slow_lookup]
        blocked, blocked_out = in_thread(lookup)
        try:
            assert gate.entered.wait(DEADLINE), "the slow card was never verified"
            # the ZAP thread's lookup for another client's key, while the slow one verifies
            other_lookup, other_out = in_thread(lambda: registry.by_key(other.curve_key))
            other_lookup.join(DEADLINE)
            assert not other_lookup.is_alive(), "a lookup of another key waited for the slow card"
            assert other_out == [other]
            counting, count_out = in_thread(lambda: registry.stats)
            counting.join(DEADLINE)
            assert count_out and count_out[0]["invalid"] == 0
        finally:
            gate.release.set()
            blocked.join(DEADLINE)
        assert blocked_out == ([slow] if slow_lookup == "by_key" else [[slow]])


def test_publish_verifies_outside_the_lock(ca, make_card, monkeypatch):
    store = MemoryStore()
    slow, other = make_card(ORDERS), make_card(PAYMENT)
    store.put(other.key_id, other.to_bytes())
    gate = SlowVerify(monkeypatch, slow)
    with Registry(store, bundles=ca.bundles) as registry:
        publishing, _ = in_thread(lambda: registry.publish(slow))
        try:
            assert gate.entered.wait(DEADLINE)
            looking, out = in_thread(lambda: registry.by_key(other.curve_key))
            looking.join(DEADLINE)
            assert not looking.is_alive() and out == [other]
        finally:
            gate.release.set()
            publishing.join(DEADLINE)
        assert registry.by_key(slow.curve_key) == slow


# -- a verdict holds no longer than the bundle's authority ------------------------------------


def short_root_ca(directory: Path, root_ttl: float) -> DevCA:
    """A dev CA whose root expires after ``root_ttl`` s, under an intermediate valid for a day.

    DevCA caps every certificate at its signer's expiry, so the card's own chain (leaf and
    intermediate) would end with the root. A CA that re-issues its intermediate for longer
    than its root (or trusts a root for less than it signed for) gives a card whose whole
    chain outlives the authority in the bundle: that is the case to test. The intermediate
    is re-issued here exactly as DevCA made it (same subject, key and extensions), for a day.
    """
    DevCA.create("example.org", intermediate=True, ttl=root_ttl).save(directory)
    root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
    root_key = serialization.load_pem_private_key((directory / "root_key.pem").read_bytes(), None)
    old = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(root.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_before_utc + DAY)
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    (directory / "intermediate.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return DevCA.load(directory)


def reissued_root(directory: Path, days: int) -> x509.Certificate:
    """The same root (subject and key) in a certificate valid for ``days`` more days."""
    root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
    root_key = serialization.load_pem_private_key((directory / "root_key.pem").read_bytes(), None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(root.subject)
        .public_key(root.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc + days * DAY)
    )
    for ext in root.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(root_key, hashes.SHA256())  # type: ignore[arg-type]


@pytest.fixture
def short_ca(tmp_path) -> DevCA:
    return short_root_ca(tmp_path / "ca", root_ttl=120)


def counting_verify(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = Card.verify

    def verify(card, *args, **kw):
        calls.append(card.key_id)
        return real(card, *args, **kw)

    monkeypatch.setattr(Card, "verify", verify)
    return calls


def test_a_cached_verdict_ends_when_the_bundles_root_expires(
    short_ca, sign_card, clock, monkeypatch
):
    root_end = short_ca.root.not_valid_after_utc.timestamp()
    svid = short_ca.issue_svid(ORDERS, ttl=3600, key="ed25519")
    card = sign_card(
        svid,
        labels={"service": "orders"},
        endpoints=[Endpoint("tcp://127.0.0.1:5555", "REP")],
        now=clock.now,
    )
    assert card.not_after > root_end + 3000  # the card outlives the root by most of an hour
    store = MemoryStore()
    store.put(card.key_id, card.to_bytes())
    calls = counting_verify(monkeypatch)
    with Registry(store, bundles=short_ca.bundles, clock=clock) as registry:
        assert registry.by_key(card.curve_key) == card
        assert registry.by_service("orders") == [card]
        changed, token = registry.changed_since(None)
        assert changed and calls == [card.key_id]  # one verification serves every lookup
        clock.now = root_end  # the root is valid through its notAfter instant
        assert registry.by_key(card.curve_key) == card
        assert registry.changed_since(token) == (False, token)
        assert calls == [card.key_id]
        clock.now = root_end + 0.001
        changed, token = registry.changed_since(token)
        assert changed
        assert registry.by_key(card.curve_key) is None
        assert registry.by_service("orders") == []
        assert registry.by_endpoint("tcp://127.0.0.1:5555") is None
        assert registry.rejected() == {card.key_id: "expired"}
        assert registry.stats["invalid"] == 1
        assert registry.changed_since(token) == (False, token)
        clock.now += 60
        assert registry.by_key(card.curve_key) is None
        assert len(calls) == 2  # verified once more, at the boundary, and no more


def test_a_verdict_whose_root_expired_stands_if_another_authority_still_vouches(
    tmp_path, sign_card, clock, monkeypatch
):
    short_ca = short_root_ca(tmp_path / "ca", root_ttl=120)
    root_end = short_ca.root.not_valid_after_utc.timestamp()
    longer = reissued_root(tmp_path / "ca", days=2)  # a rotation the bundle already holds
    bundles = Bundles([TrustBundle("example.org", (short_ca.root, longer))])
    card = sign_card(
        short_ca.issue_svid(ORDERS, ttl=3600), labels={"service": "orders"}, now=clock.now
    )
    store = MemoryStore()
    store.put(card.key_id, card.to_bytes())
    calls = counting_verify(monkeypatch)
    with Registry(store, bundles=bundles, clock=clock) as registry:
        assert registry.by_service("orders") == [card]
        _, token = registry.changed_since(None)
        clock.now = root_end + 1
        assert registry.by_service("orders") == [card]
        assert registry.by_key(card.curve_key) == card
        assert registry.rejected() == {}
        assert registry.changed_since(token) == (False, token)  # no lookup answers differently
        assert len(calls) == 2  # re-verified once when the earlier root expired


def test_a_card_first_seen_after_its_root_expired_is_rejected(short_ca, sign_card, clock):
    root_end = short_ca.root.not_valid_after_utc.timestamp()
    card = sign_card(short_ca.issue_svid(ORDERS, ttl=3600), now=clock.now)
    store = MemoryStore()
    store.put(card.key_id, card.to_bytes())
    clock.now = root_end + 10
    with Registry(store, bundles=short_ca.bundles, clock=clock) as registry:
        assert registry.by_key(card.curve_key) is None
        assert registry.rejected() == {card.key_id: "expired"}
