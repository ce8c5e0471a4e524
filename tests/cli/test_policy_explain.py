"""``zmesh policy explain``: every authorization policy's part in one decision, and the route,
split, retries and timeouts a call would get, checked on the demo's own policy (the rogue and
an allowed workload) and on a policy with every kind of part."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from zmeshlib import Policy, SpiffeId
from zmeshlib.cli.coffee import POLICY as COFFEE
from zmeshlib.cli.demo import POLICY as DEMO
from zmeshlib.cli.main import main
from zmeshlib.policy.explain import explain

CHECKOUT = "spiffe://example.org/ns/shop/sa/checkout"
ROGUE = "spiffe://example.org/ns/shop/sa/rogue"


def demo_with_traffic() -> dict[str, Any]:
    """The demo's policy with the traffic of its payment service spelled out."""
    doc = json.loads(json.dumps(DEMO))
    doc["services"]["payment"]["subsets"] = [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}},
    ]
    doc["traffic"] = {
        "payment": {
            "timeout": "2s",
            "retries": {
                "attempts": 3,
                "per_try_timeout": "300ms",
                "idempotent_methods": ["status"],
            },
            "split": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            "routes": [
                {"name": "status-fast", "match": [{"method": "status"}], "timeout": "500ms"}
            ],
        }
    }
    return doc


