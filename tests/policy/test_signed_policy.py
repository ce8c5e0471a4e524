"""Signed policy documents: the codec (exact, canonical, bounded) and every verification refusal,
with real dev CA certificates."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from typing import Any

import attrs
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib import Card, DevCA, Identity, Policy, PolicyError, SignedPolicyError, X509Svid
from zmeshlib.identity import card as card_module
from zmeshlib.identity._signed import sign_with
from zmeshlib.policy import SignedPolicy, Signers
from zmeshlib.policy import distribution as dist
from zmeshlib.policy.model import canonical_bytes

from .conftest import CONTROL, POLICY_A, POLICY_B, SIGNERS

NOW = time.time()


def resign(doc: SignedPolicy, svid: X509Svid, **changes: Any) -> SignedPolicy:
    """``doc`` with ``changes``, signed again by ``svid``: authentic, whatever it says."""
    changed = attrs.evolve(doc, **changes)
    return attrs.evolve(changed, signature=sign_with(svid.private_key, changed.signed_bytes()))


@pytest.fixture(scope="module")
def doc(control: Identity) -> SignedPolicy:
    return SignedPolicy.sign(POLICY_B, control.svid, version=7, now=NOW)


# -- the codec -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_round_trip_for_every_key_type(ca: DevCA, key: str) -> None:
    svid = ca.issue_svid(CONTROL, key=key, not_before=NOW)
    signed = SignedPolicy.sign(POLICY_B, svid, version=3, now=NOW)
    data = signed.to_bytes()
    assert data.startswith(dist.MAGIC + bytes([dist.FORMAT]))
    decoded = SignedPolicy.from_bytes(data)
    assert decoded == signed and decoded.to_bytes() == data
    verified = decoded.verify(ca.bundles, SIGNERS, applied=2, now=NOW)
    assert verified.policy == POLICY_B and verified.policy.revision == POLICY_B.revision
    assert (verified.version, str(verified.signer)) == (3, CONTROL)
    assert verified.signed_at == decoded.signed_at == int(NOW * 1000) / 1000
    assert decoded.revision == POLICY_B.revision


def test_the_layout_field_by_field(doc: SignedPolicy) -> None:
    data = doc.to_bytes()
    at = len(dist.MAGIC) + 1
    version, ms, size = struct.unpack_from(">QQI", data, at)
    assert (version, ms) == (7, int(NOW * 1000))
    at += 20
    assert data[at : at + size] == canonical_bytes(POLICY_B)
    at += size
    assert data[at] == len(doc.certificates)
    at += 1
    for _ in doc.certificates:
        (n,) = struct.unpack_from(">H", data, at)
        at += 2 + n
    assert data[:at] == doc.signed_bytes()
    (n,) = struct.unpack_from(">H", data, at)
    assert data[at + 2 :] == doc.signature and at + 2 + n == len(data)


def test_the_magic_keeps_policy_and_card_signatures_apart(control: Identity) -> None:
    assert dist.MAGIC != card_module.MAGIC
    assert not dist.MAGIC.startswith(card_module.MAGIC[:-1])
    public, secret = zmq.curve_keypair()
    card = Card.sign(control.svid, public, curve_secret=secret)
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.from_bytes(card.to_bytes())
    assert info.value.reason == "malformed" and "magic" in str(info.value)
    # a card's SVID signature, put on a policy document, does not verify there
    doc = SignedPolicy.sign(POLICY_A, control.svid, version=1)
    forged = attrs.evolve(doc, signature=card.signature)
    with pytest.raises(SignedPolicyError) as info:
        forged.verify(control.bundles, SIGNERS)
    assert info.value.reason == "bad-signature"


def test_any_flipped_byte_is_refused(doc: SignedPolicy, ca: DevCA) -> None:
    data = doc.to_bytes()
    reasons = set()
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        with pytest.raises(SignedPolicyError) as info:
            SignedPolicy.from_bytes(bytes(flipped)).verify(ca.bundles, SIGNERS, now=NOW)
        reasons.add(info.value.reason)
    assert reasons <= {"malformed", "unsupported", "bad-signature"}
    assert {"malformed", "unsupported", "bad-signature"} <= reasons


def test_only_the_canonical_form_decodes(doc: SignedPolicy) -> None:
    data = doc.to_bytes()
    for bad in (data + b"\x00", data[:-1], data[:10]):
        with pytest.raises(SignedPolicyError) as info:
            SignedPolicy.from_bytes(bad)
        assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"version": 0}, "version"),
        ({"version": 2**64}, "version"),
        ({"signed_at": -1.0}, "signed_at"),
        ({"signed_at": 253402300800.0}, "signed_at"),
        ({"signed_at": float("nan")}, "signed_at"),
        ({"policy_bytes": b"{"}, "the policy"),
        ({"policy_bytes": b" " * (dist.MAX_POLICY_SIZE + 1)}, "the policy"),
        ({"certificates": ()}, "no certificate"),
        ({"signature": b""}, "signature"),
        ({"signature": b"s" * 1025}, "signature"),
    ],
)
def test_every_field_is_bounded(doc: SignedPolicy, changes: dict[str, Any], says: str) -> None:
    with pytest.raises(SignedPolicyError) as info:
        attrs.evolve(doc, **changes).to_bytes()
    assert info.value.reason == "malformed" and says in str(info.value)


def test_at_most_eight_certificates_of_at_most_16_kib(doc: SignedPolicy) -> None:
    with pytest.raises(SignedPolicyError, match="9 certificates, at most 8"):
        attrs.evolve(doc, certificates=doc.certificates * 9).to_bytes()
    assert len(attrs.evolve(doc, certificates=doc.certificates * 8).to_bytes()) > 0


def test_a_document_over_the_size_bound_is_refused_before_decoding(doc: SignedPolicy) -> None:
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.from_bytes(doc.to_bytes(), max_size=100)
    assert info.value.reason == "malformed" and "more than the 100 allowed" in str(info.value)
    with pytest.raises(SignedPolicyError):
        SignedPolicy.from_bytes(b"\x00" * (dist.MAX_DOCUMENT_SIZE + 1))


def test_another_format_is_unsupported(doc: SignedPolicy) -> None:
    data = bytearray(doc.to_bytes())
    data[len(dist.MAGIC)] = 2
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.from_bytes(bytes(data))
    assert info.value.reason == "unsupported" and "upgrade zmeshlib" in str(info.value)


def test_a_certificate_that_is_not_der_is_malformed(doc: SignedPolicy) -> None:
    data = doc.to_bytes()
    at = len(dist.MAGIC) + 1 + 16 + 4 + len(doc.policy_bytes) + 1 + 2
    broken = data[:at] + b"\xff" * 4 + data[at + 4 :]
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.from_bytes(broken)
    assert info.value.reason == "malformed" and "not DER X.509" in str(info.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_the_typed_error(data: bytes) -> None:
    for candidate in (data, dist.MAGIC + b"\x01" + data):
        with pytest.raises(SignedPolicyError):
            SignedPolicy.from_bytes(candidate)


# -- verification refusals, by reason ---------------------------------------------------


def reason(doc: SignedPolicy, bundles: Any, **kw: Any) -> str:
    kw.setdefault("now", NOW)
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.from_bytes(doc.to_bytes()).verify(bundles, kw.pop("signers", SIGNERS), **kw)
    return info.value.reason


def test_older_and_equal_versions_are_refused(doc: SignedPolicy, ca: DevCA) -> None:
    assert reason(doc, ca.bundles, applied=7) == "older"
    assert reason(doc, ca.bundles, applied=8) == "older"
    assert doc.verify(ca.bundles, SIGNERS, applied=6, now=NOW).version == 7


def test_a_signature_of_other_bytes_is_refused(doc: SignedPolicy, ca: DevCA) -> None:
    other = SignedPolicy.sign(POLICY_A, ca.issue_svid(CONTROL, not_before=NOW), version=7, now=NOW)
    assert reason(attrs.evolve(doc, signature=other.signature), ca.bundles) == "bad-signature"
    # the leaf's key signs, so another key's signature over the same bytes is refused too
    stranger = ca.issue_svid(CONTROL, not_before=NOW)
    swapped = attrs.evolve(doc, signature=sign_with(stranger.private_key, doc.signed_bytes()))
    assert reason(swapped, ca.bundles) == "bad-signature"


def test_a_non_signer_principal_is_refused(ca: DevCA, rogue: Identity) -> None:
    doc = SignedPolicy.sign(POLICY_A, rogue.svid, version=1, now=NOW)
    assert reason(doc, ca.bundles) == "not-a-signer"
    assert doc.verify(ca.bundles, ["example.org/ns/shop/*"], now=NOW).version == 1


def test_a_chain_from_another_trust_domains_ca_is_refused(ca: DevCA) -> None:
    now = time.time() + 1  # these CAs are younger than NOW
    partner = DevCA.create("partner.org")
    theirs = SignedPolicy.sign(
        Policy(), partner.issue_svid("spiffe://partner.org/ns/mesh/sa/control"), version=1, now=now
    )
    assert reason(theirs, ca.bundles, signers=["*"], now=now) == "untrusted"
    # nor does a second CA calling itself example.org vouch for example.org
    impostor = DevCA.create("example.org")
    forged = SignedPolicy.sign(POLICY_A, impostor.issue_svid(CONTROL), version=1, now=now)
    assert reason(forged, ca.bundles, now=now) == "untrusted"
    assert forged.verify(impostor.bundles, SIGNERS, now=now).version == 1


def test_a_document_outlives_the_svid_that_signed_it(ca: DevCA) -> None:
    svid = ca.issue_svid(CONTROL, 60, not_before=NOW)  # valid NOW .. NOW+60
    doc = SignedPolicy.sign(POLICY_A, svid, version=1, now=NOW + 10)
    later = NOW + 3600  # a workload that starts an hour later still gets it
    assert doc.verify(ca.bundles, SIGNERS, now=later).version == 1


def test_an_expired_svid_cannot_sign_and_a_time_outside_its_life_is_refused(ca: DevCA) -> None:
    svid = ca.issue_svid(CONTROL, 60, not_before=NOW)
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.sign(POLICY_A, svid, version=1, now=NOW + 120)
    assert info.value.reason == "svid-expired"
    # signed by hand with the SVID's key after it expired, stating the true time
    doc = SignedPolicy.sign(POLICY_A, svid, version=1, now=NOW + 10)
    late = resign(doc, svid, signed_at=float(int(NOW + 120)))
    assert reason(late, ca.bundles, now=NOW + 130) == "expired"
    early = resign(doc, svid, signed_at=float(int(NOW - 60)))
    assert reason(early, ca.bundles) == "expired"


def test_a_signing_time_far_ahead_of_the_clock_waits(ca: DevCA) -> None:
    svid = ca.issue_svid(CONTROL, 3600, not_before=NOW + 600)
    doc = SignedPolicy.sign(POLICY_A, svid, version=1, now=NOW + 1000)
    assert reason(doc, ca.bundles) == "not-yet-valid"
    assert doc.verify(ca.bundles, SIGNERS, now=NOW + 1000 - dist.MAX_CLOCK_SKEW).version == 1


def test_policy_bytes_that_do_not_rebuild_are_refused(doc: SignedPolicy, control: Identity) -> None:
    tree = json.loads(doc.policy_bytes)
    spaced = json.dumps(tree, sort_keys=True).encode()  # not the canonical spacing
    assert reason(resign(doc, control.svid, policy_bytes=spaced), control.bundles) == (
        "invalid-policy"
    )
    tree["from_a_newer_zmeshlib"] = 1
    newer = json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
    assert reason(resign(doc, control.svid, policy_bytes=newer), control.bundles) == (
        "invalid-policy"
    )


def test_a_policy_that_would_lock_its_signer_out_is_refused(
    doc: SignedPolicy, control: Identity
) -> None:
    locked = Policy.from_dict({"trust_domains": ["partner.org"]})
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.sign(locked, control.svid, version=1)
    assert info.value.reason == "lockout" and "example.org" in str(info.value)
    forged = resign(doc, control.svid, policy_bytes=canonical_bytes(locked))
    assert reason(forged, control.bundles) == "lockout"
    # naming the signer's trust domain among others is fine
    both = Policy.from_dict({"trust_domains": ["partner.org", "example.org"]})
    assert SignedPolicy.sign(both, control.svid, version=1).verify(control.bundles, SIGNERS)


def test_every_refusal_reason_is_listed() -> None:
    assert set(dist.REFUSALS) == {
        "malformed",
        "unsupported",
        "bad-signature",
        "untrusted",
        "expired",
        "not-yet-valid",
        "not-a-signer",
        "older",
        "invalid-policy",
        "lockout",
    }


def test_signing_refuses_bad_versions_and_svids_without_keys(control: Identity) -> None:
    for version in (0, -1, 2**64, True, 1.5):
        with pytest.raises(SignedPolicyError) as info:
            SignedPolicy.sign(POLICY_A, control.svid, version=version)  # type: ignore[arg-type]
        assert info.value.reason == "version"
    peer = X509Svid(control.svid.spiffe_id, control.svid.certificates, None)
    with pytest.raises(SignedPolicyError) as info:
        SignedPolicy.sign(POLICY_A, peer, version=1)
    assert info.value.reason == "no-private-key"


# -- signer patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("example.org/ns/mesh/sa/control", True),
        ("spiffe://example.org/ns/mesh/sa/control", True),
        ("example.org/ns/mesh/*", True),
        ("*/sa/control", True),
        ("*", True),
        ("example.org/ns/mesh/sa/controller", False),
        ("partner.org/*", False),
    ],
)
def test_signer_patterns_match_as_policy_principals(pattern: str, allowed: bool) -> None:
    from zmeshlib import SpiffeId

    assert Signers([pattern]).allows(SpiffeId.parse(CONTROL)) is allowed


@pytest.mark.parametrize("bad", [[], ["http://x/y"], ["a*b*"], ["Example.org/x"], [""]])
def test_invalid_signer_patterns_are_policy_errors(bad: list[str]) -> None:
    with pytest.raises(PolicyError) as info:
        Signers(bad)
    assert "signers" in str(info.value)


def test_one_string_is_not_a_list_of_signers() -> None:
    with pytest.raises(PolicyError, match=r"signers=\['example.org/x'\]"):
        Signers("example.org/x")


def test_the_trust_domains_signers_can_be_of() -> None:
    assert Signers(["example.org/ns/a", "partner.org/*"]).trust_domains() == {
        "example.org",
        "partner.org",
    }
    assert Signers(["*/sa/control"]).trust_domains() is None
    assert Signers(["example*"]).trust_domains() is None


def test_the_revision_is_the_policy_hash(doc: SignedPolicy) -> None:
    assert doc.revision == hashlib.sha256(canonical_bytes(POLICY_B)).hexdigest()[:12]
