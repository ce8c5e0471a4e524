"""Card test vectors: tests/vectors/cards.json and docs/protocol.md agree with the code, byte for byte.

Everything in the vectors is deterministic (Ed25519 keys from fixed seeds, ECDSA with
RFC 6979 nonces, a fixed CURVE secret key and fixed XEdDSA nonce randomness, fixed serials
and dates), so ``generate()`` rebuilds the file exactly. The XEdDSA signer behind the key
proof is checked here too, against independent implementations (cryptography's Ed25519 and
X25519). Regenerate after a deliberate format change with::

    .venv/bin/python tests/identity/test_card_vectors.py --write   # then paste --docs output
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import zmq
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq.utils import z85

from zmeshlib._exceptions import IdentityError
from zmeshlib._models import Endpoint
from zmeshlib.identity import _xeddsa
from zmeshlib.identity.card import KEY_PROOF_DOMAIN, KEY_PROOF_SIZE, MAGIC, Card
from zmeshlib.identity.svid import Bundles, TrustBundle, X509Svid

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "cards.json"
PROTOCOL = ROOT / "docs" / "protocol.md"

TRUST_DOMAIN = "example.org"
SPIFFE_ID = "spiffe://example.org/ns/shop/sa/orders"
NOT_BEFORE_MS = 1_767_229_200_000  # 2026-01-01T01:00:00Z, an hour into the leaf's validity
NOT_AFTER_MS = NOT_BEFORE_MS + 3_600_500
VERIFY_AT_MS = NOT_BEFORE_MS + 1_800_000


# -- the generator ---------------------------------------------------------------------


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"zmeshlib card vector {label}".encode()).digest()


CURVE_SECRET = _seed("curve secret key")
CURVE_PUBLIC = z85.decode(zmq.curve_public(z85.encode(CURVE_SECRET)))
KEY_PROOF_Z = hashlib.sha512(b"zmeshlib card vector key proof nonce").digest()
OTHER_CURVE_SECRET = _seed("another curve secret key")


def _utc(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=timezone.utc)


def _usage(**flags: bool) -> x509.KeyUsage:
    names: tuple[str, ...] = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
    )
    names += ("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def _certificate(name: str, serial: int, public_key: Any, issuer: Any, *, ca: bool) -> Any:
    """A certificate signed by ``issuer`` = (name, Ed25519 key), deterministic."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    uri = f"spiffe://{TRUST_DOMAIN}" if ca else SPIFFE_ID
    usage = _usage(key_cert_sign=True, crl_sign=True) if ca else _usage(digital_signature=True)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0])
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_utc(2025) if ca else _utc(2026))
        .not_valid_after(_utc(2036) if ca else _utc(2027))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=not ca
        )
    )
    return builder.sign(issuer[1], None)


def _card_fields(leaf: x509.Certificate) -> dict[str, Any]:
    return {
        "spiffe_id": SPIFFE_ID,
        "curve_key": CURVE_PUBLIC,
        "not_before": NOT_BEFORE_MS / 1000,
        "not_after": NOT_AFTER_MS / 1000,
        "labels": {"version": "v2", "service": "orders"},
        "endpoints": (
            Endpoint("tcp://127.0.0.1:5555", "PUB"),
            Endpoint("tcp://127.0.0.1:5556", "REP", "orders-admin"),
        ),
        "certificates": (leaf,),
    }


def _describe(name: str, card: Card, private_key_hex: str, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "note": note,
        "leaf_private_key_hex": private_key_hex,
        "spiffe_id": str(card.spiffe_id),
        "curve_key_hex": card.curve_key.hex(),
        "curve_key_z85": card.curve_key_z85,
        "not_before_ms": NOT_BEFORE_MS,
        "not_after_ms": NOT_AFTER_MS,
        "labels": dict(card.labels),
        "endpoints": [attrs.asdict(e) for e in card.endpoints],
        "certificates_der_hex": [
            c.public_bytes(serialization.Encoding.DER).hex() for c in card.certificates
        ],
        "curve_secret_hex": CURVE_SECRET.hex(),
        "edwards_public_key_hex": _xeddsa.edwards_public_key(card.curve_key).hex(),
        "key_proof_z_hex": KEY_PROOF_Z.hex(),
        "key_proof_hex": card.key_proof.hex(),
        "signed_bytes_hex": card.signed_bytes().hex(),
        "signature_hex": card.signature.hex(),
        "card_hex": card.to_bytes().hex(),
        "verify_at_ms": VERIFY_AT_MS,
    }


