"""Mesh.follow_policy and PolicyFollower on real stores: catch-up, live updates, refusals counted
and the policy kept, read failures, and no thread left after close."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from zmeshlib import (
    Closed,
    DevCA,
    Identity,
    IdentityError,
    Mesh,
    Policy,
    PolicyError,
    PolicyFollower,
    publish_policy,
)
from zmeshlib.policy import SignedPolicy
from zmeshlib.policy import distribution as dist
from zmeshlib.registry import DirStore, MemoryStore, open_store

from .conftest import CONTROL, POLICY_A, POLICY_B, SIGNERS

WORKLOAD = "spiffe://example.org/ns/shop/sa/worker"


def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def follower_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zmeshlib-policy-follow"]


@pytest.fixture(params=["memory", "dir"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://follow-{uuid.uuid4().hex}"
    return f"dir://{tmp_path / 'registry'}"


@pytest.fixture
def mesh_for(ca: DevCA) -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(url: str, **kw: object) -> Mesh:
        mesh = Mesh(identity=ca.issue(WORKLOAD), registry=url, **kw)  # type: ignore[arg-type]
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.close()


def test_a_late_joiner_applies_the_current_document_before_follow_returns(
    url: str, control: Identity, mesh_for: Callable[..., Mesh]
) -> None:
    publish_policy(POLICY_A, identity=control, registry=url)
    publish_policy(POLICY_B, identity=control, registry=url)
    mesh = mesh_for(url)
    assert mesh.policy_version == Policy().revision
    follower = mesh.follow_policy(signers=SIGNERS)
    assert (follower.version, str(follower.signer)) == (2, CONTROL)
    assert mesh.policy == POLICY_B and mesh.policy_version == POLICY_B.revision
    assert follower.revision == mesh.policy_version
    assert follower.counts == {}


def test_a_published_policy_applies_live(
    url: str, control: Identity, mesh_for: Callable[..., Mesh]
) -> None:
    mesh = mesh_for(url)
    follower = mesh.follow_policy(signers=SIGNERS, interval=0.02)
    assert follower.version is None and follower.signer is None
    started = time.time()
    version = publish_policy(POLICY_A, identity=control, registry=url)
    assert follower.wait(version, timeout=5.0)
    assert follower.applied_at is not None and follower.applied_at - started < 1.0
    assert mesh.policy == POLICY_A and mesh.stats["policy.updates"] == 1
    # rollback: the old policy again, with a newer version
    publish_policy(POLICY_B, identity=control, registry=url)
    assert follower.wait(2, timeout=5.0) and mesh.policy == POLICY_B
    publish_policy(POLICY_A, identity=control, registry=url)
    assert follower.wait(3, timeout=5.0) and mesh.policy_version == POLICY_A.revision


def test_refused_documents_are_counted_once_logged_once_and_the_policy_stays(
    url: str,
    control: Identity,
    rogue: Identity,
    mesh_for: Callable[..., Mesh],
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    mesh = mesh_for(url, meter_provider=MeterProvider(metric_readers=[reader]))
    store = open_store(url)
    publish_policy(POLICY_A, identity=control, registry=url)
    old = store.get_policy()
    assert isinstance(old, bytes)
    publish_policy(POLICY_B, identity=control, registry=url)
    follower = mesh.follow_policy(signers=SIGNERS, interval=0.01)
    assert follower.version == 2
    caplog.set_level(logging.WARNING, "zmeshlib.policy")

    publish_policy(POLICY_A, identity=rogue, registry=url)  # version 3, by a non-signer
    eventually(lambda: follower.counts.get("not-a-signer") == 1)
    store.put_policy(old)  # a replay of version 1
    eventually(lambda: follower.counts.get("older") == 1)
    store.put_policy(b"zmeshlib-policy\x00\x01junk")
    eventually(lambda: follower.counts.get("malformed") == 1)
    polls = 20  # let the follower see the same refused bytes again and again
    deadline = time.monotonic() + 5
    while polls and time.monotonic() < deadline:
        follower.poll()
        polls -= 1
    assert follower.counts == {"not-a-signer": 1, "older": 1, "malformed": 1}
    assert follower.version == 2 and mesh.policy == POLICY_B
    refusals = [r for r in caplog.records if "signed policy refused" in r.getMessage()]
    assert [r.getMessage().split("(")[1].split(")")[0] for r in refusals] == [
        "not-a-signer",
        "older",
        "malformed",
    ]
    data = reader.get_metrics_data()
    points = {
        p.attributes["reason"]: p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "zmeshlib.policy.refused"
        for p in m.data.data_points
    }
    assert points == {"not-a-signer": 1, "older": 1, "malformed": 1}
    # the signer is not stuck behind the rogue's version: publishing goes on from the store's
    assert publish_policy(POLICY_A, identity=control, registry=url, version=4) == 4
    assert follower.wait(4, timeout=5.0) and mesh.policy == POLICY_A


def test_a_document_refused_as_untrusted_is_judged_again_when_trust_changes(
    url: str, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    # the signer is of a federated trust domain whose bundle this workload gets later
    partner = DevCA.create("partner.org")
    signer = "spiffe://partner.org/ns/mesh/sa/control"
    publish_policy(Policy(), identity=partner.issue(signer), registry=url)
    identity = ca.issue(WORKLOAD)
    with Mesh(identity=identity, registry=url) as mesh:
        caplog.set_level(logging.WARNING, "zmeshlib.policy")
        follower = mesh.follow_policy(signers=["partner.org/ns/mesh/sa/control"], interval=0.01)
        assert "is of a trust domain this workload trusts" in caplog.text
        assert follower.counts == {"untrusted": 1} and follower.version is None
        svid, bundles = identity.current()
        identity.rotate(svid, bundles.with_bundle(partner.bundle))
        assert follower.wait(1, timeout=5.0) and str(follower.signer) == signer
        assert follower.counts == {"untrusted": 1}


def test_the_follower_stops_when_the_mesh_closes(
    url: str, control: Identity, mesh_for: Callable[..., Mesh]
) -> None:
    before = len(follower_threads())
    mesh = mesh_for(url)
    follower = mesh.follow_policy(signers=SIGNERS)
    assert len(follower_threads()) == before + 1
    mesh.close()
    assert follower.closed and len(follower_threads()) == before
    assert not follower.wait(1, timeout=0.0)
    publish_policy(POLICY_A, identity=control, registry=url)
    assert not follower.poll() and follower.version is None
    with pytest.raises(Closed):
        mesh.follow_policy(signers=SIGNERS)


def test_follow_policy_needs_an_identity_and_valid_signers(mesh_for: Callable[..., Mesh]) -> None:
    with (
        Mesh(policy={"peer_authentication": {"mode": "DISABLE"}}) as anonymous,
        pytest.raises(IdentityError, match="pass identity="),
    ):
        anonymous.follow_policy(signers=SIGNERS)
    mesh = mesh_for("memory://")
    with pytest.raises(PolicyError, match="signers"):
        mesh.follow_policy(signers=["http://x/y"])
    with pytest.raises(PolicyError, match="interval must be positive"):
        mesh.follow_policy(signers=SIGNERS, interval=0)


# -- the follower alone, on a store ------------------------------------------------------


def test_a_store_that_cannot_be_read_keeps_the_policy_logged_once_per_streak(
    tmp_path: Path, ca: DevCA, control: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry"
    store = DirStore(path)
    publish_policy(POLICY_A, identity=control, registry=store)
    applied: list[Policy] = []
    caplog.set_level(logging.INFO, "zmeshlib.policy")
    with PolicyFollower(store, SIGNERS, bundles=lambda: ca.bundles, apply=applied.append) as f:
        assert applied == [POLICY_A]
        os.rename(path, tmp_path / "away")
        for _ in range(5):
            f.poll()
        assert f.read_errors >= 5 and f.version == 1 and applied == [POLICY_A]
        failures = [r for r in caplog.records if "cannot read the signed policy" in r.message]
        assert len(failures) == 1
        os.rename(tmp_path / "away", path)
        publish_policy(POLICY_B, identity=control, registry=store)
        assert f.wait(2, timeout=5.0) and applied == [POLICY_A, POLICY_B]
        assert "can be read again" in caplog.text


def test_a_document_signed_ahead_of_the_clock_applies_once_its_time_is_near(
    ca: DevCA,
) -> None:
    now = [time.time()]
    svid = ca.issue_svid(CONTROL, 3600, not_before=now[0] + 600)
    store = MemoryStore()
    store.put_policy(SignedPolicy.sign(POLICY_A, svid, version=1, now=now[0] + 1000).to_bytes())
    applied: list[Policy] = []
    with PolicyFollower(
        store, SIGNERS, bundles=lambda: ca.bundles, apply=applied.append, clock=lambda: now[0]
    ) as follower:
        assert follower.counts == {"not-yet-valid": 1} and not applied
        now[0] += 1000 - dist.MAX_CLOCK_SKEW
        assert follower.poll() and applied == [POLICY_A]  # no store change needed
        assert follower.counts == {"not-yet-valid": 1}
