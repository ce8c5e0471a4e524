"""The remembered verdicts of signed policy checks: a document is checked once per process
for given bundles, while the clock, the signer patterns and the version are checked on every
call; other bundles check again; a refusal comes back with its reason; the table is bounded."""

from __future__ import annotations

import time
from typing import Any

import pytest

from zmeshlib import DevCA, Identity, Policy, SignedPolicyError
from zmeshlib.policy import SignedPolicy
from zmeshlib.policy import distribution as dist
from zmeshlib.policy._verdicts import VERDICTS, Verdicts

from .conftest import POLICY_A, POLICY_B, SIGNERS

NOW = time.time()


@pytest.fixture
def chains(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The real chain verification, each call recorded; the process's table emptied."""
    calls: list[object] = []
    real = dist.verify_chain

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "verify_chain", counted)
    VERDICTS.clear()
    return calls


def refusal(doc: SignedPolicy, bundles: Any, signers: Any = SIGNERS, **kw: Any) -> str:
    with pytest.raises(SignedPolicyError) as info:
        doc.verify(bundles, signers, now=kw.pop("now", NOW), **kw)
    return info.value.reason


def test_a_document_is_checked_once_but_time_signers_and_version_every_time(
    ca: DevCA, control: Identity, chains: list[object]
) -> None:
    doc = SignedPolicy.sign(POLICY_B, control.svid, version=5, now=NOW)
    first = doc.verify(ca.bundles, SIGNERS, now=NOW)
    # another Bundles object with the same content, another decoded copy of the bytes
    again = SignedPolicy.from_bytes(doc.to_bytes()).verify(ca.bundles, SIGNERS, now=NOW)
    assert again.policy is first.policy and len(chains) == 1
    assert refusal(doc, ca.bundles, applied=5) == "older"
    assert refusal(doc, ca.bundles, signers=["example.org/ns/other/*"]) == "not-a-signer"
    assert refusal(doc, ca.bundles, now=NOW - 3600) == "not-yet-valid"
    assert doc.verify(ca.bundles, SIGNERS, applied=4, now=NOW).version == 5
    assert len(chains) == 1


def test_other_bundles_check_again(ca: DevCA, control: Identity, chains: list[object]) -> None:
    doc = SignedPolicy.sign(POLICY_A, control.svid, version=1, now=NOW)
    assert doc.verify(ca.bundles, SIGNERS, now=NOW).version == 1
    stranger = DevCA.create("example.org").bundles  # another CA calling itself example.org
    assert refusal(doc, stranger) == "untrusted"
    assert doc.verify(ca.bundles, SIGNERS, now=NOW).version == 1
    assert len(chains) == 3


def test_a_refusal_is_remembered_with_its_reason_and_message(
    ca: DevCA, control: Identity, chains: list[object]
) -> None:
    stranger = DevCA.create("example.org").bundles
    doc = SignedPolicy.sign(POLICY_A, control.svid, version=1, now=NOW)
    with pytest.raises(SignedPolicyError) as first:
        doc.verify(stranger, SIGNERS, now=NOW)
    with pytest.raises(SignedPolicyError) as second:
        doc.verify(stranger, SIGNERS, now=NOW)
    assert second.value is not first.value  # raised afresh, not a shared traceback
    assert (second.value.reason, str(second.value)) == (first.value.reason, str(first.value))
    assert len(chains) == 1


def test_a_policy_that_locks_its_signer_out_is_refused_from_memory_too(
    ca: DevCA, control: Identity, chains: list[object]
) -> None:
    locked = Policy.from_dict({"trust_domains": ["partner.org"]})
    doc = SignedPolicy.sign(POLICY_A, control.svid, version=1, now=NOW)
    lockout = dist.attrs.evolve(doc, policy_bytes=dist.canonical_bytes(locked))
    resigned = dist.attrs.evolve(
        lockout, signature=dist.sign_with(control.svid.private_key, lockout.signed_bytes())
    )
    assert refusal(resigned, ca.bundles) == refusal(resigned, ca.bundles) == "lockout"
    assert len(chains) == 1


def test_the_table_keeps_the_latest_outcomes_only() -> None:
    table = Verdicts(size=2)
    calls: list[str] = []

    def check(name: str) -> Any:
        return lambda: calls.append(name) or name

    for name in ("a", "b", "a", "c", "b", "a"):
        assert table.judge(("k", name.encode()), None, check(name)) == name
    # a hit moves a past b; c pushes b out; b is checked again and pushes a out
    assert calls == ["a", "b", "c", "b", "a"]
