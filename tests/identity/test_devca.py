"""The development CA: issuing, persistence, and what it refuses."""

from __future__ import annotations

import base64
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import Bundles, DevCA, Identity, SpiffeId, X509Svid

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("example.org")


@pytest.fixture(scope="module")
def ca_with_intermediate() -> DevCA:
    return DevCA.create("example.org", intermediate=True)


def test_issued_svid_is_valid_and_follows_the_svid_profile(ca):
    svid = ca.issue_svid(ORDERS)
    assert svid.verify(ca.bundles) == SpiffeId.parse(ORDERS)
    assert svid.certificates == (svid.leaf,)
    assert isinstance(svid.leaf.public_key(), ec.EllipticCurvePublicKey)  # P-256 by default
    assert svid.leaf.public_key().curve.name == "secp256r1"
    eku = svid.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH}
    assert svid.leaf.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert ca.bundle.trust_domain == "example.org" and ca.bundle.authorities == (ca.root,)


def test_ttl_and_not_before(ca):
    start = time.time() + 120
    svid = ca.issue_svid(ORDERS, ttl=90, not_before=start)
    assert svid.not_before == int(start)
    assert svid.not_after - svid.not_before == 90
    with pytest.raises(IdentityError) as exc:
        svid.verify(ca.bundles)
    assert exc.value.rule == "not-yet-valid"
    assert svid.verify(ca.bundles, at=start + 45) == SpiffeId.parse(ORDERS)
    with pytest.raises(IdentityError) as exc:
        svid.verify(ca.bundles, at=start + 91)
    assert exc.value.rule == "expired"


def test_fresh_svid_is_valid_at_once_with_a_small_backdate(ca):
    before = time.time()
    svid = ca.issue_svid(ORDERS, ttl=20)
    assert before - 3 <= svid.not_before <= before  # backdated by at most ttl/10 (+ rounding)
    assert svid.verify(ca.bundles, at=before) == SpiffeId.parse(ORDERS)


def test_leaf_never_outlives_its_ca():
    short = DevCA.create("example.org", ttl=600)
    svid = short.issue_svid(ORDERS, ttl=86400)
    assert svid.not_after == pytest.approx(short.root.not_valid_after_utc.timestamp())


@pytest.mark.parametrize(
    ("key", "cls"),
    [
        ("ec-p256", ec.EllipticCurvePublicKey),
        ("ec-p384", ec.EllipticCurvePublicKey),
        ("rsa-2048", rsa.RSAPublicKey),
        ("ed25519", ed25519.Ed25519PublicKey),
    ],
)
def test_key_types(ca, key, cls):
    svid = ca.issue_svid(ORDERS, key=key)
    assert isinstance(svid.leaf.public_key(), cls)
    assert svid.verify(ca.bundles) == SpiffeId.parse(ORDERS)
    assert X509Svid.parse(svid.certs_pem(), svid.key_pem()) == svid


def test_intermediate_option(ca_with_intermediate):
    ca = ca_with_intermediate
    svid = ca.issue_svid(ORDERS)
    assert len(svid.certificates) == 2 and svid.certificates[1] == ca.intermediate
    assert ca.bundle.authorities == (ca.root,)  # the intermediate travels in the chain
    assert svid.verify(ca.bundles) == SpiffeId.parse(ORDERS)
    with pytest.raises(IdentityError) as exc:  # the leaf without its intermediate
        X509Svid.from_certificates([svid.leaf]).verify(ca.bundles)
    assert exc.value.rule == "untrusted"
    assert ca.root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1


def test_new_intermediate_keeps_the_root_and_both_generations_verify(ca_with_intermediate):
    old = ca_with_intermediate
    new = old.new_intermediate()
    assert new.root == old.root and new.bundle == old.bundle
    assert new.intermediate != old.intermediate
    before, after = old.issue_svid(ORDERS), new.issue_svid(ORDERS)
    assert after.certificates[1] == new.intermediate
    for svid in (before, after):
        assert svid.verify(old.bundles) == SpiffeId.parse(ORDERS)
    # a chain that names the new intermediate's subject but carries the old one fails
    with pytest.raises(IdentityError):
        X509Svid.from_certificates([after.leaf, old.intermediate]).verify(old.bundles)


def test_new_intermediate_needs_one_to_rotate(ca):
    with pytest.raises(IdentityError) as exc:
        ca.new_intermediate()
    assert exc.value.rule == "no-intermediate"


