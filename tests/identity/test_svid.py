"""X.509-SVID rules: each rule broken by a real certificate, each valid chain shape accepted."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import Bundles, SpiffeId, TrustBundle, X509Svid, verify_chain
from zmeshlib.identity.svid import MAX_PATH_LENGTH

ORDERS = SpiffeId.parse("spiffe://example.org/ns/shop/sa/orders")


def bundle_of(*nodes: Any, td: str = "example.org") -> TrustBundle:
    return TrustBundle(td, [n.cert for n in nodes])


def pem(*nodes: Any) -> bytes:
    return b"".join(n.cert.public_bytes(serialization.Encoding.PEM) for n in nodes)


def key_pem(
    node: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8
) -> bytes:
    return node.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


# -- valid chains -------------------------------------------------------------------


def test_chain_of_length_1_leaf_signed_by_root(pki, root):
    leaf = pki.leaf(root)
    assert verify_chain([leaf.cert], bundle_of(root)) == ORDERS


def test_chain_of_length_2(pki, root):
    inter = pki.intermediate(root)
    leaf = pki.leaf(inter)
    assert verify_chain([leaf.cert, inter.cert], bundle_of(root)) == ORDERS


def test_chain_of_length_3_in_any_order_with_root_included(pki, root):
    inter1 = pki.intermediate(root, "i1")
    inter2 = pki.intermediate(inter1, "i2")
    leaf = pki.leaf(inter2)
    bundles = Bundles([bundle_of(root)])
    assert verify_chain([leaf.cert, inter2.cert, inter1.cert], bundles) == ORDERS
    # unordered intermediates and the root itself in the chain are accepted, as RFC 5280 does
    assert verify_chain([leaf.cert, inter1.cert, root.cert, inter2.cert], bundles) == ORDERS


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_accepted_leaf_key_algorithms(pki, root, kind):
    leaf = pki.leaf(root, key=pki.key(kind))
    assert X509Svid.parse(pem(leaf), key_pem(leaf)).verify(bundle_of(root)) == ORDERS


def test_authority_with_ed25519_key_signs(pki):
    authority = pki.root(key=pki.key("ed25519"))
    leaf = pki.leaf(authority)
    assert verify_chain([leaf.cert], bundle_of(authority)) == ORDERS


# -- shape rules: each certificate breaks exactly one -------------------------------


def _leaf(**kw: Any) -> Callable[[Any, Any], list[x509.Certificate]]:
    return lambda pki, root: [pki.leaf(root, **kw).cert]


def _via(**kw: Any) -> Callable[[Any, Any], list[x509.Certificate]]:
    def build(pki: Any, root: Any) -> list[x509.Certificate]:
        inter = pki.cert("bad intermediate", root, **{"ca": True, **kw})
        return [pki.leaf(inter).cert, inter.cert]

    return build


SHAPE_CASES: dict[str, tuple[Callable[[Any, Any], list[x509.Certificate]], str]] = {
    "no URI SAN": (_leaf(uris=[]), "no-uri-san"),
    "two URI SANs": (
        _leaf(uris=["spiffe://example.org/a", "spiffe://example.org/b"]),
        "multiple-uri-sans",
    ),
    "URI SAN not spiffe": (_leaf(uris=["https://example.org/a"]), "scheme"),
    "uppercase trust domain": (_leaf(uris=["spiffe://Example.org/a"]), "trust-domain-charset"),
    "SPIFFE ID without path": (_leaf(uris=["spiffe://example.org"]), "leaf-id-no-path"),
    "leaf with cA=true": (_leaf(ca=True, key_usage={"digital_signature": True}), "leaf-is-ca"),
    "leaf without keyUsage": (_leaf(key_usage={}), "leaf-missing-digital-signature"),
    "leaf without digitalSignature": (
        _leaf(key_usage={"key_encipherment": True}),
        "leaf-missing-digital-signature",
    ),
    "leaf with keyCertSign": (
        _leaf(key_usage={"digital_signature": True, "key_cert_sign": True}),
        "leaf-has-key-cert-sign",
    ),
    "leaf with cRLSign": (
        _leaf(key_usage={"digital_signature": True, "crl_sign": True}),
        "leaf-has-crl-sign",
    ),
    "leaf with RSA-1024": (
        lambda pki, root: [pki.leaf(root, key=pki.key("rsa-1024")).cert],
        "weak-key",
    ),
    "leaf with P-521": (
        lambda pki, root: [pki.leaf(root, key=pki.key("ec-p521")).cert],
        "unsupported-key",
    ),
    "leaf with unknown critical extension": (
        _leaf(
            extensions=[
                (
                    x509.UnrecognizedExtension(
                        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
                    ),
                    True,
                )
            ]
        ),
        "unknown-critical-extension",
    ),
    "intermediate with cA=false": (
        _via(ca=False, key_usage={"key_cert_sign": True}),
        "signer-not-ca",
    ),
    "intermediate without basicConstraints": (
        _via(ca=None, key_usage={"key_cert_sign": True}),
        "signer-not-ca",
    ),
    "intermediate without keyCertSign": (
        _via(key_usage={"crl_sign": True}),
        "signer-missing-key-cert-sign",
    ),
    "intermediate with a workload ID": (
        _via(uris=["spiffe://example.org/ns/x"]),
        "signer-id-has-path",
    ),
    "intermediate with RSA-1024": (
        lambda pki, root: _via(key=pki.key("rsa-1024"))(pki, root),
        "weak-key",
    ),
}


@pytest.mark.parametrize("case", SHAPE_CASES, ids=list(SHAPE_CASES))
def test_shape_rule_rejected_by_parse_and_verify(pki, root, case):
    build, rule = SHAPE_CASES[case]
    chain = build(pki, root)
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    with pytest.raises(IdentityError) as parsed:
        X509Svid.parse(chain_pem)
    assert parsed.value.rule == rule, parsed.value
    assert rule in str(parsed.value)
    with pytest.raises(IdentityError) as verified:
        verify_chain(chain, bundle_of(root))
    assert verified.value.rule == rule


def test_ca_certificate_presented_as_leaf(pki, root):
    # an intermediate carrying a workload-looking ID, and the root itself
    inter = pki.intermediate(root, uris=["spiffe://example.org/ns/shop/sa/orders"])
    for cert in (inter.cert, root.cert):
        with pytest.raises(IdentityError) as exc:
            verify_chain([cert], bundle_of(root))
        assert exc.value.rule == "leaf-is-ca"


# -- trust rules ----------------------------------------------------------------------


def test_leaf_signed_by_untrusted_ca(pki, root):
    rogue = pki.root("example.org")  # same name and trust domain, another key
    leaf = pki.leaf(rogue)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert], bundle_of(root))
    assert exc.value.rule == "untrusted"
    assert "example.org" in str(exc.value)


def test_forged_intermediate_with_the_right_name_is_untrusted(pki, root):
    real = pki.intermediate(root, "i")
    forged = pki.cert("i", pki.root("example.org"), ca=True)  # same subject, other issuer
    leaf = pki.leaf(forged)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert, forged.cert, real.cert], bundle_of(root))
    assert exc.value.rule == "untrusted"


def test_chain_from_another_trust_domain(pki, root):
    other = pki.root("other.org")
    leaf = pki.leaf(other, "spiffe://other.org/ns/x/sa/y")
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert], bundle_of(root))
    assert exc.value.rule == "no-bundle-for-trust-domain"
    assert "other.org" in str(exc.value)


def test_federated_authority_cannot_vouch_for_a_local_id(pki, root):
    other = pki.root("other.org")
    bundles = Bundles([bundle_of(root), bundle_of(other, td="other.org")])
    forged = pki.leaf(other, "spiffe://example.org/ns/shop/sa/orders")
    with pytest.raises(IdentityError) as exc:
        verify_chain([forged.cert], bundles)
    assert exc.value.rule == "untrusted"
    # while its own workloads are trusted through federation
    theirs = pki.leaf(other, "spiffe://other.org/ns/x/sa/y")
    assert verify_chain([theirs.cert], bundles) == SpiffeId.parse("spiffe://other.org/ns/x/sa/y")


def test_expired_leaf(pki):
    now = time.time()
    root = pki.root(not_before=now - 86400)
    leaf = pki.leaf(root, not_before=now - 7200, not_after=now - 3600)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert], bundle_of(root))
    assert exc.value.rule == "expired"
    # the same chain was valid then: `at` takes epoch seconds or datetimes (naive = UTC)
    assert verify_chain([leaf.cert], bundle_of(root), at=now - 5400) == ORDERS
    then = datetime.fromtimestamp(now - 5400, timezone.utc)
    assert verify_chain([leaf.cert], bundle_of(root), at=then.replace(tzinfo=None)) == ORDERS


def test_not_yet_valid_leaf(pki, root):
    now = time.time()
    leaf = pki.leaf(root, not_before=now + 600, not_after=now + 3600)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert], bundle_of(root))
    assert exc.value.rule == "not-yet-valid"


def test_expired_intermediate_and_expired_authority(pki):
    now = time.time()
    old_root = pki.root(not_before=now - 7200, not_after=now - 60)
    leaf = pki.leaf(old_root)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert], bundle_of(old_root))
    assert exc.value.rule == "expired"
    assert "authority" in str(exc.value)
    good_root = pki.root()
    inter = pki.intermediate(good_root, not_before=now - 7200, not_after=now - 60)
    leaf = pki.leaf(inter)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert, inter.cert], bundle_of(good_root))
    assert exc.value.rule == "expired"
    assert "intermediate" in str(exc.value)


def test_path_length_constraint(pki):
    strict_root = pki.root(path_length=0)
    inter = pki.intermediate(strict_root)
    leaf = pki.leaf(inter)
    with pytest.raises(IdentityError) as exc:
        verify_chain([leaf.cert, inter.cert], bundle_of(strict_root))
    assert exc.value.rule == "path-length"
    assert verify_chain([pki.leaf(strict_root).cert], bundle_of(strict_root)) == ORDERS


def test_path_search_is_bounded(pki, root):
    def chain_of(intermediates: int) -> list[x509.Certificate]:
        chain, issuer = [], root
        for i in range(intermediates):
            issuer = pki.intermediate(issuer, f"i{i}")
            chain.insert(0, issuer.cert)
        return [pki.leaf(issuer).cert, *chain]

    # leaf + intermediates + authority may be MAX_PATH_LENGTH certificates long, no more
    assert verify_chain(chain_of(MAX_PATH_LENGTH - 2), bundle_of(root)) == ORDERS
    with pytest.raises(IdentityError) as exc:
        verify_chain(chain_of(MAX_PATH_LENGTH - 1), bundle_of(root))
    assert exc.value.rule == "path-search-limit"
    assert f"at most {MAX_PATH_LENGTH} certificates" in str(exc.value)


def test_verify_takes_every_bundle_form(pki, root):
    leaf = pki.leaf(root)
    svid = X509Svid.from_certificates([leaf.cert])
    for form in (bundle_of(root), [bundle_of(root)], Bundles([bundle_of(root)])):
        assert svid.verify(form) == ORDERS
    with pytest.raises(IdentityError) as exc:
        svid.verify("example.org")  # type: ignore[arg-type]
    assert exc.value.rule == "type"


# -- parsing --------------------------------------------------------------------------


def test_parse_with_key_in_either_file_and_either_order(pki, root):
    leaf = pki.leaf(root)
    for certs, key in (
        (pem(leaf), key_pem(leaf)),
        (pem(leaf) + key_pem(leaf), None),
        (key_pem(leaf) + pem(leaf), None),
        (pem(leaf), key_pem(leaf) + pem(leaf)),
    ):
        svid = X509Svid.parse(certs, key)
        assert svid.spiffe_id == ORDERS
        assert svid.private_key is not None


@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048"])
def test_parse_traditional_openssl_keys(pki, root, kind):
    leaf = pki.leaf(root, key=pki.key(kind))
    traditional = key_pem(leaf, serialization.PrivateFormat.TraditionalOpenSSL)
    assert b"BEGIN EC PRIVATE KEY" in traditional or b"BEGIN RSA PRIVATE KEY" in traditional
    assert X509Svid.parse(pem(leaf), traditional).key_pem() == key_pem(leaf)


def test_parse_without_key_is_a_peer_svid(pki, root):
    leaf = pki.leaf(root)
    svid = X509Svid.parse(pem(leaf))
    assert svid.private_key is None
    with pytest.raises(IdentityError) as exc:
        svid.key_pem()
    assert exc.value.rule == "no-private-key"


@pytest.mark.parametrize(
    ("certs", "key", "rule"),
    [
        ("nothing", None, "no-certificates"),
        ("garbage", None, "malformed-pem"),
        ("leaf", "other", "key-mismatch"),
        ("leaf", "none", "no-private-key"),
        ("leaf", "encrypted", "encrypted-key"),
    ],
)
def test_parse_errors(pki, root, certs, key, rule):
    leaf, other = pki.leaf(root), pki.leaf(root)
    certs_pem = {
        "nothing": b"",
        "garbage": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "leaf": pem(leaf),
    }[certs]
    key_bytes = {
        None: None,
        "other": key_pem(other),
        "none": pem(leaf),
        "encrypted": leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    }[key]
    with pytest.raises(IdentityError) as exc:
        X509Svid.parse(certs_pem, key_bytes)
    assert exc.value.rule == rule


def test_pem_round_trip_and_validity_window(pki, root):
    now = time.time()
    inter = pki.intermediate(root, not_before=now - 100, not_after=now + 500)
    leaf = pki.leaf(inter, not_before=now - 50, not_after=now + 900)
    svid = X509Svid.parse(pem(leaf, inter), key_pem(leaf))
    assert svid.certificates == (leaf.cert, inter.cert)
    assert svid.leaf == leaf.cert
    assert svid.not_before == int(now - 50)
    assert svid.not_after == int(now + 500)  # the intermediate ends first
    again = X509Svid.parse(svid.certs_pem(), svid.key_pem())
    assert again == svid


def test_constructor_checks_the_id(pki, root):
    leaf = pki.leaf(root)
    with pytest.raises(IdentityError) as exc:
        X509Svid(SpiffeId.parse("spiffe://example.org/other"), (leaf.cert,), leaf.key)
    assert exc.value.rule == "id-mismatch"


# -- bundles --------------------------------------------------------------------------


def test_trust_bundle_pem_round_trip(pki, root):
    second = pki.root()
    bundle = TrustBundle.from_pem("example.org", pem(root, second, root))
    assert bundle.authorities == (root.cert, second.cert)  # duplicates dropped
    assert TrustBundle.from_pem("spiffe://example.org", bundle.to_pem()) == bundle


@pytest.mark.parametrize(
    ("trust_domain", "what", "rule"),
    [
        ("example.org", "empty", "empty-bundle"),
        ("example.org", "leaf", "signer-not-ca"),
        ("Example.org", "root", "trust-domain-charset"),
        ("spiffe://example.org/x", "root", "trust-domain-has-path"),
    ],
)
def test_trust_bundle_rejects(pki, root, trust_domain, what, rule):
    certs = {"empty": b"", "leaf": pem(pki.leaf(root)), "root": pem(root)}[what]
    with pytest.raises(IdentityError) as exc:
        TrustBundle.from_pem(trust_domain, certs)
    assert exc.value.rule == rule


def test_bundles_are_immutable_values(pki, root):
    other = pki.root("other.org")
    a, b = bundle_of(root), bundle_of(other, td="other.org")
    bundles = Bundles([a, b])
    assert bundles == Bundles([b, a])
    assert bundles.trust_domains == frozenset({"example.org", "other.org"})
    assert bundles.get("other.org") == b and bundles.get("nowhere.org") is None
    assert "example.org" in bundles and len(bundles) == 2
    rotated = bundle_of(pki.root(), td="example.org")
    replaced = bundles.with_bundle(rotated)
    assert replaced.get("example.org") == rotated
    assert bundles.get("example.org") == a  # the original is unchanged
    assert Bundles.coerce(a) == Bundles([a]) and Bundles.coerce(bundles) is bundles
    with pytest.raises(IdentityError) as exc:
        Bundles([a, rotated])
    assert exc.value.rule == "duplicate-bundle"
