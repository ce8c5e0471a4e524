"""From a policy document (YAML, TOML, JSON or a dict) to a validated :class:`Policy`.

Rules this module keeps:

* One pass collects every problem, each with its path; any problem means
  one :class:`~zmeshlib.PolicyError` whose ``problems`` lists them all.
  Nothing else is ever raised for a document or a file, whatever it holds.
* Unknown keys are problems. So are empty lists (an empty ``principals``
  would match nothing, which is never what was meant), except ``rules: []``,
  which is Istio's "allow nothing".
* Cross-references are checked once the sections are read: unique policy
  and subset names here; those of ``traffic`` (subsets, weights, timeouts,
  hedging) in :mod:`zmeshlib.policy._traffic`, which reads the ``traffic``
  and ``telemetry`` sections.
* Principals are kept in Istio form (``td/path``, no ``spiffe://``), which is
  what the authorizer matches against.
* Files are read and parsed by :mod:`zmeshlib.policy._files`, which refuses
  what could hang a reader or cost more than its size suggests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from .._exceptions import IdentityError, PolicyError
from .._models import Endpoint
from ..identity.spiffe_id import SpiffeId, validate_trust_domain
from ._files import (
    _check_size,
    _not_valid,
    _one_line,
    _parse,
    read_policy_file,
)
from ._patterns import EXACT, PREFIX
from ._reader import Reader, _number, reported
from ._settings import _parsed, _plain_pattern
from ._traffic import _telemetry, _traffic
from .model import (
    ACTIONS,
    PEER_AUTHENTICATION_MODES,
    AuthorizationPolicy,
    Condition,
    Operation,
    PeerAuthentication,
    Policy,
    Rule,
    ServiceSpec,
    Source,
    Subset,
)

_TOP = (
    "version",
    "peer_authentication",
    "trust_domains",
    "services",
    "authorization",
    "traffic",
    "telemetry",
)
_SCHEME = "spiffe://"
_SEGMENT = re.compile(r"[a-zA-Z0-9._-]*")
_TD_PREFIX = re.compile(r"[a-z0-9._-]*")
_ADDRESS = re.compile(r"(tcp://[^\s:]+:\d+|ipc://\S+|inproc://\S+)")
_KINDS = ("PUB", "SUB", "REQ", "REP", "PUSH", "PULL")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


def load_policy(path: str | PathLike[str], *, data: bytes | None = None) -> Policy:
    """Load ``path``, or parse ``data`` as its content (the watcher hashes what it parses)."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise PolicyError(
            f"cannot load policy {str(path)!r}: unknown file type {path.suffix!r}",
            problems=(f"{path}: name the file .yaml, .yml, .toml or .json",),
        )
    if data is None:
        data = read_policy_file(path)
    else:
        _check_size(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"cannot read policy {str(path)!r}: it is not UTF-8 text",
            problems=(
                f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                f"({exc.reason}); save the file as UTF-8",
            ),
        ) from exc
    return parse_policy_text(text, fmt, source=str(path))


def parse_policy_text(text: str, fmt: str, *, source: str = "<policy>") -> Policy:
    """Parse ``text`` in ``fmt`` (``yaml``, ``toml`` or ``json``) and validate it.

    Whatever the parser raises is reported as the text being invalid in that format:
    a parser that fails on some input (nesting beyond its recursion limit, a number
    it cannot convert) has still said that the text is not a document it can read.
    """
    try:
        document = _parse(text.removeprefix("\ufeff"), fmt)
    except RecursionError as exc:
        reason = "nested too deeply for the parser (a mesh policy nests a few levels)"
        raise _not_valid(source, fmt, reason) from exc
    except Exception as exc:
        raise _not_valid(source, fmt, _one_line(str(exc)) or type(exc).__name__) from exc
    return build_policy(document, source=source)


def as_policy(policy: object) -> Policy:
    """What ``Mesh(policy=...)`` takes, as a Policy: None (the default policy), a Policy, a
    policy file path (:func:`load_policy`) or a mapping (:func:`build_policy`)."""
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, PathLike)):
        return load_policy(policy)
    if isinstance(policy, Mapping):
        return build_policy(policy)
    raise PolicyError(
        f"policy= takes a zmeshlib.Policy, a policy file path or a mapping, "
        f"not {type(policy).__name__}"
    )


