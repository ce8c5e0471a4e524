"""Policy documents: every section read into its value, every mistake reported with its path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from zmeshlib._exceptions import PolicyError
from zmeshlib._models import Endpoint, StatusCode
from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import (
    AuthorizationPolicy,
    Condition,
    HedgingPolicy,
    Operation,
    Policy,
    RetryBudget,
    Rule,
    Source,
    SplitDestination,
    TrafficSpec,
)

DESIGN_EXAMPLE = textwrap.dedent(
    """\
    version: 1
    peer_authentication:
      mode: STRICT
    trust_domains: [example.org]
    services:
      orders:  {identities: ["example.org/ns/shop/sa/orders"]}
      payment: {identities: ["example.org/ns/shop/sa/payment*"]}
    authorization:
      - name: deny-rogue-namespace
        action: DENY
        rules:
          - from: {namespaces: [rogue]}
      - name: shop-can-read-payments
        selector: {services: [payment]}
        action: ALLOW
        rules:
          - from: {principals: ["example.org/ns/shop/*"]}
            to:   {subscribe: ["payments.*"], call: ["charge", "status"]}
          - from: {principals: ["example.org/ns/shop/sa/payment"]}
            to:   {publish: ["payments.*"]}
            when: [{key: "header:region", values: ["eu"]}]
    traffic:
      payment:
        timeout: 2s
        retries: {attempts: 2, per_try_timeout: 500ms, retry_on: [unavailable, connect-failure]}
        load_balancer: least_request
        outlier_detection: {consecutive_errors: 5, interval: 10s, base_ejection_time: 30s}
    telemetry: {}
    """
)

FULL = {
    "services": {
        "orders": {
            "identities": ["spiffe://example.org/ns/shop/sa/orders"],
            "endpoints": [
                "tcp://127.0.0.1:5555",
                {"address": "ipc:///tmp/orders.sock", "kind": "REP"},
            ],
            "subsets": [
                {"name": "v1", "labels": {"version": "1"}},
                {"name": "v2", "labels": {"version": "2"}},
            ],
        },
        "shadow": {},
    },
    "traffic": {
        "orders": {
            "timeout": "1m30s",
            "retries": {
                "attempts": 3,
                "per_try_timeout": "250ms",
                "retry_on": ["deadline-exceeded", "retriable"],
                "backoff": {"base_interval": "10ms", "max_interval": "1s"},
                "idempotent_methods": ["status", "get*"],
                "budget": {"retry_ratio": 0.25, "min_retries_per_second": 2, "ttl": "30s"},
            },
            "hedging": {"delay": "20ms", "max_attempts": 3},
            "load_balancer": "random",
            "outlier_detection": {
                "consecutive_errors": 3,
                "interval": "1s",
                "base_ejection_time": "5s",
                "max_ejection_time": "1m",
                "max_ejection_percent": 50,
                "always_eject_one": False,
                "min_health_percent": 50,
                "error_codes": ["unavailable", "internal"],
            },
            "pool": {"max_requests": 100, "max_pending": 10, "connect_timeout": "2s"},
            "faults": {
                "delay": {"fixed_delay": "100ms", "percentage": 10},
                "abort": {"status": "unavailable", "percentage": 5.5},
            },
            "split": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            "mirror": {"service": "orders", "subset": "v2", "percentage": 1},
        }
    },
    "telemetry": {
        "tracing": {"enabled": True, "sampling": 12.5},
        "metrics": {"enabled": False},
        "access_log": {"enabled": True},
    },
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(document: object) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(document)  # type: ignore[arg-type]
    return info.value.problems


def test_default_policy_is_strict_and_empty() -> None:
    policy = Policy()
    assert policy.peer_authentication.mode == "STRICT"
    assert policy.trust_domains == ()
    assert dict(policy.services) == {}
    assert policy.authorization == ()
    assert policy.traffic_for("anything") == TrafficSpec()
    assert policy.may_serve("anything", SpiffeId.parse("spiffe://x.org/a"))
    decision = policy.authorizer().check(None, "call", "svc", "m")
    assert decision.allowed and decision.action == "default" and decision.policy == ""
    assert Policy.from_dict({}) == policy
    assert Policy.from_dict({}).revision == policy.revision


def test_design_example_loads_with_its_values(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, "mesh.yaml", DESIGN_EXAMPLE))
    assert policy.trust_domains == ("example.org",)
    assert policy.services["payment"].identities == ("example.org/ns/shop/sa/payment*",)
    deny, allow = policy.authorization
    assert deny == AuthorizationPolicy(
        "deny-rogue-namespace", "DENY", (Rule(from_=Source(namespaces=("rogue",))),)
    )
    assert allow.selector == ("payment",)
    assert allow.rules[0].to == Operation(subscribe=("payments.*",), call=("charge", "status"))
    assert allow.rules[1].when == (Condition("header:region", ("eu",)),)
    assert allow.rules[1].when[0].header == "region"
    traffic = policy.traffic_for("payment")
    assert traffic.timeout == 2.0
    assert traffic.retries.attempts == 2
    assert traffic.retries.per_try_timeout == 0.5
    assert traffic.retries.statuses == {StatusCode.UNAVAILABLE}
    assert traffic.retries.on_connect_failure and not traffic.retries.on_retriable
    assert traffic.outlier_detection is not None
    assert traffic.outlier_detection.base_ejection_time == 30.0
    assert traffic.load_balancer == "least_request"


def test_every_section_reads_into_typed_values() -> None:
    policy = Policy.from_dict(FULL)
    orders = policy.services["orders"]
    assert orders.identities == ("example.org/ns/shop/sa/orders",)  # kept in Istio form
    assert orders.endpoints == (
        Endpoint("tcp://127.0.0.1:5555", "", "orders"),
        Endpoint("ipc:///tmp/orders.sock", "REP", "orders"),
    )
    assert orders.subsets["v2"].selects({"version": "2", "zone": "a"})
    assert not orders.subsets["v2"].selects({"version": "1"})
    t = policy.traffic_for("orders")
    assert t.timeout == 90.0
    assert t.retries.retry_on == ("deadline-exceeded", "retriable")
    assert t.retries.statuses == {StatusCode.DEADLINE_EXCEEDED}
    assert t.retries.on_retriable and not t.retries.on_connect_failure
    assert (t.retries.backoff.base_interval, t.retries.backoff.max_interval) == (0.01, 1.0)
    assert t.retries.budget == RetryBudget(retry_ratio=0.25, min_retries_per_second=2.0, ttl=30.0)
    assert t.retries.idempotent_methods == ("status", "get*")
    assert t.hedging == HedgingPolicy(delay=0.02, max_attempts=3)
    assert t.load_balancer == "random"
    assert t.outlier_detection is not None
    assert t.outlier_detection.error_codes == {StatusCode.UNAVAILABLE, StatusCode.INTERNAL}
    assert t.outlier_detection.effective_max_ejection_time == 60.0
    assert not t.outlier_detection.always_eject_one
    assert t.outlier_detection.min_health_percent == 50.0
    assert (t.pool.max_requests, t.pool.max_pending, t.pool.connect_timeout) == (100, 10, 2.0)
    assert t.pool.max_connections is None
    assert t.faults is not None and t.faults.delay is not None and t.faults.abort is not None
    assert (t.faults.delay.fixed_delay, t.faults.delay.percentage) == (0.1, 10.0)
    assert (t.faults.abort.status, t.faults.abort.percentage) == (StatusCode.UNAVAILABLE, 5.5)
    assert t.split == (SplitDestination("v1", 90), SplitDestination("v2", 10))
    assert t.mirror is not None and (t.mirror.subset, t.mirror.percentage) == ("v2", 1.0)
    assert policy.telemetry.tracing.sampling == 12.5
    assert not policy.telemetry.metrics.enabled and policy.telemetry.access_log.enabled


def test_secure_naming() -> None:
    policy = Policy.from_dict({"services": {"pay": {"identities": ["x.org/ns/a/sa/pay*"]}}})
    assert policy.may_serve("pay", SpiffeId.parse("spiffe://x.org/ns/a/sa/pay-v2"))
    assert not policy.may_serve("pay", SpiffeId.parse("spiffe://x.org/ns/b/sa/pay"))
    assert not policy.may_serve("pay", SpiffeId.parse("spiffe://y.org/ns/a/sa/pay"))
    assert policy.may_serve("unlisted", SpiffeId.parse("spiffe://y.org/anything"))
    assert Policy.from_dict({"services": {"open": {}}}).may_serve(
        "open", SpiffeId.parse("spiffe://y.org/z")
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    policy = Policy.from_dict({"traffic": {"s": {"timeout": text}}})
    assert policy.traffic_for("s").timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "needs a unit"),
        ("5", "is not a duration"),
        ("5 sec", "is not a duration"),
        ("-1s", "is not a duration"),
        ("0s", "greater than zero"),
        ("", "is not a duration"),
        (True, "expected a duration"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    (problem,) = problems_of({"traffic": {"s": {"timeout": value}}})
    assert problem.startswith("traffic.s.timeout: ")
    assert message in problem


def test_revision_is_stable_and_tracks_content() -> None:
    a = Policy.from_dict(FULL)
    b = Policy.from_dict(json.loads(json.dumps(FULL)))
    assert a.revision == b.revision and len(a.revision) == 12
    changed = json.loads(json.dumps(FULL))
    changed["traffic"]["orders"]["timeout"] = "91s"
    assert Policy.from_dict(changed).revision != a.revision
    # the revision is of the normalized policy: the spelling of a duration does not matter
    same = json.loads(json.dumps(FULL))
    same["traffic"]["orders"]["timeout"] = "90s"
    assert Policy.from_dict(same).revision == a.revision


def test_same_tree_from_yaml_toml_and_json(tmp_path: Path) -> None:
    toml = textwrap.dedent(
        """\
        version = 1
        trust_domains = ["example.org"]

        [services.orders]
        identities = ["example.org/ns/shop/sa/orders"]

        [[authorization]]
        name = "deny-rogue-namespace"
        action = "DENY"
        rules = [{from = {namespaces = ["rogue"]}}]

        [traffic.payment]
        timeout = "2s"
        retries = {attempts = 2, per_try_timeout = "500ms", retry_on = ["unavailable", "connect-failure"]}
        """
    )
    doc = {
        "version": 1,
        "trust_domains": ["example.org"],
        "services": {"orders": {"identities": ["example.org/ns/shop/sa/orders"]}},
        "authorization": [
            {
                "name": "deny-rogue-namespace",
                "action": "DENY",
                "rules": [{"from": {"namespaces": ["rogue"]}}],
            }
        ],
        "traffic": {
            "payment": {
                "timeout": "2s",
                "retries": {
                    "attempts": 2,
                    "per_try_timeout": "500ms",
                    "retry_on": ["unavailable", "connect-failure"],
                },
            }
        },
    }
    import yaml

    from_toml = Policy.load(write(tmp_path, "mesh.toml", toml))
    from_json = Policy.load(write(tmp_path, "mesh.json", json.dumps(doc)))
    from_yaml = Policy.load(write(tmp_path, "mesh.yml", yaml.safe_dump(doc)))
    assert from_toml == from_json == from_yaml == Policy.from_dict(doc)
    assert len({from_toml.revision, from_json.revision, from_yaml.revision}) == 1


MISTAKES = textwrap.dedent(
    """\
    version: 2
    peer_authentication: {mode: strict}
    trust_domains: [Example.org]
    services:
      orders:
        identities: ["example.org/ns/shop/sa/orders", "example.org/ns/*/sa/x"]
        endpoints: ["tcp://127.0.0.1"]
      payment: {subsets: [{name: v1, labels: {version: "1"}}]}
    authorization:
      - name: a
        rules:
          - from: {principals: []}
          - to: {publish: ["orders.*.created"], subscribe: ["*.created"], call: ["*charge*"]}
      - name: a
        action: MAYBE
      - name: c
        action: CUSTOM
        rules:
          - when: [{key: "region", values: [eu]}]
            form: {namespaces: [x]}
    traffic:
      payment:
        timeout: 2
        retries: {attempts: -1, per_try_timeout: 5x, retry_on: [unavailabel]}
        split: [{subset: v1, weight: 60}, {subset: v2, weight: 30}]
        faults: {abort: {status: ok, percentage: 150}}
        load_balancer: fastest
    telemetry: {tracing: {sampling: 101}}
    extra: 1
    """
)

#: (path, a fragment of its message): every mistake in MISTAKES.
EXPECTED_MISTAKES = [
    ("extra", "unknown key"),
    ("version", "unsupported version 2"),
    ("peer_authentication.mode", "did you mean 'STRICT'"),
    ("trust_domains[0]", "trust-domain-charset"),
    ("services.orders.identities[1]", "'*' may appear once"),
    ("services.orders.endpoints[0]", "not an endpoint address"),
    ("authorization[0].rules[0].from.principals", "empty list"),
    ("authorization[0].rules[1].to.publish[0]", "filters topics by prefix"),
    ("authorization[0].rules[1].to.subscribe[0]", "an exact topic, or '*'"),
    ("authorization[0].rules[1].to.call[0]", "'*' may appear once"),
    ("authorization[1].name", "duplicate policy name 'a'"),
    ("authorization[1].action", "'MAYBE' is not one of"),
    ("authorization[2]", "needs 'provider: NAME'"),
    ("authorization[2].rules[0].form", "did you mean 'from'"),
    ("authorization[2].rules[0].when[0].key", "'header:<name>'"),
    ("traffic.payment.timeout", "needs a unit"),
    ("traffic.payment.retries.attempts", "below the minimum 0"),
    ("traffic.payment.retries.per_try_timeout", "not a duration"),
    ("traffic.payment.retries.retry_on[0]", "did you mean 'unavailable'"),
    ("traffic.payment.split", "weights sum to 90"),
    ("traffic.payment.split[1].subset", "subset 'v2' of service 'payment' is not defined"),
    ("traffic.payment.faults.abort.status", "'ok' is not one of"),
    ("traffic.payment.faults.abort.percentage", "above the maximum 100"),
    ("traffic.payment.load_balancer", "did you mean 'least_request'"),
    ("telemetry.tracing.sampling", "above the maximum 100"),
]


def assert_every_mistake(problems: list[str] | tuple[str, ...]) -> None:
    assert len(problems) == len(EXPECTED_MISTAKES), "\n".join(problems)
    for path, fragment in EXPECTED_MISTAKES:
        hits = [p for p in problems if p.startswith(path + ": ") and fragment in p]
        assert hits, f"no problem at {path} mentioning {fragment!r} in:\n" + "\n".join(problems)


def test_a_file_with_many_mistakes_reports_all_of_them(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", MISTAKES)
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert_every_mistake(info.value.problems)
    assert "25 problems" in str(info.value)
    assert str(path) in str(info.value)
    # each problem also appears in the message, so a log line alone is actionable
    assert all(p in str(info.value) for p in info.value.problems)


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ([], "<document>", "expected a mapping"),
        ({"authorization": {}}, "authorization", "expected a list"),
        (
            {"authorization": [{"action": "DENY"}]},
            "authorization[0]",
            "missing required key 'name'",
        ),
        (
            {"authorization": [{"name": "x", "provider": "p"}]},
            "authorization[0].provider",
            "only a CUSTOM policy",
        ),
        (
            {"authorization": [{"name": "x", "selector": {"services": []}}]},
            "authorization[0].selector.services",
            "empty list",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"to": {}}]}]},
            "authorization[0].rules[0].to",
            "names no field",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"from": {"principals": ["http://a/b"]}}]}]},
            "authorization[0].rules[0].from.principals[0]",
            "written with 'spiffe://'",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"from": {"principals": ["a.org/x/"]}}]}]},
            "authorization[0].rules[0].from.principals[0]",
            "path-trailing-slash",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"from": {"principals": ["A.org/*"]}}]}]},
            "authorization[0].rules[0].from.principals[0]",
            "trust-domain-charset",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"from": {"namespaces": ["a/b"]}}]}]},
            "authorization[0].rules[0].from.namespaces[0]",
            "one path segment",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"to": {"publish": ["*.created"]}}]}]},
            "authorization[0].rules[0].to.publish[0]",
            "'*' may only end a topic pattern",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"to": {"publish": [""]}}]}]},
            "authorization[0].rules[0].to.publish[0]",
            "must not be empty",
        ),
        (
            {"authorization": [{"name": "x", "rules": [{"when": [{"key": "header:a"}]}]}]},
            "authorization[0].rules[0].when[0]",
            "needs 'values', 'not_values'",
        ),
        (
            {"services": {"s": {"subsets": [{"name": "a"}]}}},
            "services.s.subsets[0]",
            "missing required key 'labels'",
        ),
        (
            {
                "services": {
                    "s": {"subsets": [{"name": "a", "labels": {}}, {"name": "a", "labels": {}}]}
                }
            },
            "services.s.subsets[1].name",
            "duplicate subset name",
        ),
        (
            {"services": {"s": {"endpoints": [{"address": "tcp://h:1", "kind": "DEALER"}]}}},
            "services.s.endpoints[0].kind",
            "is not one of",
        ),
        ({"services": {"a b": {"identities": 3}}}, 'services["a b"].identities', "expected a list"),
        (
            {"traffic": {"s": {"timeout": "1s", "retries": {"per_try_timeout": "2s"}}}},
            "traffic.s.retries.per_try_timeout",
            "exceeds the overall timeout",
        ),
        ({"traffic": {"s": {"mirror": {}}}}, "traffic.s.mirror", "names neither"),
        ({"traffic": {"s": {"mirror": {"percentage": 5}}}}, "traffic.s.mirror", "to itself"),
        (
            {"traffic": {"s": {"mirror": {"service": "t", "subset": "v9"}}}},
            "traffic.s.mirror.subset",
            "'t' is not listed",
        ),
        (
            {"traffic": {"s": {"pool": {"max_requests": 0}}}},
            "traffic.s.pool.max_requests",
            "below the minimum 1",
        ),
        (
            {"traffic": {"s": {"pool": {"max_requests": True}}}},
            "traffic.s.pool.max_requests",
            "expected an integer",
        ),
        (
            {
                "traffic": {
                    "s": {"retries": {"backoff": {"base_interval": "1s", "max_interval": "1ms"}}}
                }
            },
            "traffic.s.retries.backoff.max_interval",
            "below base_interval",
        ),
        ({"traffic": {"s": {"faults": {}}}}, "traffic.s.faults", "names no fault"),
        (
            {"telemetry": {"metrics": {"enabled": "yes"}}},
            "telemetry.metrics.enabled",
            "true or false",
        ),
        ({"version": "1"}, "version", "expected an integer"),
    ],
)
def test_single_problems_name_their_path(document: object, path: str, fragment: str) -> None:
    problems = problems_of(document)
    assert any(p.startswith(path + ": ") and fragment in p for p in problems), problems


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="unknown file type"):
        Policy.load(write(tmp_path, "mesh.ini", "x"))
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match="not valid YAML") as info:
        Policy.load(write(tmp_path, "dup.yaml", "version: 1\nversion: 1\n"))
    assert "duplicate key 'version'" in info.value.problems[0]
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.load(write(tmp_path, "bad.toml", "version = \n"))
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(write(tmp_path, "bad.json", "{"))


def test_policies_are_frozen() -> None:
    policy = Policy.from_dict(FULL)
    with pytest.raises(AttributeError):
        policy.trust_domains = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.services["x"] = policy.services["orders"]  # type: ignore[index]
