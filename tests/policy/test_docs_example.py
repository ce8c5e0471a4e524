"""The worked example in docs/authorization.md says what the authorizer does, row by row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import AuthzRequest, Policy

DOC = (Path(__file__).resolve().parents[2] / "docs" / "authorization.md").read_text()
EXAMPLE = DOC[DOC.index("## Worked example") :]


def example_policy() -> Policy:
    block = re.search(r"```yaml\n(.*?)```", EXAMPLE, re.S)
    assert block is not None
    return Policy.from_dict(yaml.safe_load(block.group(1)))


def table_rows(first_header: str, section: str) -> list[list[str]]:
    lines = section[section.index(first_header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def principal(cell: str) -> SpiffeId | None:
    return None if cell == "anonymous" else SpiffeId.coerce(cell)


DECISIONS = table_rows("| principal | action |", EXAMPLE)
SUBSCRIPTIONS = table_rows("| principal | service | requested prefix |", EXAMPLE)


def stock_check(request: AuthzRequest) -> bool:
    return int(request.headers.get("qty", "0")) <= 10


def test_the_tables_were_found() -> None:
    assert len(DECISIONS) >= 12 and len(SUBSCRIPTIONS) >= 6


@pytest.mark.parametrize("row", DECISIONS, ids=[" ".join(r[:4]) for r in DECISIONS])
def test_decision_rows(row: list[str]) -> None:
    who, action, service, resource, headers, allowed, decided, audited, _why = row
    pairs = dict(h.split("=") for h in headers.split(",") if h)
    authz = example_policy().authorizer(providers={"stock-check": stock_check})
    d = authz.check(principal(who), action, service, resource, pairs)
    assert d.allowed == (allowed == "yes"), d.reason
    kind, _, name = decided.partition(" ")
    assert (d.action, d.policy) == (kind, name.strip("`")), d.reason
    assert d.audited == tuple(a.strip("`") for a in audited.split(",") if a), d.reason


@pytest.mark.parametrize("row", SUBSCRIPTIONS, ids=[" ".join(r[:3]) for r in SUBSCRIPTIONS])
def test_subscription_rows(row: list[str]) -> None:
    who, service, prefix, applied, _why = row
    prefix = prefix.split("`")[0].strip('"')
    expected = () if applied == "nothing" else tuple(p.strip(" `") for p in applied.split(","))
    authz = example_policy().authorizer()
    assert authz.allowed_subscription(principal(who), service, prefix) == expected


POLICY_DOC = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
ROUTES = POLICY_DOC[POLICY_DOC.index("### `traffic.<service>.routes`") :]
ROUTES = ROUTES[: ROUTES.index("\n## ")]


def routes_example() -> Policy:
    block = re.search(r"```yaml\n(.*?)```", ROUTES, re.S)
    assert block is not None
    return Policy.from_dict(yaml.safe_load(block.group(1)))


@pytest.mark.parametrize(
    ("method", "headers", "timeout", "attempts", "split"),
    [
        ("get", {"x-canary": "true"}, 2.0, 2, [("v2", 100)]),
        ("get", {"x-user": "test-7"}, 2.0, 2, [("v2", 100)]),
        ("get", {"x-user": "test-7x"}, 2.0, 2, [("v1", 90), ("v2", 10)]),
        ("reportDaily", {}, 10.0, 0, [("v1", 90), ("v2", 10)]),
        ("reportDaily", {"x-canary": "true"}, 2.0, 2, [("v2", 100)]),
        ("get", {}, 2.0, 2, [("v1", 90), ("v2", 10)]),
    ],
)
def test_the_routes_example_does_what_it_says(
    method: str,
    headers: dict[str, str],
    timeout: float,
    attempts: int,
    split: list[tuple[str, int]],
) -> None:
    from zmeshlib.policy import analyze
    from zmeshlib.resilience.routing import select

    policy = routes_example()
    assert analyze(policy) == ()
    settings = select(policy.traffic_for("orders"), method, headers)
    assert (settings.timeout, settings.retries.attempts) == (timeout, attempts)
    assert [(d.subset, d.weight) for d in settings.split] == split