def build_policy(document: Mapping[str, Any], *, source: str = "") -> Policy:
    problems: list[str] = []
    root = Reader(problems)
    doc = root.mapping(document, _TOP)
    if doc is None:
        raise PolicyError(
            "the policy document must be a mapping", problems=_invalid(problems, source).problems
        )
    kwargs: dict[str, Any] = {}
    if "version" in doc:
        version = root.key("version").integer(doc["version"])
        if version is not None and version != 1:
            root.key("version").problem(
                f"unsupported version {_number(version)}; this zmeshlib reads version 1"
            )
    if "peer_authentication" in doc:
        kwargs["peer_authentication"] = _peer_authentication(
            root.key("peer_authentication"), doc["peer_authentication"]
        )
    if "trust_domains" in doc:
        kwargs["trust_domains"] = root.key("trust_domains").list_of(
            doc["trust_domains"], _trust_domain
        )
    services: dict[str, ServiceSpec] = {}
    if "services" in doc:
        services = _named(root.key("services"), doc["services"], _service)
        kwargs["services"] = services
    if "authorization" in doc:
        kwargs["authorization"] = _authorization(root.key("authorization"), doc["authorization"])
    if "traffic" in doc:
        kwargs["traffic"] = _named(
            root.key("traffic"),
            doc["traffic"],
            lambda r, name, value: _traffic(r, name, value, services),
        )
    if "telemetry" in doc:
        kwargs["telemetry"] = _telemetry(root.key("telemetry"), doc["telemetry"])
    if problems:
        raise _invalid(problems, source)
    return Policy(**{k: v for k, v in kwargs.items() if v is not None})


def _invalid(problems: list[str], source: str) -> PolicyError:
    n, lines = reported(problems)
    where = f"{source}: " if source else ""
    return PolicyError(
        f"{where}invalid policy: {n:,} problem{'s' if n != 1 else ''}", problems=lines
    )


def _named(r: Reader, value: Any, read: Any) -> dict[str, Any]:
    """A mapping of name -> section, each read with ``read(reader, name, value)``."""
    out: dict[str, Any] = {}
    body = r.mapping(value)
    for name, item in (body or {}).items():
        if not name:
            r.problem("a name must not be empty")
            continue
        spec = read(r.key(name), name, item)
        if spec is not None:
            out[name] = spec
    return out


# -- peer authentication, trust domains, services ------------------------------


def _peer_authentication(r: Reader, value: Any) -> PeerAuthentication | None:
    body = r.mapping(value, ("mode",))
    if body is None:
        return None
    mode = r.key("mode").choice(body.get("mode", "STRICT"), PEER_AUTHENTICATION_MODES)
    return PeerAuthentication(mode) if mode else None


def _trust_domain(r: Reader, value: Any) -> str | None:
    text = r.string(value)
    if text is None:
        return None
    try:
        return validate_trust_domain(text)
    except IdentityError as exc:
        r.problem(str(exc))
        return None


def _service(r: Reader, name: str, value: Any) -> ServiceSpec | None:
    body = r.mapping(value, ("identities", "endpoints", "subsets"))
    if body is None:
        return None
    kwargs: dict[str, Any] = {}
    if "identities" in body:
        kwargs["identities"] = r.key("identities").list_of(body["identities"], _principal_pattern)
    if "endpoints" in body:
        kwargs["endpoints"] = r.key("endpoints").list_of(
            body["endpoints"], lambda er, ev: _endpoint(er, ev, name)
        )
    if "subsets" in body:
        subsets = r.key("subsets").list_of(body["subsets"], _subset)
        if subsets is not None:
            by_name: dict[str, Subset] = {}
            for i, subset in enumerate(subsets):
                if subset.name in by_name:
                    r.key("subsets").index(i).key("name").problem(
                        f"duplicate subset name {subset.name!r}"
                    )
                by_name[subset.name] = subset
            kwargs["subsets"] = by_name
    if any(v is None for v in kwargs.values()):
        return None
    return ServiceSpec(**kwargs)


