"""``traffic.<service>.routes``: read into Route values, chosen by select, findings by analyze."""

from __future__ import annotations

import random
import re
from typing import Any

import attrs
import pytest

from zmeshlib._exceptions import PolicyError
from zmeshlib._models import StatusCode
from zmeshlib.policy import (
    AbortFault,
    FaultSpec,
    HeaderMatch,
    HedgingPolicy,
    MirrorSpec,
    Policy,
    RetryPolicy,
    Route,
    RouteMatch,
    SplitDestination,
    TrafficSpec,
    analyze,
)
from zmeshlib.policy import _traffic as traffic_module
from zmeshlib.resilience.routing import plan, select

SUBSETS = [{"name": "v1", "labels": {"version": "1"}}, {"name": "v2", "labels": {"version": "2"}}]


def document(routes: Any, **service: Any) -> dict[str, Any]:
    """A policy with services orders (subsets v1, v2) and shadow, and traffic.orders."""
    return {
        "services": {"orders": {"subsets": SUBSETS}, "shadow": {}},
        "traffic": {"orders": {**service, "routes": routes}},
    }


def spec_of(routes: Any, **service: Any) -> TrafficSpec:
    return Policy.from_dict(document(routes, **service)).traffic_for("orders")


def problems_of(routes: Any, **service: Any) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as refused:
        Policy.from_dict(document(routes, **service))
    return refused.value.problems


BASE = TrafficSpec(timeout=2.0, retries=RetryPolicy(attempts=1, per_try_timeout=0.5))
SERVICE = {"timeout": "2s", "retries": {"attempts": 1, "per_try_timeout": "500ms"}}
V2 = (SplitDestination("v2", 100),)


# -- parsing: valid documents ------------------------------------------------------

VALID = [
    pytest.param([{}], Route(BASE), id="no match: every request, all inherited"),
    pytest.param(
        [{"name": "canary", "split": [{"subset": "v2", "weight": 100}]}],
        Route(attrs.evolve(BASE, split=V2), name="canary"),
        id="split overridden",
    ),
    pytest.param(
        [{"match": [{"method": "charge"}]}],
        Route(BASE, match=(RouteMatch(method="charge"),)),
        id="method exact",
    ),
    pytest.param(
        [{"match": [{"method": "get*"}, {"method": "*Status"}, {"method": "*"}]}],
        Route(BASE, match=(RouteMatch("get*"), RouteMatch("*Status"), RouteMatch("*"))),
        id="method prefix, suffix, any: three alternatives",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-env": "canary", "x-empty": ""}}]}],
        Route(
            BASE,
            match=(
                RouteMatch(
                    headers=(HeaderMatch("x-empty", exact=""), HeaderMatch("x-env", exact="canary"))
                ),
            ),
        ),
        id="header strings are exact values, sorted by name",
    ),
    pytest.param(
        [
            {
                "match": [
                    {
                        "method": "list*",
                        "headers": {
                            "x-v": {"regex": "v[0-9]+"},
                            "x-u": {"prefix": "test-"},
                            "x-e": {"exact": "1"},
                        },
                    }
                ]
            }
        ],
        Route(
            BASE,
            match=(
                RouteMatch(
                    "list*",
                    (
                        HeaderMatch("x-e", exact="1"),
                        HeaderMatch("x-u", prefix="test-"),
                        HeaderMatch("x-v", regex="v[0-9]+"),
                    ),
                ),
            ),
        ),
        id="method and headers of each kind",
    ),
    pytest.param(
        [{"timeout": "10s", "retries": {"attempts": 0}}],
        Route(attrs.evolve(BASE, timeout=10.0, retries=RetryPolicy(attempts=0))),
        id="timeout and retries overridden; retries replaced whole",
    ),
    pytest.param(
        [{"faults": {"abort": {"status": "unavailable", "percentage": 5}}}],
        Route(attrs.evolve(BASE, faults=FaultSpec(abort=AbortFault(StatusCode.UNAVAILABLE, 5.0)))),
        id="faults overridden",
    ),
    pytest.param(
        [{"mirror": {"service": "shadow", "percentage": 10}}],
        Route(attrs.evolve(BASE, mirror=MirrorSpec("shadow", None, 10.0))),
        id="mirror overridden",
    ),
    pytest.param(
        [{"mirror": {"subset": "v2"}}],
        Route(attrs.evolve(BASE, mirror=MirrorSpec("orders", "v2", 100.0))),
        id="mirror to a subset of the service itself",
    ),
    pytest.param(
        [{"retries": {"idempotent_methods": ["get*"]}, "hedging": {"delay": "50ms"}}],
        Route(
            attrs.evolve(
                BASE,
                retries=RetryPolicy(idempotent_methods=("get*",)),
                hedging=HedgingPolicy(0.05),
            )
        ),
        id="hedging with the route's idempotent methods",
    ),
]


