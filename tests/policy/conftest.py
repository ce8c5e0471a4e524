"""Signers for the signed-policy tests: real dev CAs, real SVIDs."""

from __future__ import annotations

import pytest

from zmeshlib import DevCA, Identity, Policy

CONTROL = "spiffe://example.org/ns/mesh/sa/control"
ROGUE = "spiffe://example.org/ns/shop/sa/rogue"
SIGNERS = ["example.org/ns/mesh/sa/control"]

#: Two policies that differ, both valid for a signer of example.org.
POLICY_A = Policy.from_dict(
    {"trust_domains": ["example.org"], "authorization": [{"name": "a", "rules": []}]}
)
POLICY_B = Policy.from_dict(
    {
        "trust_domains": ["example.org"],
        "authorization": [{"name": "b", "rules": [{"to": {"call": ["status"]}}]}],
        "traffic": {"payment": {"timeout": "2s", "retries": {"attempts": 1}}},
    }
)


#: Made when the tests are collected, so an instant a test module takes at import lies
#: inside the validity of the CA and of these two identities.
CA = DevCA.create("example.org")
CONTROL_IDENTITY = CA.issue(CONTROL)
ROGUE_IDENTITY = CA.issue(ROGUE)


@pytest.fixture(scope="session")
def ca() -> DevCA:
    return CA


@pytest.fixture(scope="session")
def control() -> Identity:
    return CONTROL_IDENTITY


@pytest.fixture(scope="session")
def rogue() -> Identity:
    return ROGUE_IDENTITY