def _endpoint(r: Reader, value: Any, service: str) -> Endpoint | None:
    kind: str | None
    if isinstance(value, str):
        address, kind = value, ""
    else:
        body = r.mapping(value, ("address", "kind"), required=("address",))
        if body is None or "address" not in body:
            return None
        address = body["address"]
        kind = r.key("kind").choice(body["kind"], _KINDS) if "kind" in body else ""
        if kind is None:
            return None
        r = r.key("address")
    text = r.string(address)
    if text is None:
        return None
    if not _ADDRESS.fullmatch(text):
        r.problem(
            f"{text!r} is not an endpoint address: write tcp://host:port, ipc://path or inproc://name"
        )
        return None
    return Endpoint(text, kind, service)


def _subset(r: Reader, value: Any) -> Subset | None:
    body = r.mapping(value, ("name", "labels"), required=("name", "labels"))
    if body is None or "name" not in body or "labels" not in body:
        return None
    name = r.key("name").string(body["name"])
    lr = r.key("labels")
    labels = lr.mapping(body["labels"])
    if labels is not None:
        for k, v in labels.items():
            if lr.key(k).string(v, non_empty=False) is None:
                labels = None
                break
    if name is None or labels is None:
        return None
    return Subset(name, labels)


# -- patterns ----------------------------------------------------------------------


_TD_CHARSET = "a trust domain may only use lowercase letters, digits, '.', '-' and '_'"


def _principal_pattern(r: Reader, value: Any) -> str | None:
    """A principal pattern, returned in Istio form (no ``spiffe://``)."""
    text = r.string(value)
    if text is None:
        return None
    if text.startswith(_SCHEME):
        text = text[len(_SCHEME) :]
    elif "://" in text:
        r.problem(
            f"{value!r}: a principal is a SPIFFE ID, written with 'spiffe://' or without a scheme"
        )
        return None
    parsed = _parsed(r, text)
    if parsed is None:
        return None
    pattern = parsed[1]
    if pattern.kind == EXACT:
        try:
            SpiffeId.coerce(text)
        except IdentityError as exc:
            r.problem(str(exc))
            return None
    elif pattern.kind == PREFIX:
        td, slash, _ = pattern.literal.partition("/")
        if slash:  # the trust domain is complete: it must be a valid one
            try:
                validate_trust_domain(td)
            except IdentityError as exc:
                r.problem(f"{value!r}: {exc}")
                return None
        elif not _TD_PREFIX.fullmatch(td):
            r.problem(f"{value!r}: {_TD_CHARSET} [trust-domain-charset]")
            return None
    return text


def _segment_pattern(r: Reader, value: Any) -> str | None:
    """A namespace pattern: one SPIFFE path segment, with the usual wildcards."""
    parsed = _parsed(r, value)
    if parsed is None:
        return None
    text, pattern = parsed
    if not _SEGMENT.fullmatch(pattern.literal):
        r.problem(f"{text!r}: a namespace is one path segment: letters, digits, '.', '-' and '_'")
        return None
    return text


def _trust_domain_pattern(r: Reader, value: Any) -> str | None:
    parsed = _parsed(r, value)
    if parsed is None:
        return None
    text, pattern = parsed
    if pattern.kind == EXACT:
        return _trust_domain(r, text)
    if not _TD_PREFIX.fullmatch(pattern.literal):
        r.problem(f"{text!r}: {_TD_CHARSET}")
        return None
    return text


def _topic_pattern(r: Reader, value: Any) -> str | None:
    """A topic pattern (publish or subscribe): exact, ``prefix*`` or ``*``.

    An exact topic is enforceable even for subscribe: pub/sub frames put a NUL
    after the topic, so the publisher applies the prefix ``topic NUL``, which
    matches that topic and no longer one.
    """
    parsed = _parsed(r, value, suffix_allowed=False)
    return None if parsed is None else parsed[0]


# -- authorization -------------------------------------------------------------------

_SOURCE_FIELDS = {
    "principals": _principal_pattern,
    "not_principals": _principal_pattern,
    "namespaces": _segment_pattern,
    "not_namespaces": _segment_pattern,
    "trust_domains": _trust_domain_pattern,
    "not_trust_domains": _trust_domain_pattern,
}
_OPERATION_FIELDS = {
    "publish": _topic_pattern,
    "subscribe": _topic_pattern,
    "call": _plain_pattern,
}


