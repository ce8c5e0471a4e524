"""The compiled authorizer agrees with a plain reference evaluator, for random policies and requests.

The reference below is written straight from the rules in docs/authorization.md: no indexes,
no bit masks, no cache. Small alphabets make matches (and near misses) frequent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import AuthzRequest, Policy

# -- the reference evaluator ---------------------------------------------------------------


def ref_pattern(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def ref_principal_value(principal: SpiffeId | None) -> str | None:
    return None if principal is None else str(principal).removeprefix("spiffe://")


def ref_rule(rule: Mapping[str, Any], req: dict[str, Any]) -> bool:
    p = req["principal"]
    values = {
        "principals": ref_principal_value(p),
        "namespaces": p.namespace if p else None,
        "trust_domains": p.trust_domain if p else None,
    }
    source = rule.get("from", {})
    for field, value in values.items():
        wanted = [w.removeprefix("spiffe://") for w in source.get(field, [])]
        if field in source and not any(ref_pattern(w, value) for w in wanted):
            return False
        unwanted = [w.removeprefix("spiffe://") for w in source.get("not_" + field, [])]
        if any(ref_pattern(w, value) for w in unwanted):
            return False
    if "to" in rule:
        patterns = rule["to"].get(req["action"])
        if patterns is None or not any(ref_pattern(t, req["resource"]) for t in patterns):
            return False
    for cond in rule.get("when", []):
        value = req["headers"].get(cond["key"].removeprefix("header:"))
        if "values" in cond and not any(ref_pattern(v, value) for v in cond["values"]):
            return False
        if "not_values" in cond and any(ref_pattern(v, value) for v in cond["not_values"]):
            return False
    return True


def ref_evaluate(
    doc: Mapping[str, Any], req: dict[str, Any], providers: Mapping[str, Any]
) -> tuple[Any, ...]:
    """(allowed, action, policy, audited) as the rules say."""
    applicable = [
        p
        for p in doc["authorization"]
        if "selector" not in p or req["service"] in p["selector"]["services"]
    ]

    def matches(p: Mapping[str, Any]) -> bool:
        return any(ref_rule(r, req) for r in p.get("rules", []))

    audited = tuple(p["name"] for p in applicable if p.get("action") == "AUDIT" and matches(p))
    for p in applicable:
        if p.get("action") == "CUSTOM" and matches(p):
            fn = providers.get(p["provider"])
            request = AuthzRequest(
                req["principal"],
                req["action"],
                req["service"],
                req["resource"],
                req["headers"],
                p["name"],
            )
            if fn is None or fn(request) is not True:
                return (False, "CUSTOM", p["name"], audited)
    for p in applicable:
        if p.get("action") == "DENY" and matches(p):
            return (False, "DENY", p["name"], audited)
    allows = [p for p in applicable if p.get("action", "ALLOW") == "ALLOW"]
    if not allows:
        return (True, "default", "", audited)
    for p in allows:
        if matches(p):
            return (True, "ALLOW", p["name"], audited)
    return (False, "ALLOW", "", audited)


# -- strategies --------------------------------------------------------------------------------

IDS = [
    "a.org/ns/x/sa/p",
    "a.org/ns/x/sa/q",
    "a.org/ns/xy/sa/p",
    "a.org/ns/y/sa/q",
    "b.org/ns/x/sa/p",
    "b.org/ns/y/sa/pq",
    "a.org/svc",
    "b.org/ns/x",
]
PRINCIPALS = [None, *(SpiffeId.coerce(i) for i in IDS)]
SERVICES = ["s1", "s2", "s3"]
TOPIC_CHARS = "ab."
HEADER_VALUES = ["u", "uv", "vu", "v"]

PROVIDERS = {
    "yes": lambda r: True,
    "no": lambda r: False,
    "hdr": lambda r: r.headers.get("h") == "u",
}


def cut(text: str, draw: Any) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i]


@st.composite
def principal_pattern(draw: Any) -> str:
    base = draw(st.sampled_from(IDS))
    kind = draw(st.sampled_from(["exact", "exact-scheme", "prefix", "suffix", "any"]))
    if kind == "exact":
        return base
    if kind == "exact-scheme":
        return "spiffe://" + base
    if kind == "prefix":
        return cut(base, draw) + "*"
    if kind == "suffix":
        return "*" + base[draw(st.integers(1, len(base))) :]
    return "*"


@st.composite
def generic_pattern(draw: Any, values: list[str]) -> str:
    base = draw(st.sampled_from(values))
    kind = draw(st.sampled_from(["exact", "prefix", "suffix", "any"]))
    if kind == "exact":
        return base
    if kind == "prefix":
        return cut(base, draw) + "*"
    if kind == "suffix":
        return "*" + base[draw(st.integers(1, len(base))) :]
    return "*"


topics = st.text(TOPIC_CHARS, min_size=0, max_size=4)
methods = st.sampled_from(["m", "mn", "nm", "n", "mm"])


@st.composite
def topic_pattern(draw: Any, subscribe: bool) -> str:
    kinds = ["prefix", "any"] if subscribe else ["exact", "prefix", "any"]
    kind = draw(st.sampled_from(kinds))
    if kind == "any":
        return "*"
    base = draw(topics if kind == "prefix" else topics.filter(bool))
    return base + "*" if kind == "prefix" else base


def some(strategy: Any) -> Any:
    return st.lists(strategy, min_size=1, max_size=3)


@st.composite
def rule(draw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    source: dict[str, Any] = {}
    field_strategies = {
        "principals": principal_pattern(),
        "namespaces": generic_pattern(["x", "y", "xy"]),
        "trust_domains": generic_pattern(["a.org", "b.org"]),
    }
    for field, strategy in field_strategies.items():
        if draw(st.integers(0, 3)) == 0:
            source[field] = draw(some(strategy))
        if draw(st.integers(0, 4)) == 0:
            source["not_" + field] = draw(some(strategy))
    if source:
        out["from"] = source
    if draw(st.booleans()):
        to: dict[str, Any] = {}
        if draw(st.booleans()):
            to["publish"] = draw(some(topic_pattern(False)))
        if draw(st.booleans()):
            to["subscribe"] = draw(some(topic_pattern(True)))
        if draw(st.booleans()) or not to:
            to["call"] = draw(some(generic_pattern(["m", "mn", "nm"])))
        out["to"] = to
    if draw(st.integers(0, 3)) == 0:
        cond: dict[str, Any] = {"key": "header:h"}
        if draw(st.booleans()):
            cond["values"] = draw(some(generic_pattern(HEADER_VALUES)))
        if draw(st.booleans()) or "values" not in cond:
            cond["not_values"] = draw(some(generic_pattern(HEADER_VALUES)))
        out["when"] = [cond]
    return out


@st.composite
def documents(
    draw: Any, actions: tuple[str, ...] = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
) -> dict[str, Any]:
    policies = []
    for i in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(actions))
        policy: dict[str, Any] = {"name": f"p{i}", "action": action}
        if action == "CUSTOM":
            policy["provider"] = draw(st.sampled_from([*PROVIDERS, "missing"]))
        if draw(st.booleans()):
            policy["selector"] = {
                "services": draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=2))
            }
        policy["rules"] = draw(st.lists(rule(), min_size=0, max_size=4))
        policies.append(policy)
    return {"authorization": policies}


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    action = draw(st.sampled_from(["publish", "subscribe", "call"]))
    headers = draw(
        st.sampled_from([{}, {"h": "u"}, {"h": "v"}, {"h": "uv"}, {"h": "vu"}, {"H": "u"}])
    )
    return {
        "principal": draw(st.sampled_from(PRINCIPALS)),
        "action": action,
        "service": draw(st.sampled_from(SERVICES)),
        "resource": draw(methods if action == "call" else topics),
        "headers": headers,
    }


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(documents(), st.lists(requests(), min_size=1, max_size=12))
def test_compiled_authorizer_agrees_with_reference(
    doc: dict[str, Any], reqs: list[dict[str, Any]]
) -> None:
    authorizer = Policy.from_dict(doc).authorizer(providers=PROVIDERS)
    for req in reqs + reqs:  # the second pass is served by the decision cache
        got = authorizer.check(
            req["principal"], req["action"], req["service"], req["resource"], req["headers"]
        )
        want = ref_evaluate(doc, req, PROVIDERS)
        assert (got.allowed, got.action, got.policy, got.audited) == want, (req, got.reason)


@FAST
@given(
    documents(),
    st.sampled_from(PRINCIPALS),
    st.sampled_from(SERVICES),
    topics,
    st.lists(topics, min_size=1, max_size=6),
)
def test_allowed_subscription_never_delivers_a_denied_topic(
    doc: dict[str, Any], principal: SpiffeId | None, service: str, prefix: str, tails: list[str]
) -> None:
    """Every topic a granted prefix can deliver is allowed, whatever the message headers."""
    authorizer = Policy.from_dict(doc).authorizer(providers=PROVIDERS)
    granted = authorizer.allowed_subscription(principal, service, prefix)
    assert list(granted) == sorted(set(granted))
    for q in granted:
        assert q.startswith(prefix)
        assert not any(q != k and q.startswith(k) for k in granted)  # no redundant prefix
        for tail in ["", *tails]:
            for headers in ({}, {"h": "u"}, {"h": "v"}, {"h": "uv"}, {"h": "vu"}):
                req = {
                    "principal": principal,
                    "action": "subscribe",
                    "service": service,
                    "resource": q + tail,
                    "headers": headers,
                }
                verdict = ref_evaluate(doc, req, PROVIDERS)
                assert verdict[0], (q, tail, headers, verdict)


@FAST
@given(
    documents(actions=("ALLOW", "AUDIT")),
    st.sampled_from(PRINCIPALS),
    st.sampled_from(SERVICES),
    topics,
)
def test_allowed_subscription_grants_the_whole_request_when_nothing_narrows_it(
    doc: dict[str, Any], principal: SpiffeId | None, service: str, prefix: str
) -> None:
    """Without DENY or CUSTOM, a request inside an unconditional ALLOW prefix is granted as is."""
    authorizer = Policy.from_dict(doc).authorizer()
    covering = [
        t.removesuffix("*")
        for p in doc["authorization"]
        if p["action"] == "ALLOW" and ("selector" not in p or service in p["selector"]["services"])
        for r in p["rules"]
        if "when" not in r
        and ref_rule(
            {k: v for k, v in r.items() if k != "to"}, {"principal": principal, "headers": {}}
        )
        for t in (r["to"].get("subscribe", []) if "to" in r else ["*"])
    ]
    has_allow = any(
        p["action"] == "ALLOW" and ("selector" not in p or service in p["selector"]["services"])
        for p in doc["authorization"]
    )
    granted = authorizer.allowed_subscription(principal, service, prefix)
    if not has_allow or any(prefix.startswith(c) for c in covering):
        assert granted == (prefix,)
    elif not any(c.startswith(prefix) for c in covering):
        assert granted == ()