def _prove(card: Card, secret: bytes, leaf_key: ed25519.Ed25519PrivateKey) -> Card:
    """``card`` with a key proof by ``secret`` (nonce randomness fixed) and the leaf's signature."""
    proven = attrs.evolve(
        card, key_proof=_xeddsa.sign(secret, card.key_proof_message(), z=KEY_PROOF_Z)
    )
    return attrs.evolve(proven, signature=leaf_key.sign(proven.signed_bytes()))


def _invalid(card: Card, leaf_key: ed25519.Ed25519PrivateKey) -> list[dict[str, Any]]:
    data = card.to_bytes()
    version_3 = bytearray(data)
    version_3[len(MAGIC)] = 3
    # version 1: the same fields without the key proof (the layout before version 2)
    version_1 = bytearray(data[: len(card.signed_bytes()) - KEY_PROOF_SIZE])
    version_1[len(MAGIC)] = 1
    version_1 += data[len(card.signed_bytes()) :]
    tampered = data.replace(b"\x02v2", b"\x02v3")
    assert tampered != data
    proof_at = len(card.signed_bytes()) - KEY_PROOF_SIZE
    tampered_proof = bytearray(data)
    tampered_proof[proof_at] ^= 0x01
    # what a workload holding only its own CURVE key could make for this card's public key
    other_key = _prove(card, OTHER_CURVE_SECRET, leaf_key).to_bytes()
    # a proof made for other content (another label), re-signed by the SVID key
    lifted = attrs.evolve(
        _prove(card, CURVE_SECRET, leaf_key),
        key_proof=_prove(
            attrs.evolve(card, labels={**card.labels, "version": "v3"}), CURVE_SECRET, leaf_key
        ).key_proof,
    )
    lifted = attrs.evolve(lifted, signature=leaf_key.sign(lifted.signed_bytes()))
    no_edwards_form = attrs.evolve(card, curve_key=(_xeddsa.P - 1).to_bytes(32, "little"))
    no_edwards_form = attrs.evolve(
        no_edwards_form, signature=leaf_key.sign(no_edwards_form.signed_bytes())
    )
    cases = [
        ("truncated", data[:-1], VERIFY_AT_MS, "card-malformed"),
        ("trailing-byte", data + b"\x00", VERIFY_AT_MS, "card-malformed"),
        ("unknown-version", bytes(version_3), VERIFY_AT_MS, "card-version"),
        ("version-1", bytes(version_1), VERIFY_AT_MS, "card-version"),
        ("tampered-label", tampered, VERIFY_AT_MS, "card-signature"),
        ("tampered-key-proof", bytes(tampered_proof), VERIFY_AT_MS, "card-signature"),
        ("key-proof-by-another-key", other_key, VERIFY_AT_MS, "card-key-proof"),
        ("key-proof-for-other-content", lifted.to_bytes(), VERIFY_AT_MS, "card-key-proof"),
        (
            "curve-key-without-edwards-form",
            no_edwards_form.to_bytes(),
            VERIFY_AT_MS,
            "card-key-proof",
        ),
        ("expired", data, NOT_AFTER_MS, "card-expired"),
        ("not-yet-valid", data, NOT_BEFORE_MS - 1, "card-not-yet-valid"),
    ]
    out = [{"name": n, "card_hex": d.hex(), "verify_at_ms": t, "rule": r} for n, d, t, r in cases]
    out.append(
        {
            "name": "wrong-key",
            "card_hex": data.hex(),
            "verify_at_ms": VERIFY_AT_MS,
            "expected_curve_key_hex": bytes(32).hex(),
            "rule": "card-wrong-key",
        }
    )
    return out