def _authorization(r: Reader, value: Any) -> tuple[AuthorizationPolicy, ...] | None:
    policies = r.list_of(value, _authorization_policy, allow_empty=True)
    seen: dict[str, int] = {}
    for i, item in enumerate(value if isinstance(value, list | tuple) else ()):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            r.index(i).key("name").problem(
                f"duplicate policy name {name!r} (also authorization[{seen[name]}]); "
                "names identify the deciding policy in denials and logs"
            )
        seen.setdefault(name, i)
    return policies


def _authorization_policy(r: Reader, value: Any) -> AuthorizationPolicy | None:
    body = r.mapping(value, ("name", "selector", "action", "provider", "rules"), required=("name",))
    if body is None:
        return None
    before = len(r.problems)
    name = r.key("name").string(body["name"]) if "name" in body else None
    action = r.key("action").choice(body.get("action", "ALLOW"), ACTIONS)
    provider = None
    if "provider" in body:
        provider = r.key("provider").string(body["provider"])
        if action is not None and action != "CUSTOM":
            r.key("provider").problem(
                f"only a CUSTOM policy names a provider (this one is {action})"
            )
    elif action == "CUSTOM":
        r.problem(
            "a CUSTOM policy needs 'provider: NAME' (a callable registered with register_provider)"
        )
    selector = None
    if "selector" in body:
        sr = r.key("selector")
        sel = sr.mapping(body["selector"], ("services",), required=("services",))
        if sel is not None and "services" in sel:
            selector = sr.key("services").list_of(sel["services"], lambda rr, v: rr.string(v))
    rules: tuple[Rule, ...] | None = ()
    if "rules" in body:
        rules = r.key("rules").list_of(body["rules"], _rule, allow_empty=True)
    if len(r.problems) != before or name is None or action is None or rules is None:
        return None
    return AuthorizationPolicy(
        name=name, action=action, rules=rules, selector=selector, provider=provider
    )


def _rule(r: Reader, value: Any) -> Rule | None:
    body = r.mapping(value, ("from", "to", "when"))
    if body is None:
        return None
    before = len(r.problems)
    source = operation = None
    when: tuple[Condition, ...] | None = ()
    if "from" in body:
        fields = _pattern_fields(r.key("from"), body["from"], _SOURCE_FIELDS)
        source = Source(**fields) if fields is not None else None
    if "to" in body:
        fields = _pattern_fields(r.key("to"), body["to"], _OPERATION_FIELDS)
        operation = Operation(**fields) if fields is not None else None
    if "when" in body:
        when = r.key("when").list_of(body["when"], _condition)
    if len(r.problems) != before or when is None:
        return None
    return Rule(from_=source, to=operation, when=when)


def _pattern_fields(
    r: Reader, value: Any, readers: Mapping[str, Any]
) -> dict[str, tuple[str, ...]] | None:
    body = r.mapping(value, tuple(readers))
    if body is None:
        return None
    if not body:
        r.problem(f"names no field (one of: {', '.join(readers)}); omit it to match everything")
        return None
    out = {k: r.key(k).list_of(v, readers[k]) for k, v in body.items()}
    if any(v is None for v in out.values()):
        return None
    return out  # type: ignore[return-value]


def _condition(r: Reader, value: Any) -> Condition | None:
    body = r.mapping(value, ("key", "values", "not_values"), required=("key",))
    if body is None or "key" not in body:
        return None
    key = r.key("key").string(body["key"])
    if key is not None and (not key.startswith("header:") or key == "header:"):
        r.key("key").problem(f"{key!r}: a condition key is 'header:<name>' (a message header)")
        key = None
    if "values" not in body and "not_values" not in body:
        r.problem("a condition needs 'values', 'not_values' or both")
        return None
    values = r.key("values").list_of(body["values"], _plain_pattern) if "values" in body else ()
    not_values = (
        r.key("not_values").list_of(body["not_values"], _plain_pattern)
        if "not_values" in body
        else ()
    )
    if key is None or values is None or not_values is None:
        return None
    return Condition(key, values or None, not_values or None)