@pytest.mark.parametrize(("routes", "expected"), VALID)
def test_a_valid_route_reads_into_its_value(routes: Any, expected: Route) -> None:
    spec = spec_of(routes, **SERVICE)
    assert spec.routes == (expected,)
    assert attrs.evolve(spec, routes=()) == BASE
    assert spec.routes[0].traffic.routes == ()


def test_routes_keep_their_order_and_inherit_the_service_settings() -> None:
    spec = spec_of(
        [
            {"name": "a", "match": [{"method": "a"}], "timeout": "1s"},
            {"name": "b", "match": [{"method": "b"}]},
        ],
        timeout="2s",
        load_balancer="round_robin",
        outlier_detection={"consecutive_errors": 3},
        pool={"max_requests": 10},
        split=[{"subset": "v1", "weight": 100}],
        hedging={"delay": "100ms"},
        retries={"idempotent_methods": ["*"]},
    )
    a, b = spec.routes
    assert (a.name, b.name) == ("a", "b")
    assert a.traffic == attrs.evolve(spec, routes=(), timeout=1.0)
    assert b.traffic == attrs.evolve(spec, routes=())
    for route in (a, b):  # what belongs to the destination is the service's, always
        assert route.traffic.load_balancer == "round_robin"
        assert route.traffic.outlier_detection == spec.outlier_detection
        assert route.traffic.pool == spec.pool


def test_a_hedging_service_with_idempotent_routes() -> None:
    """A route's retries that list idempotent methods keep the inherited hedging valid."""
    spec = spec_of(
        [{"retries": {"attempts": 3, "idempotent_methods": ["status"]}}],
        hedging={"delay": "100ms"},
        retries={"idempotent_methods": ["get*"]},
    )
    assert spec.routes[0].traffic.hedging == HedgingPolicy(0.1)
    assert spec.routes[0].traffic.retries.idempotent_methods == ("status",)


# -- parsing: mistakes ---------------------------------------------------------------

R0 = "traffic.orders.routes[0]"