def generate() -> dict[str, Any]:
    root_key = ed25519.Ed25519PrivateKey.from_private_bytes(_seed("root key"))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zmeshlib card vector root")])
    root = _certificate(
        "zmeshlib card vector root", 1, root_key.public_key(), (root_name, root_key), ca=True
    )
    issuer = (root.subject, root_key)

    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(_seed("ed25519 leaf key"))
    ed_leaf = _certificate("orders", 2, ed_key.public_key(), issuer, ca=False)
    ed_card = _prove(Card(**_card_fields(ed_leaf), signature=b""), CURVE_SECRET, ed_key)

    p256_scalar = int.from_bytes(_seed("p256 leaf key"), "big") % (2**255)
    p256_key = ec.derive_private_key(p256_scalar, ec.SECP256R1())
    p256_leaf = _certificate("orders", 3, p256_key.public_key(), issuer, ca=False)
    p256_card = Card(**_card_fields(p256_leaf), signature=b"")
    p256_card = attrs.evolve(
        p256_card,
        key_proof=_xeddsa.sign(CURVE_SECRET, p256_card.key_proof_message(), z=KEY_PROOF_Z),
    )
    rfc6979 = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    p256_card = attrs.evolve(p256_card, signature=p256_key.sign(p256_card.signed_bytes(), rfc6979))

    return {
        "description": (
            "zmeshlib identity card test vectors (docs/protocol.md, 'Identity cards'). "
            "Verify each card against a bundle holding root_der_hex for trust domain "
            "example.org at verify_at_ms. key_proof is the XEdDSA signature by curve_secret_hex "
            "(nonce randomness key_proof_z_hex) over 'zmeshlib-card-key-proof\\0' followed by "
            "signed_bytes without its last 64 bytes (the proof itself). "
            "Generated by tests/identity/test_card_vectors.py."
        ),
        "trust_domain": TRUST_DOMAIN,
        "root_der_hex": root.public_bytes(serialization.Encoding.DER).hex(),
        "vectors": [
            _describe(
                "ed25519",
                ed_card,
                _seed("ed25519 leaf key").hex(),
                "Ed25519 leaf: the signature is deterministic (RFC 8032)",
            ),
            _describe(
                "ecdsa-p256",
                p256_card,
                f"{p256_scalar:064x}",
                "ECDSA P-256 leaf, SHA-256; this signature used RFC 6979 nonces, any valid one verifies",
            ),
        ],
        "invalid": _invalid(ed_card, ed_key),
    }


def annotate(card: Card) -> str:
    """The card's bytes field by field, for docs/protocol.md."""
    data = card.to_bytes()
    pos = len(MAGIC) + 1
    rows: list[tuple[str, bytes]] = [("magic", MAGIC), ("version", data[pos - 1 : pos])]

    def take(name: str, n: int) -> None:
        nonlocal pos
        rows.append((name, data[pos : pos + n]))
        pos += n

    def blob(name: str, width: int) -> None:
        n = int.from_bytes(data[pos : pos + width], "big")
        take(f"{name} length", width)
        take(name, n)

    blob("spiffe_id", 2)
    take("curve_key", 32)
    take("not_before (ms)", 8)
    take("not_after (ms)", 8)
    take("label count", 1)
    for _ in card.labels:
        blob("label key", 1)
        blob("label value", 2)
    take("endpoint count", 1)
    for _ in card.endpoints:
        blob("endpoint address", 2)
        blob("endpoint kind", 1)
        blob("endpoint service", 1)
    take("certificate count", 1)
    for _ in card.certificates:
        blob("certificate (DER)", 2)
    take("key_proof", KEY_PROOF_SIZE)
    blob("signature", 2)
    assert pos == len(data)
    lines, offset = [], 0
    for name, value in rows:
        shown = value.hex() if len(value) <= 24 else value[:20].hex() + "..."
        lines.append(f"{offset:6d}  {len(value):5d}  {name:<25} {shown}".rstrip())
        offset += len(value)
    return "\n".join(["offset  bytes  field                     value (hex)", *lines])


def docs_block(hex_text: str) -> str:
    return "\n".join(hex_text[i : i + 64] for i in range(0, len(hex_text), 64))


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())


@pytest.fixture(scope="module")
def bundles(vectors) -> Bundles:
    root = x509.load_der_x509_certificate(bytes.fromhex(vectors["root_der_hex"]))
    return Bundles([TrustBundle(vectors["trust_domain"], (root,))])


def test_the_file_is_exactly_what_the_generator_makes(vectors):
    assert generate() == vectors


@pytest.mark.parametrize("index", [0, 1])
def test_each_vector_decodes_to_its_fields_and_encodes_back_byte_for_byte(vectors, index):
    v = vectors["vectors"][index]
    data = bytes.fromhex(v["card_hex"])
    card = Card.from_bytes(data)
    assert str(card.spiffe_id) == v["spiffe_id"]
    assert card.curve_key.hex() == v["curve_key_hex"] and card.curve_key_z85 == v["curve_key_z85"]
    assert (card.not_before, card.not_after) == (
        v["not_before_ms"] / 1000,
        v["not_after_ms"] / 1000,
    )
    assert dict(card.labels) == v["labels"]
    assert [attrs.asdict(e) for e in card.endpoints] == v["endpoints"]
    assert [c.public_bytes(serialization.Encoding.DER).hex() for c in card.certificates] == v[
        "certificates_der_hex"
    ]
    assert card.signed_bytes().hex() == v["signed_bytes_hex"]
    assert card.signature.hex() == v["signature_hex"]
    assert card.key_proof.hex() == v["key_proof_hex"]
    assert card.to_bytes() == data
    assert data == bytes.fromhex(
        v["signed_bytes_hex"] + f"{len(card.signature):04x}" + v["signature_hex"]
    )
    signed = bytes.fromhex(v["signed_bytes_hex"])
    assert signed[-KEY_PROOF_SIZE:].hex() == v["key_proof_hex"]
    assert card.key_proof_message() == b"zmeshlib-card-key-proof\x00" + signed[:-KEY_PROOF_SIZE]


