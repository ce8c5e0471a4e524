"""Identity cards: signing, the canonical encoding, and every verification rule, on real SVIDs."""

from __future__ import annotations

import struct

import attrs
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib._exceptions import IdentityError
from zmeshlib._models import Endpoint, Peer
from zmeshlib.identity.card import MAGIC, MAX_CARD_SIZE, Card
from zmeshlib.identity.devca import DevCA
from zmeshlib.identity.spiffe_id import SpiffeId

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"


def curve_key() -> bytes:
    return zmq.utils.z85.decode(zmq.curve_keypair()[0])


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("example.org")


@pytest.fixture(scope="module")
def svid(ca):
    return ca.issue_svid(ORDERS, key="ed25519")


@pytest.fixture(scope="module")
def key() -> bytes:
    return curve_key()


@pytest.fixture
def card(svid, key) -> Card:
    return Card.sign(
        svid,
        key,
        labels={"version": "v2", "service": "orders"},
        endpoints=[
            Endpoint("tcp://127.0.0.1:5555", "PUB"),
            Endpoint("tcp://127.0.0.1:5556", "REP", "orders-admin"),
        ],
        ttl=600,
    )


def resign(card: Card, svid, **changes) -> Card:
    """A card with ``changes`` and a valid signature by ``svid`` (bypassing Card.sign's clamps)."""
    unsigned = attrs.evolve(card, **changes)
    return attrs.evolve(unsigned, signature=svid.private_key.sign(unsigned.signed_bytes()))


def rule_of(fn) -> str:
    with pytest.raises(IdentityError) as info:
        fn()
    return info.value.rule


# -- signing and round trips ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_every_svid_key_type_signs_a_card_that_round_trips_and_verifies(ca, key, kind):
    svid = ca.issue_svid(PAYMENT, key=kind)
    card = Card.sign(svid, key, labels={"service": "payment"})
    decoded = Card.from_bytes(card.to_bytes())
    assert decoded == card
    assert decoded.to_bytes() == card.to_bytes()
    peer = decoded.verify(ca.bundles)
    assert peer == Peer(SpiffeId.parse(PAYMENT), key)
    assert peer.labels == {"service": "payment"}


def test_sign_clamps_the_window_to_the_svid_and_to_whole_milliseconds(ca, key):
    svid = ca.issue_svid(ORDERS, ttl=100, key="ed25519")
    now = svid.not_before + 10.0004567
    short = Card.sign(svid, key, now=now, ttl=30)
    assert short.not_before == pytest.approx(svid.not_before + 10, abs=0.001)
    assert short.not_before <= now and short.not_after == short.not_before + 30
    assert Card.sign(svid, key, now=now).not_after == svid.not_after
    assert Card.sign(svid, key, now=now, ttl=10_000).not_after == svid.not_after
    early = Card.sign(svid, key, now=svid.not_before - 50)
    assert early.not_before == svid.not_before
    for c in (short, early):
        assert c.not_before * 1000 == int(c.not_before * 1000)


def test_sign_refuses_an_svid_without_key_or_past_its_expiry(ca, key):
    svid = ca.issue_svid(ORDERS, ttl=100, key="ed25519")
    public_only = type(svid)(svid.spiffe_id, svid.certificates)
    assert rule_of(lambda: Card.sign(public_only, key)) == "card-no-private-key"
    late = svid.not_after + 1
    assert rule_of(lambda: Card.sign(svid, key, now=late)) == "card-svid-expired"
    assert rule_of(lambda: Card.sign(svid, key, ttl=0)) == "card-svid-expired"


def test_views_key_id_z85_peer_services_and_endpoints(card, key):
    assert card.key_id == key.hex() and len(card.key_id) == 64
    assert zmq.utils.z85.decode(card.curve_key_z85) == key
    assert card.peer == Peer(SpiffeId.parse(ORDERS), key)
    assert card.services == {"orders", "orders-admin"}
    assert card.endpoints_for("orders") == (Endpoint("tcp://127.0.0.1:5555", "PUB"),)
    assert card.endpoints_for("orders", "REP") == ()
    assert [e.address for e in card.endpoints_for("orders-admin", "REP")] == [
        "tcp://127.0.0.1:5556"
    ]
    assert list(card.labels) == ["service", "version"]  # canonical (sorted) order


def test_curve_key_may_be_given_in_z85(ca, svid):
    public, _ = zmq.curve_keypair()
    card = Card.sign(svid, public)
    assert card.curve_key == zmq.utils.z85.decode(public)
    assert card.verify(ca.bundles, curve_key=public.decode()).curve_key == card.curve_key
    assert rule_of(lambda: Card.sign(svid, b"~" * 40)) == "card-malformed"
    assert rule_of(lambda: Card.sign(svid, "#" * 40)) == "card-malformed"


# -- verification rules ----------------------------------------------------------------