INVALID = [
    pytest.param([], "traffic.orders.routes", "an empty list", id="no routes"),
    pytest.param({"a": {}}, "traffic.orders.routes", "expected a list", id="routes a mapping"),
    pytest.param(["x"], R0, "expected a mapping", id="route a string"),
    pytest.param([{"matches": []}], f"{R0}.matches", "did you mean 'match'?", id="unknown key"),
    pytest.param([{"name": ""}], f"{R0}.name", "must not be empty", id="empty name"),
    pytest.param(
        [{"name": "a"}, {"name": "a"}],
        "traffic.orders.routes[1].name",
        "duplicate route name 'a' (also routes[0])",
        id="duplicate name",
    ),
    pytest.param(
        [{"match": []}], f"{R0}.match", "omit match to match every request", id="match: []"
    ),
    pytest.param(
        [{"match": {"method": "x"}}],
        f"{R0}.match",
        "expected a list of alternatives, got a mapping",
        id="match a mapping",
    ),
    pytest.param(
        [{"match": [{"method": "a"}, {}]}],
        f"{R0}.match[1]",
        "names no condition (method, headers), so it matches every request; omit match",
        id="empty alternative",
    ),
    pytest.param(
        [{"match": [{"methods": "a"}]}],
        f"{R0}.match[0].methods",
        "did you mean 'method'?",
        id="unknown alternative key",
    ),
    pytest.param(
        [{"match": [{"method": "a*b"}]}],
        f"{R0}.match[0].method",
        "'a*b': '*' may appear once, at the start or at the end of a pattern",
        id="method pattern as call's",
    ),
    pytest.param(
        [{"match": [{"method": ""}]}],
        f"{R0}.match[0].method",
        "must not be empty",
        id="empty method",
    ),
    pytest.param(
        [{"match": [{"headers": {}}]}],
        f"{R0}.match[0].headers",
        "names no header",
        id="empty headers",
    ),
    pytest.param(
        [{"match": [{"headers": ["x-a"]}]}],
        f"{R0}.match[0].headers",
        "expected a mapping, got a list",
        id="headers a list",
    ),
    pytest.param(
        [{"match": [{"headers": {"": "x"}}]}],
        f'{R0}.match[0].headers[""]',
        "a header name must not be empty",
        id="empty header name",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": 2}}]}],
        f"{R0}.match[0].headers.x-v",
        "expected a string (the exact value) or a mapping with one of exact, prefix, regex; "
        "got a number (2)",
        id="header value a number",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {}}}]}],
        f"{R0}.match[0].headers.x-v",
        "give exactly one of exact, prefix, regex",
        id="header condition empty",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"exact": "1", "prefix": "1"}}}]}],
        f"{R0}.match[0].headers.x-v",
        "give exactly one of exact, prefix, regex (got exact, prefix)",
        id="two header conditions",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"suffix": "1"}}}]}],
        f"{R0}.match[0].headers.x-v.suffix",
        "unknown key (expected one of: exact, prefix, regex)",
        id="unknown header condition",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"prefix": 1}}}]}],
        f"{R0}.match[0].headers.x-v.prefix",
        "expected a string, got a number (1)",
        id="prefix a number",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"regex": "v[0-9"}}}]}],
        f"{R0}.match[0].headers.x-v.regex",
        "header 'x-v': not a valid regular expression: unterminated character set at position 1",
        id="invalid regex",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"regex": "a{99999999999}"}}}]}],
        f"{R0}.match[0].headers.x-v.regex",
        "header 'x-v': not a valid regular expression: the repetition number is too large",
        id="regex repeat beyond any",
    ),
    pytest.param(
        [{"match": [{"headers": {"x-v": {"regex": "a" * 513}}}]}],
        f"{R0}.match[0].headers.x-v.regex",
        "header 'x-v': a regex of 513 characters is too long (at most 512)",
        id="regex too long",
    ),
    pytest.param(
        [{"load_balancer": "random"}],
        f"{R0}.load_balancer",
        "load_balancer belongs to the destination service, not to a route: set it at "
        "traffic.orders.load_balancer (as Istio keeps it in the DestinationRule)",
        id="load_balancer in a route",
    ),
    pytest.param(
        [{"outlier_detection": {}}],
        f"{R0}.outlier_detection",
        "set it at traffic.orders.outlier_detection",
        id="outlier_detection in a route",
    ),
    pytest.param(
        [{"pool": {"max_requests": 1}}], f"{R0}.pool", "set it at traffic.orders.pool", id="pool"
    ),
    pytest.param(
        [{"timeout": 5}], f"{R0}.timeout", "a duration needs a unit", id="timeout a number"
    ),
    pytest.param(
        [{"retries": {"attempts": 11}}],
        f"{R0}.retries.attempts",
        "11 is above the maximum 10",
        id="retries as at service level",
    ),
    pytest.param(
        [{"split": [{"subset": "v1", "weight": 60}]}],
        f"{R0}.split",
        "weights sum to 60, they must sum to 100",
        id="split weights",
    ),
    pytest.param(
        [{"split": [{"subset": "v3", "weight": 100}]}],
        f"{R0}.split[0].subset",
        "subset 'v3' of service 'orders' is not defined in services.orders.subsets",
        id="split subset undefined",
    ),
    pytest.param(
        [{"faults": {}}], f"{R0}.faults", "names no fault (delay, abort)", id="faults empty"
    ),
    pytest.param(
        [{"mirror": {"service": "orders"}}],
        f"{R0}.mirror",
        "mirrors the service to itself; name another service or a subset",
        id="mirror to itself",
    ),
    pytest.param(
        [{"mirror": {"service": "shadow", "subset": "v1"}}],
        f"{R0}.mirror.subset",
        "subset 'v1' of service 'shadow' is not defined in services.shadow.subsets",
        id="mirror subset undefined",
    ),
    pytest.param(
        [{"hedging": {"delay": "10ms"}}],
        f"{R0}.hedging",
        "hedging applies only to retries.idempotent_methods; list them (method patterns such as "
        '["status", "get*"]) (the route\'s retries are traffic.orders.retries)',
        id="hedging without idempotent methods, retries inherited",
    ),
    pytest.param(
        [{"retries": {"per_try_timeout": "3s"}}],
        f"{R0}.retries.per_try_timeout",
        "3s exceeds the overall timeout (2s, from traffic.orders.timeout), so it can never fire",
        id="per-try timeout over the inherited timeout",
    ),
    pytest.param(
        [{"timeout": "10s", "retries": {"per_try_timeout": "20s"}}],
        f"{R0}.retries.per_try_timeout",
        "20s exceeds the overall timeout (10s), so it can never fire",
        id="per-try timeout over the route's timeout",
    ),
    pytest.param(
        [{"timeout": "100ms"}],
        f"{R0}.timeout",
        "0.1s is shorter than the per-try timeout the route inherits (0.5s, "
        "traffic.orders.retries.per_try_timeout), which could then never fire; "
        "give the route retries of its own",
        id="timeout under the inherited per-try timeout",
    ),
]


