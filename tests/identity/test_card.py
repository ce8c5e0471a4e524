"""Identity cards: signing, the canonical encoding, and every verification rule, on real SVIDs.

Every card here has a real CURVE key pair (``zmq.curve_keypair()``) and a real SVID from a
DevCA, so the key proof and the SVID signature are the ones a Mesh makes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import attrs
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib._exceptions import IdentityError
from zmeshlib._models import Endpoint, Peer
from zmeshlib.identity import _xeddsa
from zmeshlib.identity.card import KEY_PROOF_SIZE, MAGIC, MAX_CARD_SIZE, VERSION, Card, _sign_with
from zmeshlib.identity.devca import DevCA
from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.registry import Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
ROGUE = "spiffe://example.org/ns/rogue/sa/thief"


def keypair() -> tuple[bytes, bytes]:
    """A fresh CURVE key pair, raw (32 + 32 bytes)."""
    public, secret = zmq.curve_keypair()
    return zmq.utils.z85.decode(public), zmq.utils.z85.decode(secret)


def curve_key() -> bytes:
    return keypair()[0]


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("example.org")


@pytest.fixture(scope="module")
def svid(ca):
    return ca.issue_svid(ORDERS, key="ed25519")


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return keypair()


@pytest.fixture(scope="module")
def key(pair) -> bytes:
    return pair[0]


@pytest.fixture(scope="module")
def secret(pair) -> bytes:
    return pair[1]


@pytest.fixture
def card(svid, key, secret) -> Card:
    return Card.sign(
        svid,
        key,
        curve_secret=secret,
        labels={"version": "v2", "service": "orders"},
        endpoints=[
            Endpoint("tcp://127.0.0.1:5555", "PUB"),
            Endpoint("tcp://127.0.0.1:5556", "REP", "orders-admin"),
        ],
        ttl=600,
    )


def sign_svid(card: Card, svid) -> Card:
    """``card`` with a valid SVID signature by ``svid`` over it as it stands (proof untouched)."""
    return attrs.evolve(card, signature=_sign_with(svid.private_key, card.signed_bytes()))


def prove(card: Card, secret: bytes) -> Card:
    """``card`` with a key proof made by the CURVE secret ``secret`` (SVID signature untouched)."""
    return attrs.evolve(card, key_proof=_xeddsa.sign(secret, card.key_proof_message()))


def resign(card: Card, svid, secret: bytes, **changes) -> Card:
    """A card with ``changes``, proven by ``secret`` and signed by ``svid`` (bypassing Card.sign)."""
    return sign_svid(prove(attrs.evolve(card, **changes), secret), svid)


def rule_of(fn) -> str:
    with pytest.raises(IdentityError) as info:
        fn()
    return info.value.rule


# -- signing and round trips ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_every_svid_key_type_signs_a_card_that_round_trips_and_verifies(ca, key, secret, kind):
    svid = ca.issue_svid(PAYMENT, key=kind)
    card = Card.sign(svid, key, curve_secret=secret, labels={"service": "payment"})
    decoded = Card.from_bytes(card.to_bytes())
    assert decoded == card
    assert decoded.to_bytes() == card.to_bytes()
    peer = decoded.verify(ca.bundles)
    assert peer == Peer(SpiffeId.parse(PAYMENT), key)
    assert peer.labels == {"service": "payment"}


def test_sign_clamps_the_window_to_the_svid_and_to_whole_milliseconds(ca, key, secret):
    svid = ca.issue_svid(ORDERS, ttl=100, key="ed25519")
    now = svid.not_before + 10.0004567
    short = Card.sign(svid, key, curve_secret=secret, now=now, ttl=30)
    assert short.not_before == pytest.approx(svid.not_before + 10, abs=0.001)
    assert short.not_before <= now and short.not_after == short.not_before + 30
    assert Card.sign(svid, key, curve_secret=secret, now=now).not_after == svid.not_after
    assert (
        Card.sign(svid, key, curve_secret=secret, now=now, ttl=10_000).not_after == svid.not_after
    )
    early = Card.sign(svid, key, curve_secret=secret, now=svid.not_before - 50)
    assert early.not_before == svid.not_before
    for c in (short, early):
        assert c.not_before * 1000 == int(c.not_before * 1000)


def test_sign_refuses_an_svid_without_key_or_past_its_expiry(ca, key, secret):
    svid = ca.issue_svid(ORDERS, ttl=100, key="ed25519")
    public_only = type(svid)(svid.spiffe_id, svid.certificates)
    assert rule_of(lambda: Card.sign(public_only, key, curve_secret=secret)) == (
        "card-no-private-key"
    )
    late = svid.not_after + 1
    assert rule_of(lambda: Card.sign(svid, key, curve_secret=secret, now=late)) == (
        "card-svid-expired"
    )
    assert rule_of(lambda: Card.sign(svid, key, curve_secret=secret, ttl=0)) == (
        "card-svid-expired"
    )


def test_sign_needs_the_secret_of_the_very_key_it_binds(svid, key, secret):
    other_public, other_secret = keypair()
    assert rule_of(lambda: Card.sign(svid, key, curve_secret=other_secret)) == "card-key-mismatch"
    assert rule_of(lambda: Card.sign(svid, other_public, curve_secret=secret)) == (
        "card-key-mismatch"
    )
    for bad in (b"", secret[:31], secret + b"\x00", b"~" * 40, "#" * 40, 42):
        with pytest.raises(IdentityError) as info:
            Card.sign(svid, key, curve_secret=bad)  # type: ignore[arg-type]
        assert info.value.rule == "card-key-mismatch" and "curve_secret" in str(info.value)
    with pytest.raises(TypeError):
        Card.sign(svid, key)  # type: ignore[call-arg]  # the secret is required, by keyword
    assert Card.sign(svid, key, curve_secret=secret).key_proof != bytes(KEY_PROOF_SIZE)


def test_the_card_keeps_nothing_of_the_curve_secret(svid, key, secret):
    z85_secret = zmq.utils.z85.encode(secret)
    card = Card.sign(svid, key, curve_secret=z85_secret)
    data = card.to_bytes()
    kept = repr(card).encode() + data + repr(attrs.asdict(card)).encode()
    for form in (secret, z85_secret, secret.hex().encode(), repr(secret).encode()):
        assert form not in kept
    assert len(data) == len(card.signed_bytes()) + 2 + len(card.signature)


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


def test_curve_keys_may_be_given_in_z85(ca, svid, secret):
    public, z85_secret = zmq.curve_keypair()
    card = Card.sign(svid, public, curve_secret=z85_secret)
    assert card.curve_key == zmq.utils.z85.decode(public)
    assert card.verify(ca.bundles, curve_key=public.decode()).curve_key == card.curve_key
    as_str = Card.sign(svid, public.decode(), curve_secret=z85_secret.decode())
    assert as_str.verify(ca.bundles).curve_key == card.curve_key
    assert rule_of(lambda: Card.sign(svid, b"~" * 40, curve_secret=secret)) == "card-malformed"
    assert rule_of(lambda: Card.sign(svid, "#" * 40, curve_secret=secret)) == "card-malformed"
    assert rule_of(lambda: Card.sign(svid, b"\x01" * 31, curve_secret=secret)) == ("card-malformed")


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
        ("key_proof", b"\x00" * 64),
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
    assert card.version == VERSION == 2
    future = attrs.evolve(card, version=3)
    assert rule_of(lambda: future.verify(ca.bundles)) == "card-version"
    data = bytearray(card.to_bytes())
    data[len(MAGIC)] = 3
    assert rule_of(lambda: Card.from_bytes(bytes(data))) == "card-version"


def test_a_version_1_card_is_refused_it_carries_no_key_proof(ca, card):
    """Version 1 was version 2 without the key proof: such a card is refused, not trusted."""
    proof_at = len(card.signed_bytes()) - KEY_PROOF_SIZE
    data = card.to_bytes()
    v1 = bytearray(data[:proof_at] + data[proof_at + KEY_PROOF_SIZE :])
    v1[len(MAGIC)] = 1
    with pytest.raises(IdentityError) as info:
        Card.from_bytes(bytes(v1))
    assert info.value.rule == "card-version"
    assert "no proof" in str(info.value) and "upgrade" in str(info.value)
    assert rule_of(lambda: attrs.evolve(card, version=1).verify(ca.bundles)) == "card-version"


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


def test_a_card_for_another_identity_signed_by_a_different_svid_is_an_id_mismatch(ca, card, secret):
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    forged = resign(card, payment, secret, certificates=payment.certificates)
    assert forged.spiffe_id == SpiffeId.parse(ORDERS)
    assert rule_of(lambda: forged.verify(ca.bundles)) == "card-id-mismatch"


def test_a_card_signed_by_a_key_other_than_its_leafs_fails_the_signature(ca, card):
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    forged = sign_svid(card, payment)  # orders' chain, payment's signature
    assert rule_of(lambda: forged.verify(ca.bundles)) == "card-signature"


def test_a_card_from_an_untrusted_ca_or_foreign_trust_domain_fails_the_chain(ca, key, secret):
    rogue = DevCA.create("example.org").issue_svid(ORDERS, key="ed25519")
    rogue_card = Card.sign(rogue, key, curve_secret=secret)
    assert rule_of(lambda: rogue_card.verify(ca.bundles)) == "untrusted"
    foreign = DevCA.create("other.org").issue_svid("spiffe://other.org/ns/x/sa/y", key="ed25519")
    card = Card.sign(foreign, key, curve_secret=secret)
    assert rule_of(lambda: card.verify(ca.bundles)) == "no-bundle-for-trust-domain"


def test_an_expired_card_and_a_not_yet_valid_card(ca, svid, key, secret):
    now = svid.not_before + 100
    card = Card.sign(svid, key, curve_secret=secret, now=now, ttl=60)
    card.verify(ca.bundles, now=now)
    card.verify(ca.bundles, now=now + 59.999)
    assert rule_of(lambda: card.verify(ca.bundles, now=now + 60)) == "card-expired"
    assert rule_of(lambda: card.verify(ca.bundles, now=now - 1)) == "card-not-yet-valid"


def test_a_card_whose_svid_expired_fails_with_the_svid_rule(ca, key, secret):
    svid = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    card = Card.sign(svid, key, curve_secret=secret, now=svid.not_before)
    assert card.not_after == svid.not_after
    rule = rule_of(lambda: card.verify(ca.bundles, now=svid.not_after + 5))
    assert rule == "expired"  # the SVID's rule, distinct from "card-expired"


def test_a_card_that_outlives_its_svid_is_refused(ca, key, secret):
    svid = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    card = Card.sign(svid, key, curve_secret=secret)
    card.verify(ca.bundles)
    longer = resign(card, svid, secret, not_after=svid.not_after + 3600)
    assert rule_of(lambda: longer.verify(ca.bundles)) == "card-outlives-svid"
    earlier = resign(card, svid, secret, not_before=svid.not_before - 3600)
    assert rule_of(lambda: earlier.verify(ca.bundles)) == "card-outlives-svid"


def test_a_card_presented_for_another_curve_key_is_refused(ca, card):
    assert rule_of(lambda: card.verify(ca.bundles, curve_key=curve_key())) == "card-wrong-key"


def test_the_rules_are_distinct(ca, card, svid, key, secret):
    """The acceptance list: each rejection has its own rule."""
    payment = ca.issue_svid(PAYMENT, key="ed25519")
    short = ca.issue_svid(ORDERS, ttl=120, key="ed25519")
    short_card = Card.sign(short, key, curve_secret=secret, now=short.not_before)
    rules = {
        "tampered": rule_of(lambda: attrs.evolve(card, labels={}).verify(ca.bundles)),
        "other-svid": rule_of(
            lambda: resign(card, payment, secret, certificates=payment.certificates).verify(
                ca.bundles
            )
        ),
        "other-curve-key": rule_of(
            lambda: sign_svid(prove(card, keypair()[1]), svid).verify(ca.bundles)
        ),
        "expired-card": rule_of(lambda: card.verify(ca.bundles, now=card.not_after)),
        "expired-svid": rule_of(lambda: short_card.verify(ca.bundles, now=short.not_after + 1)),
        "wrong-key": rule_of(lambda: card.verify(ca.bundles, curve_key=curve_key())),
    }
    assert len(set(rules.values())) == len(rules), rules


def test_a_chain_with_an_intermediate_round_trips_and_verifies(key, secret):
    ca = DevCA.create("example.org", intermediate=True)
    svid = ca.issue_svid(ORDERS, key="ed25519")
    card = Card.sign(svid, key, curve_secret=secret)
    assert len(card.certificates) == 2
    assert Card.from_bytes(card.to_bytes()).verify(ca.bundles).spiffe_id == svid.spiffe_id


# -- possession of the CURVE key ------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(ca) -> Card:
    """The orders workload's card, made as a Mesh makes it: its own key pair, its own SVID."""
    public, secret = keypair()
    svid = ca.issue_svid(ORDERS, key="ed25519")
    return Card.sign(svid, public, curve_secret=secret, labels={"service": "orders"})


