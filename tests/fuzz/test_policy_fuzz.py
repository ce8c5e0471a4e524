"""Policy.from_dict and Policy.load raise PolicyError and nothing else, and never hang.

Three sources of input: documents generated from the policy schema (valid keys and
values mixed with junk at every level), real documents (docs/policy.md, the design
example) mutated a few times, and raw bytes written as YAML, JSON and TOML files (random,
or a real document with bytes flipped, cut or spliced with tokens parsers dislike). The
inputs that once crashed the reader are kept in corpus/policy/ and replayed every run.
"""

from __future__ import annotations

import copy
import json
import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib._exceptions import PolicyError
from zmeshlib.policy import Policy
from zmeshlib.policy import _document as document_module
from zmeshlib.policy import _files as files_module
from zmeshlib.policy.model import LOAD_BALANCERS, STATUS_BY_KEY

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus" / "policy"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(run: Callable[[], Policy]) -> Policy | PolicyError:
    """The policy, or the PolicyError; any other exception fails the test."""
    try:
        policy = run()
    except PolicyError as exc:
        assert exc.problems, "a PolicyError lists its problems"
        for problem in exc.problems:
            assert isinstance(problem, str) and ": " in problem, problem
            assert len(problem) < 2000, problem  # values are quoted clipped
        str(exc).encode("utf-8")  # loggable: no lone surrogate leaks into a message
        return exc
    assert re.fullmatch(r"[0-9a-f]{12}", policy.revision)
    return policy


# -- generated documents ------------------------------------------------------------------

