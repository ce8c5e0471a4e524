"""publish_policy on real stores: versions, inputs, and what it refuses to write."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import zmeshlib
from zmeshlib import DevCA, Identity, IdentityError, Registry, SignedPolicyError, publish_policy
from zmeshlib.policy import SignedPolicy
from zmeshlib.registry import open_store
from zmeshlib.registry.stores import POLICY_FILE

from .conftest import CONTROL, POLICY_A, POLICY_B


@pytest.fixture(params=["memory", "dir"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://publish-{uuid.uuid4().hex}"
    return f"dir://{tmp_path / 'registry'}"


def stored(url: str) -> SignedPolicy:
    data = open_store(url).get_policy()
    assert isinstance(data, bytes)
    return SignedPolicy.from_bytes(data)


def test_versions_count_up_from_one(url: str, control: Identity) -> None:
    assert zmeshlib.publish_policy is publish_policy
    assert publish_policy(POLICY_A, identity=control, registry=url) == 1
    assert publish_policy(POLICY_B, identity=control, registry=url) == 2
    doc = stored(url)
    assert (doc.version, doc.revision) == (2, POLICY_B.revision)
    assert doc.verify(control.bundles, [CONTROL]).policy == POLICY_B


def test_an_explicit_version_must_be_newer(url: str, control: Identity) -> None:
    assert publish_policy(POLICY_A, identity=control, registry=url, version=10) == 10
    for version in (10, 9):
        with pytest.raises(SignedPolicyError) as info:
            publish_policy(POLICY_B, identity=control, registry=url, version=version)
        assert info.value.reason == "older" and "version 10" in str(info.value)
    assert stored(url).version == 10  # nothing was written
    assert publish_policy(POLICY_B, identity=control, registry=url) == 11
    with pytest.raises(SignedPolicyError) as info:
        publish_policy(POLICY_B, identity=control, registry=url, version=2**64)
    assert info.value.reason == "version"


def test_a_path_a_mapping_a_registry_or_a_store(tmp_path: Path, control: Identity) -> None:
    url = f"dir://{tmp_path / 'registry'}"
    path = tmp_path / "mesh.yaml"
    path.write_text("trust_domains: [example.org]\nauthorization: [{name: a, rules: []}]\n")
    assert publish_policy(path, identity=control, registry=url) == 1
    assert stored(url).revision == POLICY_A.revision
    assert publish_policy(str(path), identity=control, registry=url) == 2
    with Registry(url, bundles=control.bundles) as registry:
        assert publish_policy({"authorization": []}, identity=control, registry=registry) == 3
    assert publish_policy(POLICY_B, identity=control, registry=open_store(url)) == 4
    assert stored(url).revision == POLICY_B.revision


def test_an_unreadable_stored_document_needs_an_explicit_version(
    tmp_path: Path, control: Identity
) -> None:
    url = f"dir://{tmp_path / 'registry'}"
    publish_policy(POLICY_A, identity=control, registry=url)
    (tmp_path / "registry" / POLICY_FILE).write_bytes(b"junk")
    with pytest.raises(SignedPolicyError) as info:
        publish_policy(POLICY_B, identity=control, registry=url)
    assert info.value.reason == "stored-unreadable" and "version=" in str(info.value)
    assert publish_policy(POLICY_B, identity=control, registry=url, version=5) == 5


def test_what_followers_would_refuse_is_never_written(url: str, ca: DevCA) -> None:
    signer = ca.issue(CONTROL)
    with pytest.raises(SignedPolicyError) as info:
        publish_policy({"trust_domains": ["partner.org"]}, identity=signer, registry=url)
    assert info.value.reason == "lockout"
    # a signer whose own bundles do not vouch for its SVID (another CA of the same name)
    stranger = Identity(DevCA.create("example.org").issue_svid(CONTROL), ca.bundles)
    with pytest.raises(SignedPolicyError) as info:
        publish_policy(POLICY_A, identity=stranger, registry=url)
    assert info.value.reason == "untrusted"
    assert open_store(url).get_policy() is None


def test_bad_arguments_are_typed_errors(url: str, control: Identity) -> None:
    with pytest.raises(IdentityError, match=r"identity= takes a zmeshlib\.Identity"):
        publish_policy(POLICY_A, identity=control.svid, registry=url)  # type: ignore[arg-type]
    with pytest.raises(zmeshlib.PolicyError):
        publish_policy(42, identity=control, registry=url)  # type: ignore[arg-type]
    with pytest.raises(zmeshlib.RegistryError):
        publish_policy(POLICY_A, identity=control, registry="ftp://nowhere")