@pytest.mark.parametrize("index", [0, 1])
def test_each_key_proof_is_the_xeddsa_signature_the_description_says(vectors, index):
    v = vectors["vectors"][index]
    secret = bytes.fromhex(v["curve_secret_hex"])
    assert z85.decode(zmq.curve_public(z85.encode(secret))).hex() == v["curve_key_hex"]
    message = KEY_PROOF_DOMAIN + bytes.fromhex(v["signed_bytes_hex"])[:-KEY_PROOF_SIZE]
    proof = _xeddsa.sign(secret, message, z=bytes.fromhex(v["key_proof_z_hex"]))
    assert proof.hex() == v["key_proof_hex"]
    edwards = bytes.fromhex(v["edwards_public_key_hex"])
    assert _xeddsa.edwards_public_key(bytes.fromhex(v["curve_key_hex"])) == edwards
    ed25519.Ed25519PublicKey.from_public_bytes(edwards).verify(proof, message)


@pytest.mark.parametrize("index", [0, 1])
def test_each_vector_verifies_against_the_vector_root(vectors, bundles, index):
    v = vectors["vectors"][index]
    card = Card.from_bytes(bytes.fromhex(v["card_hex"]))
    peer = card.verify(
        bundles, v["verify_at_ms"] / 1000, curve_key=bytes.fromhex(v["curve_key_hex"])
    )
    assert str(peer.spiffe_id) == v["spiffe_id"]


def _sign_like_the_vector(v: dict[str, Any]) -> Card:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["leaf_private_key_hex"]))
    leaf = x509.load_der_x509_certificate(bytes.fromhex(v["certificates_der_hex"][0]))
    svid = X509Svid.from_certificates((leaf,), key)
    return Card.sign(
        svid,
        bytes.fromhex(v["curve_key_hex"]),
        curve_secret=bytes.fromhex(v["curve_secret_hex"]),
        labels=v["labels"],
        endpoints=[Endpoint(**e) for e in v["endpoints"]],
        now=v["not_before_ms"] / 1000,
        ttl=(v["not_after_ms"] - v["not_before_ms"]) / 1000,
    )


def test_card_sign_reproduces_the_ed25519_vector_given_its_nonce_randomness(vectors, monkeypatch):
    v = vectors["vectors"][0]
    z = bytes.fromhex(v["key_proof_z_hex"])
    monkeypatch.setattr(_xeddsa, "os", types.SimpleNamespace(urandom=lambda n: z[:n]))
    assert _sign_like_the_vector(v).to_bytes().hex() == v["card_hex"]


def test_card_sign_draws_fresh_nonce_randomness_for_each_proof(vectors, bundles):
    v = vectors["vectors"][0]
    first, second = _sign_like_the_vector(v), _sign_like_the_vector(v)
    assert first.key_proof_message() == second.key_proof_message()
    assert first.key_proof != second.key_proof
    assert first.key_proof.hex() != v["key_proof_hex"]
    for card in (first, second):
        card.verify(bundles, v["verify_at_ms"] / 1000)


def test_invalid_vectors_fail_with_their_rules(vectors, bundles):
    assert len(vectors["invalid"]) >= 12
    for case in vectors["invalid"]:
        expected = case.get("expected_curve_key_hex")
        with pytest.raises(IdentityError) as info:
            card = Card.from_bytes(bytes.fromhex(case["card_hex"]))
            card.verify(
                bundles,
                case["verify_at_ms"] / 1000,
                curve_key=bytes.fromhex(expected) if expected else None,
            )
        assert info.value.rule == case["rule"], case["name"]


def test_docs_protocol_md_shows_the_same_bytes(vectors):
    text = PROTOCOL.read_text()
    blocks = dict(re.findall(r"<!-- card-vector: ([\w-]+) -->\s*```text\n(.*?)```", text, re.S))
    assert set(blocks) == {v["name"] for v in vectors["vectors"]}
    for v in vectors["vectors"]:
        assert "".join(blocks[v["name"]].split()) == v["card_hex"], v["name"]
    assert annotate(Card.from_bytes(bytes.fromhex(vectors["vectors"][0]["card_hex"]))) in text
    for u in _xeddsa.SMALL_ORDER_U - {0, 1}:  # the refused keys the key proof section lists
        assert f"`0x{u:064x}`" in text