def test_a_fresh_card_verifies_and_returns_the_peer(ca, card, key):
    peer = card.verify(ca.bundles, curve_key=key)
    assert str(peer) == ORDERS and peer.curve_key == key
    assert peer.labels == {"service": "orders", "version": "v2"}


@pytest.mark.parametrize(
    "field,value",
    [
        ("spiffe_id", SpiffeId.parse(PAYMENT)),
        ("curve_key", b"\x01" * 32),
        ("not_before", 1.0),
        ("not_after", 4_000_000_000.0),
        ("labels", {"service": "payment", "version": "v2"}),
        ("endpoints", (Endpoint("tcp://127.0.0.1:6666", "PUB"),)),
        ("endpoints", ()),
        ("signature", b"\x00" * 64),
    ],
)
def test_a_tampered_field_breaks_the_signature(ca, card, field, value):
    tampered = attrs.evolve(card, **{field: value})
    assert rule_of(lambda: tampered.verify(ca.bundles, card.not_before)) == "card-signature"
    again = Card.from_bytes(tampered.to_bytes())  # survives storage, still rejected
    assert rule_of(lambda: again.verify(ca.bundles, card.not_before)) == "card-signature"


def test_certificates_swapped_for_another_svid_of_the_same_id_break_the_signature(ca, card):
    other = ca.issue_svid(ORDERS, key="ed25519")
    tampered = attrs.evolve(card, certificates=other.certificates)
    assert rule_of(lambda: tampered.verify(ca.bundles)) == "card-signature"


def test_an_unknown_version_is_refused_before_anything_else(ca, card):
    future = attrs.evolve(card, version=2)
    assert rule_of(lambda: future.verify(ca.bundles)) == "card-version"
    data = bytearray(card.to_bytes())
    data[len(MAGIC)] = 2
    assert rule_of(lambda: Card.from_bytes(bytes(data))) == "card-version"


def test_every_single_byte_flip_is_rejected(ca, card):
    data = card.to_bytes()
    accepted = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        try:
            Card.from_bytes(bytes(flipped)).verify(ca.bundles)
        except IdentityError:
            continue
        accepted.append(i)
    assert accepted == []


def test_a_card_for_another_identity_signed_by_a_different_svid_is_an_id_mismatch(ca, card, key):
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    forged = resign(card, payment, certificates=payment.certificates)
    assert forged.spiffe_id == SpiffeId.parse(ORDERS)
    assert rule_of(lambda: forged.verify(ca.bundles)) == "card-id-mismatch"


def test_a_card_signed_by_a_key_other_than_its_leafs_fails_the_signature(ca, card):
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    forged = resign(card, payment)  # orders' chain, payment's signature
    assert rule_of(lambda: forged.verify(ca.bundles)) == "card-signature"


def test_a_card_from_an_untrusted_ca_or_foreign_trust_domain_fails_the_chain(ca, key):
    rogue = DevCA.create("example.org").issue_svid(ORDERS, key="ed25519")
    assert rule_of(lambda: Card.sign(rogue, key).verify(ca.bundles)) == "untrusted"
    foreign = DevCA.create("other.org").issue_svid("spiffe://other.org/ns/x/sa/y", key="ed25519")
    card = Card.sign(foreign, key)
    assert rule_of(lambda: card.verify(ca.bundles)) == "no-bundle-for-trust-domain"


def test_an_expired_card_and_a_not_yet_valid_card(ca, svid, key):
    now = svid.not_before + 100
    card = Card.sign(svid, key, now=now, ttl=60)
    card.verify(ca.bundles, now=now)
    card.verify(ca.bundles, now=now + 59.999)
    assert rule_of(lambda: card.verify(ca.bundles, now=now + 60)) == "card-expired"
    assert rule_of(lambda: card.verify(ca.bundles, now=now - 1)) == "card-not-yet-valid"


def test_a_card_whose_svid_expired_fails_with_the_svid_rule(ca, key):
    svid = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    card = Card.sign(svid, key, now=svid.not_before)
    assert card.not_after == svid.not_after
    rule = rule_of(lambda: card.verify(ca.bundles, now=svid.not_after + 5))
    assert rule == "expired"  # the SVID's rule, distinct from "card-expired"


def test_a_card_that_outlives_its_svid_is_refused(ca, key):
    svid = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    card = Card.sign(svid, key)
    card.verify(ca.bundles)
    longer = resign(card, svid, not_after=svid.not_after + 3600)
    assert rule_of(lambda: longer.verify(ca.bundles)) == "card-outlives-svid"
    earlier = resign(card, svid, not_before=svid.not_before - 3600)
    assert rule_of(lambda: earlier.verify(ca.bundles)) == "card-outlives-svid"


def test_a_card_presented_for_another_curve_key_is_refused(ca, card):
    assert rule_of(lambda: card.verify(ca.bundles, curve_key=curve_key())) == "card-wrong-key"