@pytest.mark.parametrize(("routes", "path", "text"), INVALID)
def test_a_mistake_is_reported_with_its_path(routes: Any, path: str, text: str) -> None:
    problems = problems_of(routes, **SERVICE)
    assert any(p.startswith(f"{path}: ") and text in p for p in problems), problems


def test_the_longest_regex_nests_as_deep_as_it_can() -> None:
    spec = spec_of([{"match": [{"headers": {"x": {"regex": "(" * 256 + ")" * 256}}}]}])
    assert spec.routes[0].matches("m", {"x": ""})


def test_a_regex_too_deep_for_re_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_deep(pattern: str, flags: int = 0) -> re.Pattern[str]:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(traffic_module.re, "compile", too_deep)
    assert problems_of([{"match": [{"headers": {"x": {"regex": "((a))"}}}]}]) == (
        f"{R0}.match[0].headers.x.regex: header 'x': not a valid regular expression: "
        "nested too deeply",
    )


def test_the_inherited_hedging_needs_idempotent_methods_in_the_route_s_retries() -> None:
    problems = problems_of(
        [{"retries": {"attempts": 1}}],
        hedging={"delay": "100ms"},
        retries={"idempotent_methods": ["get*"]},
    )
    assert problems == (
        f"{R0}.retries: lists no idempotent_methods, but the route inherits "
        "traffic.orders.hedging, which applies only to them; list them (method patterns such "
        'as ["status", "get*"])',
    )