def rogue_card_for(victim: Card, rogue_svid, proof_secret: bytes | None) -> Card:
    """What a rogue can assemble by hand: the victim's public key, its own ID and SVID."""
    own_public, own_secret = keypair()
    template = Card.sign(rogue_svid, own_public, curve_secret=own_secret, ttl=600)
    forged = attrs.evolve(template, curve_key=victim.curve_key)
    if proof_secret is not None:
        forged = prove(forged, proof_secret)
    else:  # the victim's genuine proof, copied from the victim's card
        forged = attrs.evolve(forged, key_proof=victim.key_proof)
    return sign_svid(forged, rogue_svid)


@pytest.mark.parametrize("kind", ["ed25519", "ec-p256"])
def test_a_rogue_cannot_sign_a_card_binding_the_victims_curve_key(ca, victim, kind):
    rogue = ca.issue_svid(ROGUE, key=kind)
    _, rogue_secret = keypair()
    with pytest.raises(IdentityError) as info:
        Card.sign(rogue, victim.curve_key, curve_secret=rogue_secret)
    assert info.value.rule == "card-key-mismatch"
    assert victim.key_id in str(info.value)


@pytest.mark.parametrize("kind", ["ed25519", "ec-p256"])
@pytest.mark.parametrize("proof_by", ["rogue's own key", "victim's proof copied"])
def test_a_hand_assembled_rogue_card_for_the_victims_key_fails_the_key_proof(
    ca, victim, kind, proof_by
):
    rogue = ca.issue_svid(ROGUE, key=kind)
    secret = keypair()[1] if proof_by == "rogue's own key" else None
    forged = Card.from_bytes(rogue_card_for(victim, rogue, secret).to_bytes())
    assert forged.spiffe_id == SpiffeId.parse(ROGUE) and forged.curve_key == victim.curve_key
    with pytest.raises(IdentityError) as info:
        forged.verify(ca.bundles, curve_key=victim.curve_key)
    assert info.value.rule == "card-key-proof"
    assert ROGUE in str(info.value) and victim.key_id in str(info.value)