def test_the_rules_are_distinct(ca, card, svid, key):
    """The acceptance list: each rejection has its own rule."""
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    short = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    short_card = Card.sign(short, key, now=short.not_before)
    rules = {
        "tampered": rule_of(lambda: attrs.evolve(card, labels={}).verify(ca.bundles)),
        "other-svid": rule_of(
            lambda: resign(card, payment, certificates=payment.certificates).verify(ca.bundles)
        ),
        "expired-card": rule_of(lambda: card.verify(ca.bundles, now=card.not_after)),
        "expired-svid": rule_of(lambda: short_card.verify(ca.bundles, now=short.not_after + 1)),
        "wrong-key": rule_of(lambda: card.verify(ca.bundles, curve_key=curve_key())),
    }
    assert len(set(rules.values())) == len(rules), rules


def test_a_chain_with_an_intermediate_round_trips_and_verifies(key):
    ca = DevCA.create("example.org", intermediate=True)
    svid = ca.issue_svid(ORDERS, key="ed25519")
    card = Card.sign(svid, key)
    assert len(card.certificates) == 2
    assert Card.from_bytes(card.to_bytes()).verify(ca.bundles).spiffe_id == svid.spiffe_id


# -- decoding: only IdentityError, whatever the bytes ---------------------------------------


def test_every_truncation_is_malformed(card):
    data = card.to_bytes()
    for n in range(len(data)):
        assert rule_of(lambda n=n: Card.from_bytes(data[:n])) == "card-malformed", n


def test_trailing_bytes_bad_magic_and_size_limits(card):
    data = card.to_bytes()
    assert rule_of(lambda: Card.from_bytes(data + b"\x00")) == "card-malformed"
    assert rule_of(lambda: Card.from_bytes(b"x" + data[1:])) == "card-malformed"
    assert rule_of(lambda: Card.from_bytes(data, max_size=len(data) - 1)) == "card-too-large"
    assert rule_of(lambda: Card.from_bytes(b"\x00" * (MAX_CARD_SIZE + 1))) == "card-too-large"
    assert rule_of(lambda: Card.from_bytes("text")) == "card-malformed"  # type: ignore[arg-type]


def test_non_canonical_label_order_is_malformed(card):
    data = card.to_bytes()
    sorted_labels = b"\x07service\x00\x06orders\x07version\x00\x02v2"
    swapped = b"\x07version\x00\x02v2\x07service\x00\x06orders"
    assert data.count(sorted_labels) == 1
    assert (
        rule_of(lambda: Card.from_bytes(data.replace(sorted_labels, swapped))) == "card-malformed"
    )


def test_an_invalid_spiffe_id_or_text_inside_is_malformed(card):
    data = card.to_bytes()
    bad_id = data.replace(ORDERS.encode(), ORDERS.upper().encode().replace(b"SPIFFE", b"spiffe"))
    assert rule_of(lambda: Card.from_bytes(bad_id)) == "card-malformed"
    bad_utf8 = data.replace(b"\x02v2", b"\x02\xff\xfe")
    assert rule_of(lambda: Card.from_bytes(bad_utf8)) == "card-malformed"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_identity_errors(card, junk):
    for data in (junk, card.to_bytes()[: len(junk)] + junk, MAGIC + b"\x01" + junk):
        try:
            Card.from_bytes(data)
        except IdentityError as e:
            assert e.rule.startswith("card-")


@pytest.mark.parametrize(
    "changes",
    [
        {"curve_key": b"\x01" * 31},
        {"labels": {"": "empty key"}},
        {"labels": {"k": "v" * 1025}},
        {"labels": {f"k{i}": "v" for i in range(65)}},
        {"endpoints": (Endpoint("", "PUB"),)},
        {"endpoints": (Endpoint("tcp://127.0.0.1:1", "X" * 17),)},
        {"certificates": ()},
        {"not_before": 10.0, "not_after": 10.0},
        {"not_before": -1.0},
        {"not_after": float("inf")},
    ],
)
def test_encoding_limits_are_enforced(card, changes):
    assert rule_of(lambda: attrs.evolve(card, **changes).to_bytes()) == "card-malformed"


def test_an_empty_signature_is_refused(ca, card):
    unsigned = attrs.evolve(card, signature=b"")
    assert rule_of(lambda: unsigned.to_bytes()) == "card-malformed"
    assert rule_of(lambda: unsigned.verify(ca.bundles)) == "card-signature"


def test_length_prefixes_are_big_endian(card):
    data = card.to_bytes()
    start = len(MAGIC) + 1
    (n,) = struct.unpack(">H", data[start : start + 2])
    assert data[start + 2 : start + 2 + n] == ORDERS.encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_cards_raise_only_identity_errors(ca, card, edits):
    data = bytearray(card.to_bytes())
    for position, value in edits:
        data[position % len(data)] = value
    try:
        Card.from_bytes(bytes(data)).verify(ca.bundles)
    except IdentityError:
        return
    assert bytes(data) == card.to_bytes()  # only a no-op edit may verify