def test_every_problem_at_once_and_a_bad_service_setting_is_not_blamed_on_a_route() -> None:
    problems = problems_of(
        [
            {"name": "a", "match": [{"method": "a*b"}], "split": [{"subset": "v9", "weight": 1}]},
            {"name": "b", "pool": {}, "retries": {"per_try_timeout": "1s"}},
        ],
        timeout="2",  # bad: the routes' timeouts are not checked against it
    )
    assert problems == (
        "traffic.orders.timeout: '2' is not a duration: write a number with a unit (us, ms, s, "
        "m, h), e.g. '250ms', '2s', '1m30s'",
        f"{R0}.match[0].method: 'a*b': '*' may appear once, at the start or at the end of a "
        "pattern",
        f"{R0}.split[0].subset: subset 'v9' of service 'orders' is not defined in "
        "services.orders.subsets",
        f"{R0}.split: weights sum to 1, they must sum to 100",
        "traffic.orders.routes[1].pool: pool belongs to the destination service, not to a "
        "route: set it at traffic.orders.pool (as Istio keeps it in the DestinationRule)",
    )


def test_a_route_problem_does_not_hide_the_service_s() -> None:
    problems = problems_of([{"hedging": {"delay": "1s"}}], load_balancer="fastest")
    assert problems[0].startswith("traffic.orders.load_balancer: 'fastest' is not one of")
    assert problems[1].startswith(f"{R0}.hedging: hedging applies only to")
    assert len(problems) == 2


# -- revision --------------------------------------------------------------------------


def test_routes_are_part_of_the_revision() -> None:
    def revision(routes: Any) -> str:
        return Policy.from_dict(document(routes)).revision

    one = [{"match": [{"headers": {"a": "1", "b": {"prefix": "2"}}}], "timeout": "1s"}]
    same = [{"timeout": "1000ms", "match": [{"headers": {"b": {"prefix": "2"}, "a": "1"}}]}]
    assert revision(one) == revision(one) == revision(same)
    without = {"services": document(None)["services"], "traffic": {"orders": {}}}
    assert revision(one) != Policy.from_dict(without).revision
    changed = [
        [{"match": [{"headers": {"a": "1", "b": {"exact": "2"}}}], "timeout": "1s"}],
        [{"match": [{"headers": {"a": "1", "b": {"prefix": "2"}}}], "timeout": "2s"}],
        [{"name": "x", "match": [{"headers": {"a": "1", "b": {"prefix": "2"}}}], "timeout": "1s"}],
        [*one, {"timeout": "3s"}],
    ]
    assert len({revision(one), *(revision(c) for c in changed)}) == 1 + len(changed)


# -- matching through select -------------------------------------------------------------

MATCHING = [
    {"name": "exact-method", "match": [{"method": "charge"}]},
    {"name": "prefix-method", "match": [{"method": "get*"}]},
    {"name": "suffix-method", "match": [{"method": "*Status"}]},
    {"name": "header-exact", "match": [{"headers": {"x-env": "canary"}}]},
    {"name": "header-prefix", "match": [{"headers": {"x-user": {"prefix": "test-"}}}]},
    {"name": "header-regex", "match": [{"headers": {"x-version": {"regex": "v[0-9]+"}}}]},
    {"name": "and", "match": [{"method": "report", "headers": {"x-a": "1", "x-b": "2"}}]},
    {"name": "or", "match": [{"method": "list"}, {"headers": {"x-or": "yes"}}]},
]


def chosen(spec: TrafficSpec, method: str, headers: dict[str, str] | None) -> str:
    """The name of the route select picks, or "service" when it falls through."""
    picked = select(spec, method, headers)
    if picked is spec:
        return "service"
    [route] = [r for r in spec.routes if r.traffic is picked]
    return route.name or "?"