HUGE = (10**400, -(10**400), 10**5000, 2**63, 2**31)
huge_ints = st.integers(0, len(HUGE) - 1).map(lambda i: HUGE[i])
LONG = ("a" * 5000, "1" * 400 + "s", "x." * 3000, "*" * 100)
long_strings = st.integers(0, len(LONG) - 1).map(lambda i: LONG[i])
junk_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    huge_ints,
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Co", "Cc"]), max_size=3),
    st.binary(max_size=6),
    long_strings,
)
junk_keys = st.one_of(st.text(max_size=6), st.integers(-2, 2), st.none(), st.booleans())
junk = st.recursive(
    junk_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(junk_keys, inner, max_size=3),
    ),
    max_leaves=6,
)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid kind of value, sometimes junk."""
    return st.one_of(valid, valid, valid, junk)


def strings(*values: str) -> st.SearchStrategy[Any]:
    return either(st.sampled_from(values))


def listed(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return either(st.lists(item, max_size=3))


def section(
    fields: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """A mapping with some of ``fields``, sometimes a junk key too."""
    body = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(junk_keys, junk, max_size=1)
    return either(st.tuples(body, extra).map(lambda pair: {**pair[1], **pair[0]}))


def named(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return either(
        st.dictionaries(st.sampled_from(["payment", "orders", "a b", ""]), item, max_size=2)
    )


DURATIONS = strings("250ms", "2s", "1m30s", "0s", "1.5s", "10s", "300s", "87600h", "87601h", "5")
NUMBERS = either(st.one_of(st.integers(-5, 105), st.floats(-1, 1500), huge_ints))
STATUSES = strings(*STATUS_BY_KEY, "ok", "UNAVAILABLE")
PRINCIPALS = strings(
    "example.org/ns/shop/sa/orders",
    "spiffe://example.org/ns/shop/*",
    "example.org/*",
    "*",
    "*/sa/x",
    "http://x/y",
    "Example.org/x",
)
METHODS = strings("charge", "get*", "*", "*status", "a*b", "")
TOPICS = strings("payments.*", "orders.created", "*", "*.x", "")

SOURCE = section(
    {
        k: listed(PRINCIPALS if "principal" in k else strings("shop", "example.org", "a/b", "*"))
        for k in (
            "principals",
            "not_principals",
            "namespaces",
            "not_namespaces",
            "trust_domains",
            "not_trust_domains",
        )
    }
)
OPERATION = section(
    {"publish": listed(TOPICS), "subscribe": listed(TOPICS), "call": listed(METHODS)}
)
CONDITION = section(
    {
        "key": strings("header:region", "region", "header:"),
        "values": listed(METHODS),
        "not_values": listed(METHODS),
    }
)
RULE = section({"from": SOURCE, "to": OPERATION, "when": listed(CONDITION)})
AUTHORIZATION_POLICY = section(
    {
        "name": strings("a", "b", ""),
        "selector": section({"services": listed(strings("payment", "orders"))}),
        "action": strings("ALLOW", "DENY", "AUDIT", "CUSTOM", "allow"),
        "provider": strings("check"),
        "rules": either(st.lists(RULE, max_size=3)),
    }
)
SERVICE = section(
    {
        "identities": listed(PRINCIPALS),
        "endpoints": listed(
            st.one_of(
                strings("tcp://127.0.0.1:5555", "ipc:///tmp/x", "tcp://h"),
                section({"address": strings("tcp://h:1"), "kind": strings("REP", "DEALER")}),
            )
        ),
        "subsets": listed(
            section({"name": strings("v1", "v2"), "labels": either(st.just({"v": "1"}))})
        ),
    }
)
RETRIES = section(
    {
        "attempts": NUMBERS,
        "per_try_timeout": DURATIONS,
        "retry_on": listed(strings("unavailable", "connect-failure", "retriable", "ok")),
        "idempotent_methods": listed(METHODS),
        "backoff": section({"base_interval": DURATIONS, "max_interval": DURATIONS}),
        "budget": st.one_of(
            st.sampled_from([None, False, True, {}]),
            section(
                {
                    "retry_ratio": NUMBERS,
                    "min_retries_per_second": NUMBERS,
                    "ttl": DURATIONS,
                    "percent": NUMBERS,
                    "min_concurrency": NUMBERS,
                }
            ),
        ),
    }
)
OUTLIER = section(
    {
        "consecutive_errors": NUMBERS,
        "interval": DURATIONS,
        "base_ejection_time": DURATIONS,
        "max_ejection_time": DURATIONS,
        "max_ejection_percent": NUMBERS,
        "always_eject_one": either(st.booleans()),
        "min_health_percent": NUMBERS,
        "error_codes": listed(STATUSES),
    }
)
TRAFFIC = section(
    {
        "timeout": DURATIONS,
        "retries": RETRIES,
        "load_balancer": strings(*LOAD_BALANCERS, "fastest"),
        "outlier_detection": OUTLIER,
        "pool": section(
            {
                k: DURATIONS if k.endswith("timeout") else NUMBERS
                for k in (
                    "max_connections",
                    "max_requests",
                    "max_pending",
                    "connect_timeout",
                    "idle_timeout",
                )
            }
        ),
        "faults": section(
            {
                "delay": section({"fixed_delay": DURATIONS, "percentage": NUMBERS}),
                "abort": section({"status": STATUSES, "percentage": NUMBERS}),
            }
        ),
        "split": listed(section({"subset": strings("v1", "v2"), "weight": NUMBERS})),
        "mirror": section(
            {
                "service": strings("orders", "payment"),
                "subset": strings("v1"),
                "percentage": NUMBERS,
            }
        ),
        "hedging": section({"delay": DURATIONS, "max_attempts": NUMBERS}),
    }
)
DOCUMENTS = section(
    {
        "version": NUMBERS,
        "peer_authentication": section({"mode": strings("STRICT", "PERMISSIVE", "strict")}),
        "trust_domains": listed(strings("example.org", "Example.org", "")),
        "services": named(SERVICE),
        "authorization": either(st.lists(AUTHORIZATION_POLICY, max_size=3)),
        "traffic": named(TRAFFIC),
        "telemetry": section(
            {
                "tracing": section({"enabled": either(st.booleans()), "sampling": NUMBERS}),
                "metrics": section({"enabled": either(st.booleans())}),
                "access_log": section({"enabled": either(st.booleans())}),
            }
        ),
    }
)


@FUZZ
@given(DOCUMENTS)
def test_generated_documents_raise_only_policy_errors(doc: Any) -> None:
    first = outcome(lambda: Policy.from_dict(doc))
    if isinstance(first, Policy):  # the same document, the same policy
        assert Policy.from_dict(doc) == first


# -- real documents, mutated -------------------------------------------------------------------


def yaml_blocks(path: Path) -> list[Any]:
    text = path.read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


DESIGN_EXAMPLE = textwrap.dedent(
    """\
    version: 1
    trust_domains: [example.org]
    services:
      payment: {identities: ["example.org/ns/shop/sa/payment*"], subsets: [{name: v1, labels: {version: "1"}}]}
    authorization:
      - name: shop
        selector: {services: [payment]}
        rules:
          - from: {principals: ["example.org/ns/shop/*"]}
            to: {subscribe: ["payments.*"], call: ["charge", "status"]}
            when: [{key: "header:region", values: ["eu"]}]
    traffic:
      payment:
        timeout: 2s
        load_balancer: peak_ewma
        retries:
          attempts: 2
          per_try_timeout: 300ms
          idempotent_methods: ["status", "get*"]
          budget: {retry_ratio: 0.2, min_retries_per_second: 10, ttl: 10s}
        hedging: {delay: 20ms, max_attempts: 2}
        outlier_detection: {consecutive_errors: 5, max_ejection_time: 300s, min_health_percent: 0}
        split: [{subset: v1, weight: 100}]
    telemetry: {tracing: {sampling: 10}}
    """
)
SEEDS = [
    d
    for d in [
        yaml.safe_load(DESIGN_EXAMPLE),
        *yaml_blocks(ROOT / "docs" / "policy.md"),
        *yaml_blocks(ROOT / "docs" / "authorization.md"),
    ]
    if isinstance(d, dict)
]


def test_the_seeds_are_real_policies() -> None:
    assert len(SEEDS) >= 3
    assert isinstance(outcome(lambda: Policy.from_dict(SEEDS[0])), Policy)


def places(
    value: Any, here: tuple[Any, ...] = (), seen: set[int] | None = None
) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (keys and indexes); a container reached again
    (a shared or cyclic one, as "share" makes) is not walked twice."""
    seen = set() if seen is None else seen
    out = [here]
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            return out
        seen.add(id(value))
    if isinstance(value, dict):
        for k, v in value.items():
            out += places(v, (*here, k), seen)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += places(v, (*here, i), seen)
    return out


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


