"""Damaged certificates and chains built to be expensive: one named rule each, nothing else.

Every certificate here is well signed where a signature matters (see conftest's
``resign``): the damage is inside, in the parts cryptography decodes lazily, so
only the decoding guard can stop it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import Bundles, SpiffeId, TrustBundle, X509Svid, verify_chain
from zmeshlib.identity import svid as svid_module
from zmeshlib.identity.svid import MAX_PATH_LENGTH, MAX_SIGNATURE_CHECKS

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
_URI = ORDERS.encode()


def _raw_san(*general_names: bytes) -> x509.UnrecognizedExtension:
    body = b"".join(general_names)
    return x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30" + bytes([len(body)]) + body
    )


def _uri(text: str) -> bytes:
    return b"\x86" + bytes([len(text)]) + text.encode()


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    return lambda tbs: tbs.replace(old, new, 1)


_BC_LEAF = x509.BasicConstraints(ca=False, path_length=None).public_bytes()
_BC_CA = x509.BasicConstraints(ca=True, path_length=None).public_bytes()
_OID_UNUSED = b"\x06\x03\x55\x1d\x63"  # 2.5.29.99, as long as basicConstraints' 2.5.29.19
_OID_BC = b"\x06\x03\x55\x1d\x13"
_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_EC_UNKNOWN = bytes.fromhex("06072a8648ce3d0209")  # no such key algorithm

#: case -> (make_cert keywords for a leaf / for a CA, edit of the TBS or None, rule)
CASES: dict[str, tuple[Callable[[bool, str], dict[str, Any]], Any, str]] = {
    "basicConstraints twice": (
        lambda ca, uri: {
            "extensions": [
                (
                    x509.UnrecognizedExtension(
                        x509.ObjectIdentifier("2.5.29.99"), _BC_CA if ca else _BC_LEAF
                    ),
                    False,
                )
            ]
        },
        _replace(_OID_UNUSED, _OID_BC),
        "duplicate-extension",
    ),
    "SAN with a 5-byte IP address": (
        lambda ca, uri: {
            "uris": [],
            "extensions": [(_raw_san(_uri(uri), b"\x87\x05\x01\x02\x03\x04\x05"), False)],
        },
        None,
        "malformed-certificate",
    ),
    "SAN with an x400Address": (
        lambda ca, uri: {"uris": [], "extensions": [(_raw_san(_uri(uri), b"\xa3\x00"), False)]},
        None,
        "malformed-certificate",
    ),
    "truncated basicConstraints": (
        lambda ca, uri: {
            "ca": None,
            "extensions": [
                (
                    x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01"),
                    True,
                )
            ],
        },
        None,
        "malformed-certificate",
    ),
    "subject CN tagged BOOLEAN": (
        lambda ca, uri: {},
        lambda tbs: tbs.replace(b"\x55\x04\x03\x0c", b"\x55\x04\x03\x01", 1),
        "malformed-certificate",
    ),
    "unknown public key algorithm": (
        lambda ca, uri: {},
        _replace(_EC_PUBLIC_KEY, _EC_UNKNOWN),
        "unsupported-key",
    ),
    "EC point off the curve": (lambda ca, uri: {}, "point", "malformed-certificate"),
}


def _point_edit(cert: x509.Certificate) -> Callable[[bytes], bytes]:
    point = cert.public_key().public_bytes(  # type: ignore[call-arg]
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _replace(point, point[:-1] + bytes([point[-1] ^ 1]))


def broken(pki: Any, case: str, issuer: Any, *, ca: bool) -> tuple[x509.Certificate, Any]:
    """A certificate damaged as ``case`` says, and the sound Node it was made from.

    Signed by ``issuer`` (Ed25519, signed again after the edit), or self-issued
    when ``issuer`` is None (an authority: nobody checks its own signature).
    """
    keywords, edit, _ = CASES[case]
    uri = "spiffe://example.org" if ca else ORDERS
    kw = {"uris": [uri], "ca": ca, **keywords(ca, uri)}
    node = pki.cert("intermediate" if ca else "leaf", issuer, **kw)
    if edit is None:
        return node.cert, node
    if edit == "point":
        edit = _point_edit(node.cert)
    return pki.resign(node.cert, issuer.key if issuer is not None else None, edit), node


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def rule_of(attempt: Callable[[], object]) -> str:
    with pytest.raises(IdentityError) as exc:
        attempt()
    assert exc.value.rule in str(exc.value)  # the message carries the rule too
    return exc.value.rule


@pytest.fixture(scope="module")
def ed_root(pki: Any) -> Any:
    """An Ed25519 root: its fixed-size signatures let ``resign`` edit what it signs."""
    return pki.root(key=pki.key("ed25519"))


# -- damaged certificates: every entry point, one rule --------------------------------


@pytest.mark.parametrize("case", CASES)
def test_damaged_leaf(pki, ed_root, case):
    rule = CASES[case][2]
    leaf, _ = broken(pki, case, ed_root, ca=False)
    bundle = TrustBundle("example.org", [ed_root.cert])
    assert rule_of(lambda: X509Svid.parse(pem(leaf))) == rule
    assert rule_of(lambda: X509Svid.from_certificates([leaf])) == rule
    assert rule_of(lambda: verify_chain([leaf], bundle)) == rule


@pytest.mark.parametrize("case", CASES)
def test_damaged_intermediate(pki, ed_root, case):
    rule = CASES[case][2]
    inter, sound = broken(pki, case, ed_root, ca=True)
    leaf = pki.leaf(sound)  # signed by the intermediate's real key, under its real name
    bundle = TrustBundle("example.org", [ed_root.cert])
    assert rule_of(lambda: verify_chain([leaf.cert, inter], bundle)) == rule
    assert rule_of(lambda: X509Svid.parse(pem(leaf.cert, inter))) == rule


@pytest.mark.parametrize("case", CASES)
def test_damaged_authority(pki, case):
    rule = CASES[case][2]
    root, _ = broken(pki, case, None, ca=True)
    assert rule_of(lambda: TrustBundle("example.org", [root])) == rule
    assert rule_of(lambda: TrustBundle.from_pem("example.org", pem(root))) == rule
    assert rule_of(lambda: Bundles.from_pem(pem(root), "example.org")) == rule


def test_the_message_names_the_certificate_and_the_damage(pki, ed_root):
    inter, sound = broken(pki, "SAN with a 5-byte IP address", ed_root, ca=True)
    leaf = pki.leaf(sound)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert, inter], TrustBundle("example.org", [ed_root.cert]))
    message = str(exc.value)
    fingerprint = inter.fingerprint(hashes.SHA256()).hex()[:16]
    assert f"intermediate 2 (sha256 {fingerprint})" in message
    assert "does not appear to be an IPv4 or IPv6 address" in message


def test_a_certificate_of_an_unknown_version_is_malformed_pem(pki, root):
    der = pki.leaf(root).cert.public_bytes(serialization.Encoding.DER)
    version_3 = b"\xa0\x03\x02\x01\x02"
    assert version_3 in der
    damaged = der.replace(version_3, b"\xa0\x03\x02\x01\x05", 1)
    block = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(damaged)
        + b"-----END CERTIFICATE-----\n"
    )
    assert rule_of(lambda: X509Svid.parse(block)) == "malformed-pem"
    assert rule_of(lambda: TrustBundle.from_pem("example.org", block)) == "malformed-pem"


@pytest.mark.parametrize(
    "attempt",
    [
        lambda root: verify_chain("not certificates", TrustBundle("example.org", [root.cert])),  # type: ignore[arg-type]
        lambda root: verify_chain([b"DER bytes"], TrustBundle("example.org", [root.cert])),  # type: ignore[list-item]
        lambda root: X509Svid.from_certificates(42),  # type: ignore[arg-type]
        lambda root: TrustBundle("example.org", root.cert),  # type: ignore[arg-type]
        lambda root: TrustBundle(42, [root.cert]),  # type: ignore[arg-type]
        lambda root: Bundles(42),  # type: ignore[arg-type]
        lambda root: X509Svid.parse(42),  # type: ignore[arg-type]
        lambda root: Bundles.from_pem(b"", 42),  # type: ignore[arg-type]
    ],
)
def test_wrong_types_are_named(root, attempt):
    assert rule_of(lambda: attempt(root)) == "type"


def test_a_private_key_that_is_not_a_key(pki, root):
    leaf = pki.leaf(root)
    assert rule_of(lambda: X509Svid.from_certificates([leaf.cert], "key")) == "type"  # type: ignore[arg-type]
    x25519 = __import__("cryptography.hazmat.primitives.asymmetric.x25519", fromlist=["x"])
    other = x25519.X25519PrivateKey.generate()
    assert rule_of(lambda: X509Svid.from_certificates([leaf.cert], other)) == "key-mismatch"


@pytest.mark.parametrize("at", [float("nan"), 1e20, "now", True])
def test_an_unusable_time(pki, root, at):
    leaf = pki.leaf(root)
    bundle = TrustBundle("example.org", [root.cert])
    assert rule_of(lambda: verify_chain([leaf.cert], bundle, at=at)) == "invalid-time"


# -- the bounded path search ------------------------------------------------------------


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every signature the path search checks (the real check still runs)."""
    counted = [0]
    real = svid_module._signed_by

    def counting(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
        counted[0] += 1
        return real(issuer, cert)

    monkeypatch.setattr(svid_module, "_signed_by", counting)
    return counted


def mutually_issued(pki: Any, count: int) -> tuple[list[x509.Certificate], Any]:
    """``count`` CA certificates named "I", issued by "I", all with one key: each one
    verifies as the issuer of every other, so every ordering of them is a signature path."""
    key = pki.key()
    first = pki.cert("I", None, ca=True, key=key, uris=["spiffe://example.org"])
    others = [
        pki.cert("I", first, ca=True, key=key, uris=["spiffe://example.org"]).cert
        for _ in range(count - 1)
    ]
    return [first.cert, *others], pki.Node(first.cert, key)


def test_mutually_issued_intermediates_stop_at_the_signature_budget(pki, root, signature_checks):
    intermediates, issuer = mutually_issued(pki, 7)
    chain = [pki.leaf(issuer).cert, *intermediates]
    assert len(pem(*chain)) < 6000  # a small input: the cost is all in the search
    # the root of example.org signed none of them: without a budget the search walks
    # every ordering of the 7 (8,659 signature checks) before saying "untrusted"
    with pytest.raises(IdentityError) as exc:
        verify_chain(chain, TrustBundle("example.org", [root.cert]))
    assert exc.value.rule == "path-search-limit"
    assert f"gave up after {MAX_SIGNATURE_CHECKS} signature checks" in str(exc.value)
    assert signature_checks[0] == MAX_SIGNATURE_CHECKS


def test_the_budget_counts_across_paths_that_fail_late(pki, signature_checks):
    # the same tangle, now under a real authority but expired: many paths reach it
    # and fail the time check; the search still stops at the budget, and says why
    now = datetime.now(timezone.utc).timestamp()
    key = pki.key()
    authority = pki.cert(
        "I",
        None,
        ca=True,
        key=key,
        uris=["spiffe://example.org"],
        not_before=now - 7200,
        not_after=now - 3600,
    )
    intermediates = [
        pki.cert("I", authority, ca=True, key=key, uris=["spiffe://example.org"]).cert
        for _ in range(6)
    ]
    chain = [pki.leaf(authority).cert, *intermediates]
    with pytest.raises(IdentityError) as exc:
        verify_chain(chain, TrustBundle("example.org", [authority.cert]))
    assert exc.value.rule == "path-search-limit"
    assert "the first path found failed" in str(exc.value) and "[expired]" in str(exc.value)
    assert signature_checks[0] == MAX_SIGNATURE_CHECKS


def test_a_sound_deep_chain_with_decoy_authorities_costs_a_few_checks(pki, signature_checks):
    # three rotated roots share one name (as a dev CA's do); the longest allowed path
    roots = [pki.root() for _ in range(3)]
    chain, issuer = [], roots[1]
    for i in range(MAX_PATH_LENGTH - 2):
        issuer = pki.intermediate(issuer, f"i{i}")
        chain.insert(0, issuer.cert)
    leaf = pki.leaf(issuer)
    bundle = TrustBundle("example.org", [r.cert for r in roots])
    assert verify_chain([leaf.cert, *reversed(chain)], bundle) == SpiffeId.parse(ORDERS)
    assert signature_checks[0] <= MAX_PATH_LENGTH + 3