SELECT = [
    ("charge", {}, "exact-method"),
    ("charges", {}, "service"),
    ("Charge", {}, "service"),
    ("getUser", {}, "prefix-method"),
    ("get", {}, "prefix-method"),
    ("forget", {}, "service"),
    ("orderStatus", {}, "suffix-method"),
    ("Status", {}, "suffix-method"),
    ("orderStatuses", {}, "service"),
    ("x", {"x-env": "canary"}, "header-exact"),
    ("x", {"x-env": "canary2"}, "service"),
    ("x", {"x-env": "Canary"}, "service"),
    ("x", {"X-Env": "canary"}, "service"),  # names compared as sent
    ("x", {"x-user": "test-1"}, "header-prefix"),
    ("x", {"x-user": "test-"}, "header-prefix"),
    ("x", {"x-user": "a-test-1"}, "service"),
    ("x", {"x-version": "v12"}, "header-regex"),
    ("x", {"x-version": "av1"}, "service"),  # a full match, not a search
    ("x", {"x-version": "v1-beta"}, "service"),
    ("x", {"x-version": ""}, "service"),
    ("x", {}, "service"),  # a missing header matches no condition
    ("x", None, "service"),
    ("report", {"x-a": "1", "x-b": "2"}, "and"),
    ("report", {"x-a": "1", "x-b": "2", "x-c": "3"}, "and"),
    ("report", {"x-a": "1"}, "service"),  # AND within one alternative
    ("report", {"x-a": "1", "x-b": "3"}, "service"),
    ("reports", {"x-a": "1", "x-b": "2"}, "service"),
    ("list", {}, "or"),  # OR across alternatives
    ("x", {"x-or": "yes"}, "or"),
    ("list", {"x-or": "no"}, "or"),
    ("charge", {"x-env": "canary"}, "exact-method"),  # the first match wins
    ("getStatus", {}, "prefix-method"),
    ("x", {"x-env": "canary", "x-or": "yes"}, "header-exact"),
    ("list", {"x-env": "canary"}, "header-exact"),
]


@pytest.mark.parametrize(("method", "headers", "route"), SELECT)
def test_select_takes_the_first_route_that_matches(
    method: str, headers: dict[str, str] | None, route: str
) -> None:
    spec = spec_of(MATCHING)
    assert chosen(spec, method, headers) == route


@pytest.mark.parametrize(
    ("routes", "method", "route"),
    [
        ([{"name": "any", "match": [{"method": "*"}]}], "whatever", "any"),
        ([{"name": "any", "match": [{"method": "*"}]}], "", "any"),
        ([{"name": "all"}], "whatever", "all"),
        ([{"name": "a", "match": [{"method": "a"}]}, {"name": "rest"}], "a", "a"),
        ([{"name": "a", "match": [{"method": "a"}]}, {"name": "rest"}], "b", "rest"),
        ([{"name": "rest"}, {"name": "a", "match": [{"method": "a"}]}], "a", "rest"),
    ],
)
def test_catch_alls(routes: Any, method: str, route: str) -> None:
    assert chosen(spec_of(routes), method, {}) == route


def test_the_chosen_settings_inherit_and_override() -> None:
    spec = spec_of(
        [
            {
                "name": "canary",
                "match": [{"headers": {"x-canary": "1"}}],
                "split": [{"subset": "v2", "weight": 100}],
            },
            {"name": "slow", "match": [{"method": "report*"}], "timeout": "10s"},
        ],
        timeout="2s",
        retries={"attempts": 3},
        split=[{"subset": "v1", "weight": 100}],
        faults={"delay": {"fixed_delay": "1ms"}},
    )
    canary = select(spec, "get", {"x-canary": "1"})
    assert canary.split == V2  # overridden
    assert (canary.timeout, canary.retries, canary.faults) == (
        spec.timeout,
        spec.retries,
        spec.faults,
    )
    slow = select(spec, "reportAll", {})
    assert slow.timeout == 10.0
    assert (slow.split, slow.retries) == (spec.split, spec.retries)  # inherited
    other = select(spec, "get", {})
    assert other is spec and other.split == (SplitDestination("v1", 100),)


