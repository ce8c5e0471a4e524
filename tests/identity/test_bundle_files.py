"""Bundle files holding several trust domains' roots: each root vouches for the domain it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import Bundles, DevCA, Identity, SpiffeId, TrustBundle, verify_chain
from zmeshlib.identity.devca import write_file

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
ADMIN = "spiffe://example.org/ns/ops/sa/admin"
PARTNER_WORKLOAD = "spiffe://partner.org/ns/billing/sa/invoices"


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@pytest.fixture(scope="module")
def partner(pki: Any) -> Any:
    """partner.org's root, as SPIRE makes it: its URI SAN names spiffe://partner.org."""
    return pki.root("partner.org")


def rule_of(attempt: Any) -> IdentityError:
    with pytest.raises(IdentityError) as exc:
        attempt()
    return exc.value


# -- TrustBundle.from_pem: one trust domain's file ------------------------------------


def test_a_single_domain_bundle_refuses_another_domains_root(root, partner):
    error = rule_of(lambda: TrustBundle.from_pem("example.org", pem(root.cert, partner.cert)))
    assert error.rule == "bundle-trust-domain-mismatch"
    message = str(error)
    assert "certificate 2 of the bundle PEM" in message
    assert "'partner.org'" in message and "never of 'example.org'" in message
    assert "Bundles.from_pem" in message  # how to load such a file instead


def test_a_root_naming_two_trust_domains_is_refused_everywhere(pki):
    both = pki.cert("shared root", ca=True, uris=["spiffe://example.org", "spiffe://partner.org"])
    for attempt in (
        lambda: TrustBundle.from_pem("example.org", pem(both.cert)),
        lambda: Bundles.from_pem(pem(both.cert), "example.org"),
    ):
        error = rule_of(attempt)
        assert error.rule == "bundle-trust-domain-mismatch"
        assert "example.org, partner.org" in str(error)
    # the constructor takes the caller's word: it may still be made an authority on purpose
    assert TrustBundle("example.org", [both.cert]).authorities == (both.cert,)


def test_a_root_without_a_spiffe_uri_belongs_to_the_files_domain(pki):
    plain = pki.cert("corporate root", ca=True, uris=["https://pki.example.com"])
    bundle = TrustBundle.from_pem("example.org", pem(plain.cert))
    assert bundle.authorities == (plain.cert,)
    assert Bundles.from_pem(pem(plain.cert), "example.org").trust_domains == {"example.org"}


# -- Bundles.from_pem: a mixed file ----------------------------------------------------


def test_a_mixed_file_makes_one_bundle_per_named_domain(pki, root, partner):
    plain = pki.cert("corporate root", ca=True)  # no SAN: the file's own domain
    bundles = Bundles.from_pem(pem(partner.cert, root.cert, plain.cert), "example.org")
    assert bundles.trust_domains == {"example.org", "partner.org"}
    assert bundles.get("example.org").authorities == (root.cert, plain.cert)
    assert bundles.get("partner.org").authorities == (partner.cert,)
    # the default may be written as a trust domain ID too
    assert Bundles.from_pem(pem(root.cert), "spiffe://example.org").trust_domains == {"example.org"}


@pytest.mark.parametrize(
    ("text", "default", "rule"),
    [
        (b"", "example.org", "empty-bundle"),
        (b"no PEM at all", "example.org", "empty-bundle"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "example.org",
            "malformed-pem",
        ),
        (None, "Example.org", "trust-domain-charset"),
        (None, "spiffe://example.org/ns/x", "trust-domain-has-path"),
    ],
)
def test_mixed_file_errors(root, text, default, rule):
    data = pem(root.cert) if text is None else text
    assert rule_of(lambda: Bundles.from_pem(data, default)).rule == rule


def test_a_partner_root_in_the_file_cannot_vouch_for_our_domain(pki, root, partner):
    # the escalation: partner.org's CA issues an SVID with *our* trust domain's ID
    forged = pki.leaf(partner, ADMIN)
    bundles = Bundles.from_pem(pem(root.cert, partner.cert), "example.org")
    assert rule_of(lambda: verify_chain([forged.cert], bundles)).rule == "untrusted"
    # while partner.org's own workloads verify through the same file (federation)
    theirs = pki.leaf(partner, PARTNER_WORKLOAD)
    assert verify_chain([theirs.cert], bundles) == SpiffeId.parse(PARTNER_WORKLOAD)
    # and a file of the partner's root alone holds no bundle for example.org at all
    alone = Bundles.from_pem(pem(partner.cert), "example.org")
    assert rule_of(lambda: verify_chain([forged.cert], alone)).rule == "no-bundle-for-trust-domain"


# -- Identity.from_pem reads bundle.pem the same way -------------------------------------


def _files(directory: Path, ca: DevCA, bundle_pem: bytes) -> tuple[Path, Path, Path]:
    svid = ca.issue_svid(ORDERS)
    return (
        write_file(directory / "svid.pem", svid.certs_pem()),
        write_file(directory / "svid_key.pem", svid.key_pem(), private=True),
        write_file(directory / "bundle.pem", bundle_pem),
    )


def test_identity_from_a_mixed_bundle_file_federates_instead_of_escalating(tmp_path, pki, partner):
    ca = DevCA.create("example.org")
    ident = Identity.from_pem(*_files(tmp_path, ca, pem(ca.root, partner.cert)))
    assert ident.bundles.trust_domains == {"example.org", "partner.org"}
    assert ident.bundles.get("example.org").authorities == (ca.root,)
    assert ident.bundles.get("partner.org").authorities == (partner.cert,)
    forged = pki.leaf(partner, ADMIN)
    assert rule_of(lambda: verify_chain([forged.cert], ident.bundles)).rule == "untrusted"
    theirs = pki.leaf(partner, PARTNER_WORKLOAD)
    assert verify_chain([theirs.cert], ident.bundles) == SpiffeId.parse(PARTNER_WORKLOAD)


def test_identity_whose_bundle_file_holds_only_a_partner_root(tmp_path, partner):
    ca = DevCA.create("example.org")
    files = _files(tmp_path, ca, pem(partner.cert))
    assert rule_of(lambda: Identity.from_pem(*files)).rule == "no-bundle-for-trust-domain"


def test_renewal_reads_the_bundle_file_the_same_way(tmp_path, pki, partner):
    ca = DevCA.create("example.org")
    cert, key, bundle = _files(tmp_path, ca, pem(ca.root))
    ident = Identity.from_pem(cert, key, bundle)
    assert ident.bundles.trust_domains == {"example.org"}
    write_file(bundle, pem(ca.root, partner.cert))  # federation added later
    assert ident.renew() is True
    assert ident.bundles.get("example.org").authorities == (ca.root,)
    assert ident.bundles.get("partner.org").authorities == (partner.cert,)