def test_the_registry_never_hands_out_a_rogue_card_for_the_victims_key(ca, victim, tmp_path: Path):
    """The whole finding, on a real directory store: publish refused, a planted file ignored."""
    rogue = ca.issue_svid(ROGUE, key="ed25519")
    forged = rogue_card_for(victim, rogue, keypair()[1])
    with Registry(f"dir://{tmp_path}", bundles=ca.bundles) as registry:
        registry.publish(victim)
        assert registry.by_key(victim.curve_key) == victim
        assert rule_of(lambda: registry.publish(forged)) == "card-key-proof"
        assert registry.by_key(victim.curve_key) == victim
        # written straight into the untrusted store, over the victim's file
        registry.store.put(victim.key_id, forged.to_bytes())
        assert registry.by_key(victim.curve_key) is None
        assert registry.rejected() == {victim.key_id: "card-key-proof"}
        registry.publish(victim)
        assert registry.by_key(victim.curve_key) == victim


@pytest.mark.parametrize(
    "changes",
    [
        {"labels": {"service": "orders", "version": "v3"}},
        {"labels": {}},
        {"endpoints": (Endpoint("tcp://127.0.0.1:5555", "PUB"),)},
        {
            "endpoints": (
                Endpoint("tcp://10.0.0.9:5555", "PUB"),
                Endpoint("tcp://127.0.0.1:5556", "REP", "orders-admin"),
            )
        },
        {"not_after_delta": -1.0},
    ],
)
def test_a_proof_lifted_onto_another_card_of_the_same_key_and_svid_fails(ca, svid, card, changes):
    """The SVID holder re-signs honestly; only the proof is old: it names the old content."""
    if "not_after_delta" in changes:
        changes = {"not_after": card.not_after + changes["not_after_delta"]}
    lifted = sign_svid(attrs.evolve(card, **changes), svid)
    assert lifted.key_proof == card.key_proof and lifted.signed_bytes() != card.signed_bytes()
    assert rule_of(lambda: lifted.verify(ca.bundles)) == "card-key-proof"