def run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: Any, *args: str
) -> tuple[int, str]:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    code = main(["policy", "explain", str(path), *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


ORDER = "spiffe://example.org/ns/shop/sa/order"


def test_the_coffee_shops_rogue_is_refused_at_each_door(capsys, tmp_path):
    """``zmesh demo``'s own policy: the rogue's call, subscription and push each fall to no
    rule of the ALLOW policy that selects the service."""
    for action, service, resource, policy in (
        ("call", "payment", "charge", "payment-callers"),
        ("subscribe", "orders", "orders.", "orders-feed"),
        ("publish", "brew", "brew", "brew-queue"),
    ):
        code, out = run(capsys, tmp_path, COFFEE, ROGUE, action, service, resource)
        assert code == 1, out
        assert out.startswith("DENIED (ALLOW)\n")
        assert f"ALLOW policies select this service ('{policy}') and none matches" in out
        assert f"  ALLOW  {policy}: no rule matches" in out


def test_the_coffee_shops_order_may_charge_with_the_canary_split(capsys, tmp_path):
    code, out = run(capsys, tmp_path, COFFEE, ORDER, "call", "payment", "charge")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "ALLOWED (ALLOW: payment-callers)"
    assert "  ALLOW  payment-callers: rules[0] matches" in lines
    assert lines[lines.index("traffic: the service's settings (no routes)") :] == [
        "traffic: the service's settings (no routes)",
        "  timeout: 3s",
        "  retries: 3 attempts, per try 500ms, on unavailable, connect-failure, backoff 2ms..10ms",
        "  split: v1 90%, v2 10%",
        "  load balancer: least_request",
        "  outlier detection: 2 consecutive errors eject for 60s, at most 50% ejected",
    ]


def test_the_examples_rogue_is_refused_by_the_allow_policy_of_payment(capsys, tmp_path):
    code, out = run(capsys, tmp_path, demo_with_traffic(), ROGUE, "call", "payment", "charge")
    assert code == 1
    assert out.splitlines()[:5] == [
        "DENIED (ALLOW)",
        f"  {ROGUE} may not call 'charge' on service 'payment': ALLOW policies select this "
        "service ('payment-callers') and none matches",
        "authorization policies, in document order:",
        "  ALLOW  orders-feed: does not select payment",
        "  ALLOW  payment-callers: no rule matches",
    ]
    assert "traffic: the service's settings" in out  # what it would get, were it allowed


def test_the_examples_checkout_may_charge_and_gets_the_services_settings(capsys, tmp_path):
    code, out = run(capsys, tmp_path, demo_with_traffic(), CHECKOUT, "call", "payment", "charge")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "ALLOWED (ALLOW: payment-callers)"
    assert "  ALLOW  payment-callers: rules[0] matches" in lines
    assert lines[lines.index("traffic: the service's settings") :] == [
        "traffic: the service's settings",
        "  timeout: 2s",
        "  retries: 3 attempts, per try 300ms, on connect-failure, unavailable, backoff "
        "25ms..250ms, idempotent status",
        "  split: v1 90%, v2 10%",
        "  load balancer: least_request",
    ]


def test_a_method_that_matches_a_route_gets_the_routes_settings(capsys, tmp_path):
    code, out = run(capsys, tmp_path, demo_with_traffic(), CHECKOUT, "call", "payment", "status")
    assert code == 0
    assert "traffic: route 'status-fast' (routes[0])\n  timeout: 500ms\n" in out


def test_the_examples_publisher_and_a_subscriber_it_does_not_allow(capsys, tmp_path):
    orders = "spiffe://example.org/ns/shop/sa/orders"
    code, out = run(capsys, tmp_path, DEMO, orders, "publish", "orders", "orders.new")
    assert code == 0 and "  ALLOW  orders-feed: rules[0] matches" in out
    assert "traffic:" not in out  # no route for a publication
    code, out = run(capsys, tmp_path, DEMO, ROGUE, "subscribe", "orders", "orders.")
    assert code == 1 and "  ALLOW  orders-feed: no rule matches" in out


EVERY_PART = textwrap.dedent(
    """\
    authorization:
      - name: deny-rogue
        action: DENY
        rules: [{from: {namespaces: [rogue]}}]
      - name: nothing
        action: ALLOW
        rules: []
      - name: payment
        selector: {services: [payment]}
        rules:
          - from: {principals: ["example.org/ns/shop/*"]}
            to: {call: [charge]}
          - to: {call: [status]}
            when: [{key: "header:region", values: [eu]}]
      - name: audit-charges
        action: AUDIT
        rules: [{to: {call: [charge]}}]
    traffic:
      payment:
        retries: {idempotent_methods: [charge]}
        hedging: {delay: 50ms, max_attempts: 3}
        outlier_detection: {consecutive_errors: 2, base_ejection_time: 1s, max_ejection_percent: 50}
        faults:
          delay: {fixed_delay: 100ms, percentage: 10}
          abort: {status: unavailable, percentage: 5}
        mirror: {service: payment-shadow, percentage: 20}
    """
)


def test_every_kind_of_part_is_named(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(EVERY_PART)
    policy = Policy.load(path)
    shop = SpiffeId.coerce("spiffe://example.org/ns/shop/sa/checkout")
    found = explain(policy, shop, "call", "payment", "charge")
    assert found.decision.allowed and found.decision.audited == ("audit-charges",)
    assert [(p.name, p.outcome) for p in found.parts] == [
        ("deny-rogue", "no rule matches"),
        ("nothing", "has no rules: matches nothing"),
        ("payment", "rules[0] matches"),
        ("audit-charges", "rules[0] matches"),
    ]
    lines = found.lines()
    assert "  audited by: audit-charges" in lines
    assert "  hedging: up to 3 attempts, 50ms apart" in lines
    assert "  outlier detection: 2 consecutive errors eject for 1s, at most 50% ejected" in lines
    assert (
        "  fault: delay 100ms for 10%" in lines
        and "  fault: abort with unavailable for 5%" in lines
    )
    assert "  mirror: 20% to payment-shadow" in lines
    # a rule that matches but for its when conditions, then with the header that makes it hold
    status = explain(policy, None, "call", "payment", "status")
    assert not status.decision.allowed
    assert status.parts[2].outcome == (
        "rules[1] matches but its when conditions do not hold (for these headers)"
    )
    eu = explain(policy, None, "call", "payment", "status", {"region": "eu"})
    assert eu.decision.allowed and eu.parts[2].outcome == "rules[1] matches"
    rogue = explain(policy, SpiffeId.coerce("spiffe://example.org/ns/rogue/sa/x"), "call",
                    "payment", "charge")  # fmt: skip
    assert rogue.decision.action == "DENY" and rogue.parts[0].outcome == "rules[0] matches"


def test_bad_input_is_one_error_line_and_status_2(capsys, tmp_path):
    code = main(["policy", "explain", str(tmp_path / "missing.yaml"), CHECKOUT, "call", "p", "m"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: ")
    (tmp_path / "mesh.yaml").write_text("{}")
    code = main(
        [
            "policy",
            "explain",
            str(tmp_path / "mesh.yaml"),
            "spiffe://bad domain/x",
            "call",
            "p",
            "m",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "bad domain" in err


def test_the_sample_in_the_policy_docs_is_what_explain_prints(capsys, tmp_path):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    start = docs.index("$ zmesh policy explain mesh.yaml")
    block = docs[start : docs.index("```", start)].splitlines()
    command, shown = block[0].split()[5:], block[1:]  # after "$ zmesh policy explain FILE"
    code, out = run(capsys, tmp_path, COFFEE, *command)
    assert code == 1 and out.splitlines() == shown