def test_a_version_1_card_is_refused_with_an_upgrade_message(vectors):
    (case,) = [c for c in vectors["invalid"] if c["name"] == "version-1"]
    with pytest.raises(IdentityError) as info:
        Card.from_bytes(bytes.fromhex(case["card_hex"]))
    assert info.value.rule == "card-version"
    assert "no proof" in str(info.value) and "upgrade" in str(info.value)


# -- XEdDSA, against independent implementations --------------------------------------------


def test_the_x25519_base_point_converts_to_the_ed25519_base_point():
    u9 = (9).to_bytes(32, "little")
    y = _xeddsa.edwards_public_key(u9)
    assert int.from_bytes(y, "little") == 4 * pow(5, _xeddsa.P - 2, _xeddsa.P) % _xeddsa.P
    assert y.hex() == "58" + "66" * 31  # RFC 8032's encoding of B


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_edwards_scalar_multiplication_agrees_with_cryptography_ed25519(seed):
    """Ed25519's public key is clamp(SHA-512(seed)[:32]) * B: the sign bit is checked too."""
    scalar = _xeddsa.clamp(hashlib.sha512(seed).digest()[:32])
    ours, _ = _xeddsa._encode(_xeddsa._base_mult(scalar))
    theirs = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert ours == theirs


@settings(max_examples=25, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=256),
    st.binary(min_size=64, max_size=64),
)
def test_xeddsa_signatures_verify_as_ed25519_under_the_converted_x25519_key(secret, message, z):
    u = x25519.X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    edwards = ed25519.Ed25519PublicKey.from_public_bytes(_xeddsa.edwards_public_key(u))
    signature = _xeddsa.sign(secret, message, z=z)
    edwards.verify(signature, message)
    with pytest.raises(InvalidSignature):
        edwards.verify(signature, message + b"\x00")
    other = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature):
        ed25519.Ed25519PublicKey.from_public_bytes(_xeddsa.edwards_public_key(other)).verify(
            signature, message
        )


def test_xeddsa_nonce_depends_on_z_and_z_must_be_64_bytes():
    secret = _seed("nonce test")
    assert _xeddsa.sign(secret, b"m", z=bytes(64)) == _xeddsa.sign(secret, b"m", z=bytes(64))
    assert _xeddsa.sign(secret, b"m", z=bytes(64)) != _xeddsa.sign(secret, b"m", z=b"\x01" * 64)
    with pytest.raises(ValueError):
        _xeddsa.sign(secret, b"m", z=bytes(63))


@pytest.mark.parametrize(
    "u",
    [
        _xeddsa.P,  # non-canonical: u >= p
        _xeddsa.P + 9,
        2**256 - 1,
        _xeddsa.P - 1,  # u + 1 = 0
        *sorted(_xeddsa.SMALL_ORDER_U),
    ],
)
def test_unusable_x25519_public_keys_are_refused(u):
    with pytest.raises(_xeddsa.UnusableKey):
        _xeddsa.edwards_public_key(u.to_bytes(32, "little"))


def test_the_small_order_list_is_every_torsion_point():
    """Each listed u is the Edwards point of order 2, 4 or 8; the base point's u is not."""
    p = _xeddsa.P
    for u in _xeddsa.SMALL_ORDER_U:
        y = (u - 1) * pow(u + 1, p - 2, p) % p
        xx = (y * y - 1) * pow(_xeddsa._D * y * y + 1, p - 2, p) % p
        x = pow(xx, (p + 3) // 8, p)
        if (x * x - xx) % p:
            x = x * pow(2, (p - 1) // 4, p) % p
        assert (x * x - xx) % p == 0, u  # on the curve
        point = (x, y, 1, x * y % p)
        for _ in range(3):  # times 8
            point = _xeddsa._add(point, point)
        assert _xeddsa._encode(point)[0] == _xeddsa._encode(_xeddsa._IDENTITY)[0], u


if __name__ == "__main__":
    generated = generate()
    if "--write" in sys.argv:
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(generated, indent=2) + "\n")
    if "--docs" in sys.argv:
        first = Card.from_bytes(bytes.fromhex(generated["vectors"][0]["card_hex"]))
        print(annotate(first))
        for v in generated["vectors"]:
            print(f"\n<!-- card-vector: {v['name']} -->\n```text\n{docs_block(v['card_hex'])}\n```")