def test_a_rotated_svid_needs_a_new_proof_and_card_sign_makes_one(ca, card, key, secret):
    renewed = ca.issue_svid(ORDERS, key="ed25519")
    stale_proof = sign_svid(attrs.evolve(card, certificates=renewed.certificates), renewed)
    assert rule_of(lambda: stale_proof.verify(ca.bundles)) == "card-key-proof"
    rotated = Card.sign(renewed, key, curve_secret=secret, labels=card.labels, ttl=600)
    assert rotated.verify(ca.bundles, curve_key=key).spiffe_id == card.spiffe_id
    assert rotated.key_id == card.key_id and rotated.key_proof != card.key_proof


def test_each_signature_is_checked_with_its_own_key(ca, card, svid, secret):
    """SVID signature good, proof bad: key proof; proof good, SVID signature bad: signature."""
    other_secret = keypair()[1]
    assert rule_of(lambda: sign_svid(prove(card, other_secret), svid).verify(ca.bundles)) == (
        "card-key-proof"
    )
    assert rule_of(lambda: prove(card, secret).verify(ca.bundles)) == "card-signature"
    sign_svid(prove(card, secret), svid).verify(ca.bundles)  # both fresh: fine


@pytest.mark.parametrize(
    "u",
    [
        _xeddsa.P,
        2**256 - 1,
        _xeddsa.P - 1,
        *sorted(_xeddsa.SMALL_ORDER_U),
    ],
)
def test_a_curve_key_no_secret_key_has_fails_the_key_proof(ca, svid, card, u):
    odd = attrs.evolve(card, curve_key=u.to_bytes(32, "little"))
    odd = sign_svid(prove(odd, keypair()[1]), svid)  # a well-formed card in every other way
    with pytest.raises(IdentityError) as info:
        Card.from_bytes(odd.to_bytes()).verify(ca.bundles)
    assert info.value.rule == "card-key-proof"
    assert "no secret key" in str(info.value)


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
    for data in (junk, card.to_bytes()[: len(junk)] + junk, MAGIC + bytes([VERSION]) + junk):
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


@pytest.mark.parametrize("proof", [b"", b"\x00" * 63, b"\x00" * 65])
def test_a_key_proof_that_is_not_64_bytes_is_malformed(ca, card, proof):
    unproven = attrs.evolve(card, key_proof=proof)
    assert rule_of(lambda: unproven.to_bytes()) == "card-malformed"
    assert rule_of(lambda: unproven.verify(ca.bundles)) == "card-malformed"


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
