"""Entries whose decoding or verification raises something unexpected are rejected, never raised."""

from __future__ import annotations

import datetime
import types

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib._exceptions import IdentityError
from zmeshlib._models import Endpoint
from zmeshlib.identity.card import Card
from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.registry import UNVERIFIABLE, DirStore, MemoryStore, Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "self-made")])
PRIVATE = "1.3.6.1.4.1.99999."
DER_OID = bytes.fromhex("2b06010401868d1f")  # 1.3.6.1.4.1.99999, as DER encodes it


def self_made_leaf(extensions: list[x509.ExtensionType]) -> tuple[x509.Certificate, object]:
    """A leaf certificate an attacker can make: self-signed, with the extensions given."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, None), key


def malformed_extension_leaf() -> tuple[x509.Certificate, object]:
    """A subjectAltName whose value is not DER: reading the extensions raises ValueError."""
    garbage = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x00garbage")
    return self_made_leaf([garbage])


def duplicate_extension_leaf() -> tuple[x509.Certificate, object]:
    """Two extensions with one OID (raises DuplicateExtension): made as two, then renamed in the DER.

    The certificate's own signature no longer matches, but nothing checks it before the
    extensions are read, and the card signature is made over the renamed DER.
    """
    one, two = (
        x509.UnrecognizedExtension(ObjectIdentifier(PRIVATE + n), b"\x05\x00") for n in "12"
    )
    cert, key = self_made_leaf([one, two])
    der = cert.public_bytes(serialization.Encoding.DER)
    renamed = der.replace(DER_OID + b"\x02", DER_OID + b"\x01")
    assert renamed.count(DER_OID + b"\x01") == 2
    return x509.load_der_x509_certificate(renamed), key


def poisoned_card(sign_card, leaf: tuple[x509.Certificate, object], **kw) -> Card:
    """A card signed (by the real Card.sign) with a self-made leaf: stored bytes anyone can write."""
    cert, key = leaf
    svid = types.SimpleNamespace(
        spiffe_id=SpiffeId.parse(ORDERS), certificates=(cert,), private_key=key
    )
    return sign_card(svid, **kw)


def good_card(make_card, port: int = 5555) -> Card:
    return make_card(
        ORDERS, labels={"service": "orders"}, endpoints=[Endpoint(f"tcp://127.0.0.1:{port}", "REP")]
    )


@pytest.fixture(params=["memory", "dir"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else DirStore(tmp_path / "cards")


@pytest.mark.parametrize(
    "leaf", [malformed_extension_leaf, duplicate_extension_leaf], ids=["malformed", "duplicate"]
)
def test_a_card_whose_leaf_breaks_the_x509_parser_is_rejected_not_raised(
    store, ca, make_card, sign_card, leaf
):
    good = good_card(make_card)
    poisoned = poisoned_card(
        sign_card,
        leaf(),
        labels={"service": "orders"},
        endpoints=[Endpoint("tcp://127.0.0.1:5555", "REP")],
    )
    data = poisoned.to_bytes()
    assert Card.from_bytes(data) == poisoned  # it decodes: only verification can fail
    store.put(poisoned.key_id, data)
    with Registry(store, bundles=ca.bundles) as registry:
        registry.publish(good)
        for _ in range(3):
            assert registry.by_key(poisoned.curve_key) is None
            assert registry.by_service("orders") == [good]
            assert registry.by_service("orders", kind="REP") == [good]
            assert registry.by_endpoint("tcp://127.0.0.1:5555") == good
            assert registry.misnamed("orders") == []
            registry.changed_since(None)
        rejected = registry.rejected()
        # card-unverifiable while the X.509 code raises ValueError, or the SVID rule it
        # raises instead once it reports such a leaf as an IdentityError
        assert set(rejected) == {poisoned.key_id} and rejected[poisoned.key_id]
        assert rejected[poisoned.key_id] != "card-signature"
        assert registry.stats["invalid"] == 1 and registry.stats["corrupt"] == 0


def test_any_exception_from_verify_is_the_rule_card_unverifiable(store, ca, make_card, monkeypatch):
    # The SVID code is being taught to turn every parser failure into an IdentityError, so
    # no real card may still reach the registry's last line of defence: make verify raise
    # for one card to show that line holds whatever verification raises.
    good, odd = good_card(make_card, 5555), good_card(make_card, 5556)
    store.put(odd.key_id, odd.to_bytes())
    real_verify = Card.verify

    def verify(self, *args, **kw):
        if self.key_id == odd.key_id:
            raise ValueError("error parsing asn1 value")
        return real_verify(self, *args, **kw)

    monkeypatch.setattr(Card, "verify", verify)
    with Registry(store, bundles=ca.bundles) as registry:
        registry.publish(good)
        for _ in range(3):
            assert registry.by_key(odd.curve_key) is None
            assert registry.by_service("orders") == [good]
            assert registry.by_endpoint("tcp://127.0.0.1:5556") is None
        assert registry.rejected() == {odd.key_id: UNVERIFIABLE}
        assert registry.stats["invalid"] == 1


@pytest.mark.parametrize("error", [ValueError, TypeError, RecursionError, KeyError])
def test_any_exception_from_decoding_is_the_rule_card_unverifiable(
    ca, make_card, monkeypatch, error
):
    # Card.from_bytes promises IdentityError for every input; this shows the registry does
    # not rely on that promise (the patch stands in for a decoder bug on one entry).
    store = MemoryStore()
    good = good_card(make_card)
    store.put("ab" * 32, b"bytes that crash the decoder")
    real_from_bytes = Card.from_bytes

    def from_bytes(data, **kw):
        if data == b"bytes that crash the decoder":
            raise error("decoder bug")
        return real_from_bytes(data, **kw)

    monkeypatch.setattr(Card, "from_bytes", staticmethod(from_bytes))
    with Registry(store, bundles=ca.bundles) as registry:
        registry.publish(good)
        assert registry.by_key(bytes.fromhex("ab" * 32)) is None
        assert registry.by_service("orders") == [good]
        assert registry.rejected() == {"ab" * 32: UNVERIFIABLE}
        assert registry.stats["invalid"] == 1


def test_an_interrupt_during_verification_is_not_swallowed(ca, make_card, monkeypatch):
    store = MemoryStore()
    card = good_card(make_card)
    store.put(card.key_id, card.to_bytes())

    def verify(self, *args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Card, "verify", verify)
    with Registry(store, bundles=ca.bundles) as registry, pytest.raises(KeyboardInterrupt):
        registry.by_key(card.curve_key)


@pytest.mark.parametrize("leaf", [malformed_extension_leaf, lambda: self_made_leaf([])])
def test_publishing_a_card_that_cannot_be_verified_is_an_identity_error(ca, sign_card, leaf):
    store = MemoryStore()
    with Registry(store, bundles=ca.bundles) as registry:
        with pytest.raises(IdentityError) as info:
            registry.publish(poisoned_card(sign_card, leaf()))
        # card-unverifiable, or the SVID rule once the X.509 checks name this leaf's fault
        assert info.value.rule and info.value.rule != "unspecified"
    assert list(store.scan()) == []


def test_publishing_a_card_whose_verification_crashes_names_card_unverifiable(
    ca, make_card, monkeypatch
):
    # as above, the patch stands in for a verifier bug that real input can no longer reach
    def verify(self, *args, **kw):
        raise ValueError("error parsing asn1 value")

    monkeypatch.setattr(Card, "verify", verify)
    store = MemoryStore()
    with Registry(store, bundles=ca.bundles) as registry:
        with pytest.raises(IdentityError, match="could not be verified") as info:
            registry.publish(good_card(make_card))
        assert info.value.rule == UNVERIFIABLE
    assert list(store.scan()) == []


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_stored_bytes_make_a_lookup_raise(ca, make_card, data):
    good = good_card(make_card)
    encoded = good.to_bytes()
    # arbitrary bytes, or the good card's bytes with a few changed, cut or extended
    junk = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.lists(
                st.tuples(st.integers(0, len(encoded) - 1), st.integers(0, 255)),
                min_size=1,
                max_size=4,
            ).map(lambda edits: _edited(encoded, edits)),
            st.integers(1, len(encoded) - 1).map(lambda n: encoded[:n]),
            st.binary(min_size=1, max_size=20).map(lambda tail: encoded + tail),
        )
    )
    store = MemoryStore()
    store.put("ab" * 32, junk)
    with Registry(store, bundles=ca.bundles) as registry:
        registry.publish(good)
        assert registry.by_key(bytes.fromhex("ab" * 32)) is None  # no card has that key
        assert registry.by_service("orders") == [good]
        assert registry.by_endpoint("tcp://127.0.0.1:5555") == good
        assert set(registry.rejected()) == {"ab" * 32}
        assert registry.stats["corrupt"] + registry.stats["invalid"] == 1


def _edited(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return bytes(out)
