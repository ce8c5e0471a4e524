"""A policy rebuilt from its canonical bytes is the policy, revision and all; nothing else rebuilds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib import Policy, PolicyError, StatusCode
from zmeshlib.policy import HeaderMatch, OutlierDetection, Route, RouteMatch, TrafficSpec
from zmeshlib.policy._rebuild import MAX_DEPTH, policy_from_canonical
from zmeshlib.policy.model import canonical_bytes

ROOT = Path(__file__).resolve().parents[2]


def _fuzz_module() -> Any:
    """The policy fuzz tests' document strategies (tests/fuzz/test_policy_fuzz.py)."""
    path = ROOT / "tests" / "fuzz" / "test_policy_fuzz.py"
    spec = importlib.util.spec_from_file_location("zmeshlib_policy_fuzz_strategies", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_module()


def round_trip(policy: Policy) -> Policy:
    data = canonical_bytes(policy)
    rebuilt = policy_from_canonical(data)
    assert rebuilt == policy
    assert rebuilt.revision == policy.revision
    assert canonical_bytes(rebuilt) == data
    return rebuilt


@pytest.mark.parametrize("index", range(len(FUZZ.SEEDS)))
def test_every_documented_policy_rebuilds(index: int) -> None:
    try:
        policy = Policy.from_dict(FUZZ.SEEDS[index])
    except PolicyError:
        pytest.skip("a fragment, not a whole document")
    round_trip(policy)


def test_a_policy_with_every_kind_of_value_rebuilds() -> None:
    policy = Policy.from_dict(yaml.safe_load(FUZZ.DESIGN_EXAMPLE))
    rich = attrs.evolve(
        policy,
        traffic={
            **policy.traffic,
            "orders": TrafficSpec(
                outlier_detection=OutlierDetection(error_codes=frozenset({StatusCode.INTERNAL})),
                routes=(
                    Route(
                        TrafficSpec(timeout=1),  # an int where a float is declared: kept as is
                        match=(RouteMatch("get*", (HeaderMatch("x", regex="v[0-9]"),)),),
                        name="r",
                    ),
                ),
            ),
        },
    )
    rebuilt = round_trip(rich)
    assert rebuilt.traffic["orders"].routes[0].match[0].headers[0].matches({"x": "v1"})
    assert rebuilt.traffic["orders"].routes[0].traffic.timeout == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FUZZ.DOCUMENTS)
def test_generated_policies_rebuild(doc: Any) -> None:
    try:
        policy = Policy.from_dict(doc)
    except PolicyError:
        return
    round_trip(policy)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(FUZZ.SEEDS))), st.data())
def test_real_policies_with_parts_left_out_rebuild(seed: int, data: st.DataObject) -> None:
    doc = json.loads(json.dumps(FUZZ.SEEDS[seed]))
    for _ in range(data.draw(st.integers(0, 4))):
        paths = FUZZ.places(doc)[1:]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        del FUZZ.get(doc, path[:-1])[path[-1]]
    try:
        policy = Policy.from_dict(doc)
    except PolicyError:
        return
    round_trip(policy)


def _canonical(tree: Any) -> bytes:
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()


BASE = json.loads(canonical_bytes(Policy()))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not canonical policy JSON"),
        (b"\xff{}", "not canonical policy JSON"),
        (b"[]", "expected a mapping for Policy"),
        (_canonical({**BASE, "extra": 1}), "no field 'extra'"),
        (_canonical({k: v for k, v in BASE.items() if k != "telemetry"}), "lacks its field"),
        (_canonical({**BASE, "version": "1"}), "version: expected int"),
        (_canonical({**BASE, "version": True}), "version: expected int"),
        (_canonical({**BASE, "trust_domains": "example.org"}), "expected a list"),
        (_canonical({**BASE, "services": []}), "expected a mapping"),
        (json.dumps(BASE, sort_keys=True).encode(), "not in canonical form"),
        (_canonical(BASE)[:-1] + b',"version":1}', "not in canonical form"),
        (b"[" * 100_000, "not canonical policy JSON"),
        (b'{"version":' + b"9" * 5000 + b"}", "not canonical policy JSON"),
    ],
)
def test_anything_else_is_one_policy_error(data: bytes, says: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_canonical(data)
    assert says in str(info.value)


def test_an_unknown_enum_name_and_a_bad_regex_are_refused() -> None:
    policy = Policy.from_dict(
        {
            "services": {"p": {"subsets": [{"name": "v1", "labels": {"v": "1"}}]}},
            "traffic": {
                "p": {
                    "outlier_detection": {"error_codes": ["internal"]},
                    "routes": [{"match": [{"headers": {"x": {"regex": "a"}}}]}],
                }
            },
        }
    )
    text = canonical_bytes(policy).decode()
    with pytest.raises(PolicyError, match="is not a StatusCode name"):
        policy_from_canonical(text.replace('"INTERNAL"', '"NOPE"').encode())
    with pytest.raises(PolicyError, match="HeaderMatch refused it"):
        policy_from_canonical(text.replace('"regex":"a"', '"regex":"("').encode())


def test_nesting_is_bounded() -> None:
    route: dict[str, Any] = json.loads(canonical_bytes(Policy.from_dict({"traffic": {"s": {}}})))
    spec = route["traffic"]["s"]
    deep = spec
    for _ in range(MAX_DEPTH):
        inner = json.loads(json.dumps(spec))
        deep["routes"] = [{"traffic": inner, "match": [], "name": None}]
        deep = inner
    with pytest.raises(PolicyError, match="nested deeper than"):
        policy_from_canonical(_canonical(route))
