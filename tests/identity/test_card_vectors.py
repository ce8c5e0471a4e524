"""Card test vectors: tests/vectors/cards.json and docs/protocol.md agree with the code, byte for byte.

Everything in the vectors is deterministic (Ed25519 keys from fixed seeds, ECDSA with
RFC 6979 nonces, fixed serials and dates), so ``generate()`` rebuilds the file exactly.
Regenerate after a deliberate format change with::

    .venv/bin/python tests/identity/test_card_vectors.py --write   # then paste --docs output
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from zmeshlib._exceptions import IdentityError
from zmeshlib._models import Endpoint
from zmeshlib.identity.card import MAGIC, Card
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


def _utc(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=timezone.utc)


def _usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment")
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
        "curve_key": _seed("curve key"),
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
        "signed_bytes_hex": card.signed_bytes().hex(),
        "signature_hex": card.signature.hex(),
        "card_hex": card.to_bytes().hex(),
        "verify_at_ms": VERIFY_AT_MS,
    }


def _invalid(card: Card) -> list[dict[str, Any]]:
    data = card.to_bytes()
    version_2 = bytearray(data)
    version_2[len(MAGIC)] = 2
    tampered = data.replace(b"\x02v2", b"\x02v3")
    assert tampered != data
    cases = [
        ("truncated", data[:-1], VERIFY_AT_MS, "card-malformed"),
        ("trailing-byte", data + b"\x00", VERIFY_AT_MS, "card-malformed"),
        ("unknown-version", bytes(version_2), VERIFY_AT_MS, "card-version"),
        ("tampered-label", tampered, VERIFY_AT_MS, "card-signature"),
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
    ed_card = Card(**_card_fields(ed_leaf), signature=b"")
    ed_card = attrs.evolve(ed_card, signature=ed_key.sign(ed_card.signed_bytes()))

    p256_scalar = int.from_bytes(_seed("p256 leaf key"), "big") % (2**255)
    p256_key = ec.derive_private_key(p256_scalar, ec.SECP256R1())
    p256_leaf = _certificate("orders", 3, p256_key.public_key(), issuer, ca=False)
    p256_card = Card(**_card_fields(p256_leaf), signature=b"")
    rfc6979 = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    p256_card = attrs.evolve(p256_card, signature=p256_key.sign(p256_card.signed_bytes(), rfc6979))

    return {
        "description": (
            "zmeshlib identity card test vectors (docs/protocol.md, 'Identity cards'). "
            "Verify each card against a bundle holding root_der_hex for trust domain "
            "example.org at verify_at_ms. Generated by tests/identity/test_card_vectors.py."
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
        "invalid": _invalid(ed_card),
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
    assert card.to_bytes() == data
    assert data == bytes.fromhex(
        v["signed_bytes_hex"] + f"{len(card.signature):04x}" + v["signature_hex"]
    )


@pytest.mark.parametrize("index", [0, 1])
def test_each_vector_verifies_against_the_vector_root(vectors, bundles, index):
    v = vectors["vectors"][index]
    card = Card.from_bytes(bytes.fromhex(v["card_hex"]))
    peer = card.verify(
        bundles, v["verify_at_ms"] / 1000, curve_key=bytes.fromhex(v["curve_key_hex"])
    )
    assert str(peer.spiffe_id) == v["spiffe_id"]


def test_card_sign_reproduces_the_ed25519_vector(vectors):
    v = vectors["vectors"][0]
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["leaf_private_key_hex"]))
    leaf = x509.load_der_x509_certificate(bytes.fromhex(v["certificates_der_hex"][0]))
    svid = X509Svid.from_certificates((leaf,), key)
    card = Card.sign(
        svid,
        bytes.fromhex(v["curve_key_hex"]),
        labels=v["labels"],
        endpoints=[Endpoint(**e) for e in v["endpoints"]],
        now=v["not_before_ms"] / 1000,
        ttl=(v["not_after_ms"] - v["not_before_ms"]) / 1000,
    )
    assert card.to_bytes().hex() == v["card_hex"]


def test_invalid_vectors_fail_with_their_rules(vectors, bundles):
    assert len(vectors["invalid"]) >= 6
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