@pytest.mark.parametrize(
    ("spiffe_id", "rule"),
    [
        ("spiffe://other.org/ns/shop/sa/orders", "foreign-trust-domain"),
        ("spiffe://example.org", "leaf-id-no-path"),
        ("spiffe://example.org/a//b", "path-empty-segment"),
    ],
)
def test_refuses_ids_it_may_not_issue(ca, spiffe_id, rule):
    with pytest.raises(IdentityError) as exc:
        ca.issue_svid(spiffe_id)
    assert exc.value.rule == rule


@pytest.mark.parametrize("intermediate", [False, True])
def test_ca_certificates_name_their_trust_domain(intermediate):
    # as SPIRE's do: a bundle file holding this root among others says whose it is
    ca = DevCA.create("example.org", intermediate=intermediate)
    signers = [ca.root] + ([ca.intermediate] if ca.intermediate is not None else [])
    for cert in signers:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    mixed = ca.bundle.to_pem() + DevCA.create("partner.org").bundle.to_pem()
    assert Bundles.from_pem(mixed, "elsewhere.org").trust_domains == {"example.org", "partner.org"}


def test_refuses_unknown_key_type_and_bad_ttl(ca):
    with pytest.raises(IdentityError) as exc:
        ca.issue_svid(ORDERS, key="dsa-1024")
    assert exc.value.rule == "unsupported-key"
    with pytest.raises(IdentityError) as exc:
        ca.issue_svid(ORDERS, ttl=0)
    assert exc.value.rule == "bad-ttl"


@pytest.mark.parametrize("intermediate", [False, True])
def test_save_load_round_trip(tmp_path, intermediate):
    ca = DevCA.create("example.org", intermediate=intermediate)
    directory = tmp_path / "ca" / "nested"
    ca.save(directory)
    names = {"root.pem", "root_key.pem"} | (
        {"intermediate.pem", "intermediate_key.pem"} if intermediate else set()
    )
    assert {p.name for p in directory.iterdir()} == names
    for name in names:
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode == (0o600 if name.endswith("_key.pem") else 0o644), name
    loaded = DevCA.load(directory)
    assert loaded.trust_domain == "example.org"
    assert loaded.root == ca.root and loaded.intermediate == ca.intermediate
    assert loaded.bundle == ca.bundle
    # the loaded CA signs with the same keys: its SVIDs verify against the original bundle
    assert loaded.issue_svid(ORDERS).verify(ca.bundles) == SpiffeId.parse(ORDERS)


def test_load_missing_directory_says_what_to_run(tmp_path):
    with pytest.raises(IdentityError) as exc:
        DevCA.load(tmp_path / "nothing")
    assert exc.value.rule == "ca-unreadable"
    assert "zmesh ca init" in str(exc.value)


def test_issue_gives_a_rotating_identity(ca):
    ident = ca.issue(ORDERS, ttl=120)
    assert isinstance(ident, Identity)
    assert str(ident.spiffe_id) == ORDERS
    first = ident.svid
    assert first.not_after - first.not_before == pytest.approx(120, abs=13)
    seen: list[Identity] = []
    ident.on_rotate(seen.append)
    assert ident.renew() is True
    assert seen == [ident]
    assert ident.svid != first and ident.svid.spiffe_id == first.spiffe_id
    assert ident.svid.verify(ident.bundles) == ident.spiffe_id


def test_load_refuses_a_damaged_ca(tmp_path):
    first, second = DevCA.create("example.org"), DevCA.create("example.org")
    first.save(tmp_path / "a")
    second.save(tmp_path / "b")
    (tmp_path / "a" / "root_key.pem").write_bytes((tmp_path / "b" / "root_key.pem").read_bytes())
    with pytest.raises(IdentityError) as exc:
        DevCA.load(tmp_path / "a")
    assert exc.value.rule == "ca-invalid"
    assert "root_key.pem" in str(exc.value)
    (tmp_path / "b" / "root.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(IdentityError) as exc:
        DevCA.load(tmp_path / "b")
    assert exc.value.rule == "ca-invalid"


def test_load_refuses_a_root_whose_inside_is_damaged(tmp_path):
    ca = DevCA.create("example.org")
    ca.save(tmp_path)
    der = ca.root.public_bytes(serialization.Encoding.DER)
    # the SAN's URI tag (0x86) becomes an iPAddress (0x87) of the URI's length: decoding
    # the extensions then fails inside cryptography's ipaddress conversion
    uri = b"\x86\x14spiffe://example.org"
    assert uri in der
    damaged = der.replace(uri, b"\x87" + uri[1:], 1)
    (tmp_path / "root.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(damaged)
        + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(IdentityError) as exc:
        DevCA.load(tmp_path)
    assert exc.value.rule == "ca-invalid"
    assert "malformed-certificate" in str(exc.value)