MUTATIONS = ("replace", "delete", "sibling", "transplant", "wrap", "stringify", "share")


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_real_documents_raise_only_policy_errors(seed: int, data: st.DataObject) -> None:
    doc = json.loads(json.dumps(SEEDS[seed]))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = places(doc)
        path = data.draw(st.sampled_from(paths[1:] or paths))
        how = data.draw(st.sampled_from(MUTATIONS))
        if not path:
            doc = data.draw(junk)
            continue
        parent, last = get(doc, path[:-1]), path[-1]
        if how == "replace":
            parent[last] = data.draw(junk)
        elif how == "delete":
            del parent[last]
        elif how == "sibling" and isinstance(parent, dict):
            parent[data.draw(junk_keys)] = data.draw(junk)
        elif how == "sibling":
            parent.insert(last, data.draw(junk))
        elif how == "transplant":  # a value of the wrong section, as a copy-paste gives
            parent[last] = copy.deepcopy(get(doc, data.draw(st.sampled_from(paths))))
        elif how == "wrap":
            parent[last] = [parent[last]]
        elif how == "stringify":
            try:
                parent[last] = str(parent[last])
            except ValueError:  # an int past Python's 4,300-digit str(): write its digits
                parent[last] = "9" * 5000
        else:  # the same object in two places, as a YAML alias gives
            parent[last] = get(doc, data.draw(st.sampled_from(paths)))
    outcome(lambda: Policy.from_dict(doc))


# -- raw bytes as files ----------------------------------------------------------------------

NASTY = [
    b"[",
    b"{",
    b"]",
    b"&a ",
    b"*a",
    b"<<: ",
    b"? ",
    b"!!binary ",
    b"!!python/object:os.system ",
    b"\xff",
    b"\x00",
    b"\xef\xbb\xbf",
    "\ud800".encode("utf-8", "surrogatepass"),  # a lone surrogate, as bytes
    b'"\\ud800"',
    b"'",
    b'"""',
    b"." * 40,
    b"1" * 400,
    b"1:1:1:1:1",
    b"2001-02-30",
    b".nan",
    b"1e999",
    b"\n  - ",
    b"=",
    b"[[a]]\n",
    b"#",
]


def serialized(fmt: str, doc: Any) -> bytes:
    if fmt == "json":
        return json.dumps(doc).encode()
    if fmt == "yaml":
        return yaml.safe_dump(doc).encode()
    return TOML_SEED


TOML_SEED = textwrap.dedent(
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
    hedging = {delay = "20ms"}
    retries = {attempts = 2, idempotent_methods = ["get*"], budget = {retry_ratio = 0.2}}
    """
).encode()


@st.composite
def file_bytes(draw: st.DrawFn, fmt: str) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    data = bytearray(serialized(fmt, draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(("insert", "flip", "cut", "repeat")))
        if how == "insert":
            data[at:at] = draw(st.sampled_from(NASTY))
        elif how == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 50))]
        else:
            data[at:at] = data[at : at + 8] * draw(st.integers(2, 200))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
@FUZZ
@given(data=st.data())
def test_file_bytes_raise_only_policy_errors(fmt: str, data: st.DataObject, tmp_path: Path) -> None:
    content = data.draw(file_bytes(fmt))
    path = tmp_path / f"mesh.{fmt}"
    path.write_bytes(content)
    outcome(lambda: Policy.load(path))
    outcome(lambda: document_module.load_policy(path, data=content))  # the watcher's way


@FUZZ
@given(data=st.data())
def test_the_pure_python_yaml_loader_raises_only_policy_errors(
    data: st.DataObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same guards hold where PyYAML was built without libyaml."""
    pure = files_module._yaml_loader(yaml.SafeLoader)
    monkeypatch.setattr(files_module, "_strict_loader", lambda: pure)
    path = tmp_path / "mesh.yaml"
    path.write_bytes(data.draw(file_bytes("yaml")))
    outcome(lambda: Policy.load(path))


# -- the corpus: inputs that once crashed or hung the reader ---------------------------------

CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.suffix in (".yaml", ".json", ".toml"))


def test_the_corpus_is_there() -> None:
    assert len(CORPUS_FILES) >= 10
    assert (CORPUS / "README.md").exists()


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_inputs_are_refused_with_a_policy_error(path: Path) -> None:
    result = outcome(lambda: Policy.load(path))
    assert isinstance(result, PolicyError), "every corpus input is an invalid policy"