def test_plan_draws_from_the_chosen_route_s_split() -> None:
    spec = spec_of(
        [{"match": [{"headers": {"x-canary": "1"}}], "split": [{"subset": "v2", "weight": 100}]}],
        split=[{"subset": "v1", "weight": 100}],
    )
    rng = random.Random(7)
    assert {plan(spec, "m", {"x-canary": "1"}, rng).subset for _ in range(20)} == {"v2"}
    assert {plan(spec, "m", {}, rng).subset for _ in range(20)} == {"v1"}


# -- analyze: routes that can never be chosen ---------------------------------------------

ANALYZE = [
    pytest.param([{"match": [{"method": "a"}]}, {"name": "rest"}], (), id="a catch-all last"),
    pytest.param(
        [{"name": "all"}, {"name": "beta", "match": [{"method": "a"}]}, {}],
        (
            'traffic.orders.routes[1] ("beta") is unreachable: traffic.orders.routes[0] ("all") '
            "matches every request",
            'traffic.orders.routes[2] is unreachable: traffic.orders.routes[0] ("all") matches '
            "every request",
        ),
        id="after a route without match",
    ),
    pytest.param(
        [
            {"match": [{"method": "a"}, {"method": "*"}]},
            {"name": "beta", "match": [{"method": "b"}]},
        ],
        (
            'traffic.orders.routes[1] ("beta") is unreachable: traffic.orders.routes[0] matches '
            "every request",
        ),
        id="after an alternative of method '*'",
    ),
    pytest.param(
        [{"match": [{"method": "*", "headers": {"x": "1"}}]}, {"match": [{"method": "b"}]}],
        (),
        id="'*' with a header condition is no catch-all",
    ),
    pytest.param(
        [
            {"name": "a", "match": [{"headers": {"x": "1", "y": {"prefix": "2"}}}]},
            {"name": "b", "match": [{"headers": {"y": {"prefix": "2"}, "x": "1"}}]},
        ],
        (
            'traffic.orders.routes[1] ("b") is unreachable: traffic.orders.routes[0] ("a") has '
            "the same match",
        ),
        id="the same match",
    ),
    pytest.param(
        [
            {"name": "a", "match": [{"method": "a"}]},
            {"name": "b", "match": [{"method": "b"}]},
            {"name": "ab", "match": [{"method": "b"}, {"method": "a"}]},
        ],
        (
            'traffic.orders.routes[2] ("ab") is unreachable: every request it matches is matched '
            'first by traffic.orders.routes[0] ("a"), traffic.orders.routes[1] ("b")',
        ),
        id="each alternative in an earlier route",
    ),
    pytest.param(
        [
            {"name": "a", "match": [{"method": "a"}]},
            {"name": "ab", "match": [{"method": "b"}, {"method": "a"}]},
        ],
        (),
        id="one new alternative: reachable",
    ),
    pytest.param(
        [{"match": [{"method": "a"}]}, {"match": [{"method": "a", "headers": {"x": "1"}}]}],
        (),
        id="narrower, not identical: not reported",
    ),
]


@pytest.mark.parametrize(("routes", "expected"), ANALYZE)
def test_analyze_finds_unreachable_routes(routes: Any, expected: tuple[str, ...]) -> None:
    assert analyze(Policy.from_dict(document(routes))) == expected


def test_analyze_names_services_as_paths_do_and_has_nothing_to_say_by_default() -> None:
    assert analyze(Policy()) == ()
    policy = Policy.from_dict(
        {"traffic": {"orders.v2": {"routes": [{}, {"name": "x"}]}, "b": {"routes": [{}]}}}
    )
    assert analyze(policy) == (
        'traffic["orders.v2"].routes[1] ("x") is unreachable: traffic["orders.v2"].routes[0] '
        "matches every request",
    )
