"""From the ``traffic`` and ``telemetry`` sections of a policy document to their values.

Rules this module keeps:

* It reads with the same problem-collecting :class:`~zmeshlib.policy._reader.Reader`
  as the rest of the document (:mod:`zmeshlib.policy._document`, which calls
  :func:`_traffic` and :func:`_telemetry`): every problem is recorded with
  its path, a section with any problem is None, nothing is raised.
* Each setting is read by its reader in :mod:`zmeshlib.policy._settings`
  (which also makes the setting's own checks); the checks between settings of
  one service are made here, once its keys are read: a per-try timeout fits
  inside the overall one, ``hedging`` has ``retries.idempotent_methods`` to
  hedge.
* A route (``traffic.<service>.routes[i]``) is read over its service: its
  ``Route.traffic`` is the service's settings with the route's own put over
  them (``attrs.evolve``), each read by the same function as at service level
  and cross-checked against what the route ends up with. A check that only
  inherited values take part in was made at the service, so it is not
  repeated per route, and a bad service setting is not blamed on a route.
  ``load_balancer``, ``outlier_detection`` and ``pool`` belong to the
  destination (Istio's DestinationRule): in a route they are problems that say
  where they go.
* A route's header conditions are kept sorted by name, so the order they are
  written in does not change the revision; a ``regex`` is compiled when it is
  read, and one longer than :data:`MAX_REGEX` is refused.
* :func:`analyze` reports what is valid but cannot be meant (routes that can
  never be chosen) as sentences naming paths, never as problems: such a
  policy still loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._reader import Reader, _clip, _kind
from ._settings import (
    _faults,
    _hedging,
    _mirror,
    _outlier,
    _plain_pattern,
    _pool,
    _retries,
    _split,
)
from .model import (
    LOAD_BALANCERS,
    MAX_TOPIC_DEPTH,
    AccessLogSpec,
    HeaderMatch,
    MetricsSpec,
    Policy,
    RetryPolicy,
    Route,
    RouteMatch,
    ServiceSpec,
    TelemetrySpec,
    TracingSpec,
    TrafficSpec,
)

# -- traffic -----------------------------------------------------------------------


_TRAFFIC_KEYS = (
    "timeout",
    "retries",
    "load_balancer",
    "outlier_detection",
    "pool",
    "faults",
    "split",
    "mirror",
    "hedging",
    "routes",
)
#: What a route may set over its service's settings, in the order they are read.
_ROUTE_SETTINGS = ("timeout", "retries", "faults", "split", "mirror", "hedging")
#: What only the destination service sets (Istio keeps them in the DestinationRule).
_DESTINATION_SETTINGS = ("load_balancer", "outlier_detection", "pool")


def _traffic(
    r: Reader, name: str, value: Any, services: Mapping[str, ServiceSpec]
) -> TrafficSpec | None:
    body = r.mapping(value, _TRAFFIC_KEYS)
    if body is None:
        return None
    before = len(r.problems)
    kw = _settings(r, body, name, services)
    _cross_check(r, kw, {}, None)
    if "routes" in body:
        base = TrafficSpec(**{k: v for k, v in kw.items() if v is not None})
        kw["routes"] = _routes(r.key("routes"), body["routes"], name, services, kw, base, r)
    if len(r.problems) != before:
        return None
    return TrafficSpec(**kw)


def _settings(
    r: Reader, body: Mapping[str, Any], service: str, services: Mapping[str, ServiceSpec]
) -> dict[str, Any]:
    """Every setting of ``body`` read in the order of _TRAFFIC_KEYS; None for a bad one."""
    readers: dict[str, Callable[[Reader, Any], Any]] = {
        "timeout": Reader.duration,
        "retries": _retries,
        "load_balancer": lambda kr, v: kr.choice(v, LOAD_BALANCERS),
        "outlier_detection": _outlier,
        "pool": _pool,
        "faults": _faults,
        "split": lambda kr, v: _split(kr, v, service, services),
        "mirror": lambda kr, v: _mirror(kr, v, service, services),
        "hedging": _hedging,
    }
    return {k: read(r.key(k), body[k]) for k, read in readers.items() if k in body}


def _cross_check(
    r: Reader, own: Mapping[str, Any], inherited: Mapping[str, Any], service: Reader | None
) -> None:
    """The per-try timeout fits the overall one; hedging has idempotent methods to hedge.

    ``own`` are the settings read at ``r`` (None for a bad one); ``inherited`` those of
    the service a route is read over (``service`` is its reader), empty at service level.
    A value only inherited was checked with the service, so only what ``own`` sets is.
    """
    timeout, timeout_inherited = _pick("timeout", own, inherited, None)
    retries, retries_inherited = _pick("retries", own, inherited, RetryPolicy())
    per_try = retries.per_try_timeout if retries is not None else None
    if timeout is not None and per_try is not None and per_try > timeout:
        if not retries_inherited:
            origin = (
                f", from {service.path}.timeout"
                if service is not None and timeout_inherited
                else ""
            )
            r.key("retries").key("per_try_timeout").problem(
                f"{per_try:g}s exceeds the overall timeout ({timeout:g}s{origin}), "
                "so it can never fire"
            )
        elif service is not None and not timeout_inherited:
            r.key("timeout").problem(
                f"{timeout:g}s is shorter than the per-try timeout the route inherits "
                f"({per_try:g}s, {service.path}.retries.per_try_timeout), which could then "
                "never fire; give the route retries of its own"
            )
    hedged = "hedging" in own or (inherited.get("hedging") is not None and "retries" in own)
    if hedged and retries is not None and not retries.idempotent_methods:
        if "hedging" in own:
            origin = (
                f" (the route's retries are {service.path}.retries)"
                if service is not None and retries_inherited
                else ""
            )
            r.key("hedging").problem(
                "hedging applies only to retries.idempotent_methods; list them "
                f'(method patterns such as ["status", "get*"]){origin}'
            )
        elif service is not None:
            r.key("retries").problem(
                f"lists no idempotent_methods, but the route inherits {service.path}.hedging, "
                'which applies only to them; list them (method patterns such as ["status", '
                '"get*"])'
            )


def _pick(
    key: str, own: Mapping[str, Any], inherited: Mapping[str, Any], default: Any
) -> tuple[Any, bool]:
    """The resolved value of ``key`` (None when it is bad), and whether it is inherited."""
    if key in own:
        return own[key], False
    if key in inherited:
        return inherited[key], True
    return default, False


# -- routes ------------------------------------------------------------------------

_ROUTE_KEYS = ("name", "match", *_ROUTE_SETTINGS)
_HEADER_MATCHES = ("exact", "prefix", "regex")
#: Longest header regex, in characters: a header's pattern is short, and compiling
#: deeply nested groups recurses in ``re``.
MAX_REGEX = 512


def _routes(
    r: Reader,
    value: Any,
    service: str,
    services: Mapping[str, ServiceSpec],
    inherited: Mapping[str, Any],
    base: TrafficSpec,
    service_r: Reader,
) -> tuple[Route, ...] | None:
    """``traffic.<service>.routes``, in order, each resolved over ``base``."""
    before = len(r.problems)
    routes = [
        _route(rr, item, service, services, inherited, base, service_r)
        for rr, item in r.items(value)
    ]
    seen: dict[str, int] = {}
    for i, item in enumerate(value if isinstance(value, list | tuple) else ()):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            r.index(i).key("name").problem(
                f"duplicate route name {_clip(name)!r} (also routes[{seen[name]}]); "
                "names identify the route in messages"
            )
        seen.setdefault(name, i)
    return tuple(x for x in routes if x is not None) if len(r.problems) == before else None


def _route(
    r: Reader,
    value: Any,
    service: str,
    services: Mapping[str, ServiceSpec],
    inherited: Mapping[str, Any],
    base: TrafficSpec,
    service_r: Reader,
) -> Route | None:
    body = r.mapping(value, (*_ROUTE_KEYS, *_DESTINATION_SETTINGS))
    if body is None:
        return None
    before = len(r.problems)
    for key in _DESTINATION_SETTINGS:
        if key in body:
            r.key(key).problem(
                f"{key} belongs to the destination service, not to a route: set it at "
                f"{service_r.path}.{key} (as Istio keeps it in the DestinationRule)"
            )
    name = r.key("name").string(body["name"]) if "name" in body else None
    match: tuple[RouteMatch, ...] | None = ()
    if "match" in body:
        match = _match(r.key("match"), body["match"])
    own = _settings(r, {k: v for k, v in body.items() if k in _ROUTE_SETTINGS}, service, services)
    _cross_check(r, own, inherited, service_r)
    if len(r.problems) != before or match is None:
        return None
    return Route(traffic=attrs.evolve(base, **own), match=match, name=name)


def _match(r: Reader, value: Any) -> tuple[RouteMatch, ...] | None:
    """A list of alternatives, any of which matches (OR)."""
    if isinstance(value, list | tuple) and not value:
        r.problem("an empty list; omit match to match every request, or list the alternatives")
        return None
    if isinstance(value, Mapping):
        r.problem("expected a list of alternatives, got a mapping: write match: [{...}]")
        return None
    return r.list_of(value, _alternative)


def _alternative(r: Reader, value: Any) -> RouteMatch | None:
    """One alternative: its ``method`` and every one of its ``headers`` must hold (AND)."""
    body = r.mapping(value, ("method", "headers"))
    if body is None:
        return None
    if not body:
        r.problem(
            "names no condition (method, headers), so it matches every request; "
            "omit match to match every request"
        )
        return None
    method = _plain_pattern(r.key("method"), body["method"]) if "method" in body else None
    headers = _headers(r.key("headers"), body["headers"]) if "headers" in body else ()
    if ("method" in body and method is None) or headers is None:
        return None
    return RouteMatch(method=method, headers=headers)


def _headers(r: Reader, value: Any) -> tuple[HeaderMatch, ...] | None:
    """Header name -> condition; sorted by name, so the order written does not change
    the policy's revision."""
    body = r.mapping(value)
    if body is None:
        return None
    if not body:
        r.problem("names no header; omit headers to match whatever headers a request has")
        return None
    before = len(r.problems)
    found = [_header(r.key(name), name, v) for name, v in body.items()]
    if len(r.problems) != before:
        return None
    return tuple(sorted((h for h in found if h is not None), key=lambda h: h.name))


def _header(r: Reader, name: str, value: Any) -> HeaderMatch | None:
    if not name:
        r.problem("a header name must not be empty")
        return None
    if isinstance(value, str):
        exact = r.string(value, non_empty=False)
        return None if exact is None else HeaderMatch(name, exact=exact)
    if not isinstance(value, Mapping):
        r.problem(
            "expected a string (the exact value) or a mapping with one of exact, prefix, "
            f"regex; got {_kind(value)}"
        )
        return None
    before = len(r.problems)
    body = r.mapping(value, _HEADER_MATCHES)
    if body is None or len(r.problems) != before:
        return None
    if len(body) != 1:
        got = f" (got {', '.join(body)})" if body else ""
        r.problem(f"give exactly one of exact, prefix, regex{got}")
        return None
    ((kind, v),) = body.items()
    text = r.key(kind).string(v, non_empty=False)
    if text is None or (kind == "regex" and not _regex_ok(r.key(kind), name, text)):
        return None
    return HeaderMatch(name, **{kind: text})


def _regex_ok(r: Reader, header: str, text: str) -> bool:
    """Whether ``text`` compiles (Python's ``re``), with the problem recorded if not."""
    if len(text) > MAX_REGEX:
        r.problem(
            f"header {_clip(header)!r}: a regex of {len(text):,} characters is too long "
            f"(at most {MAX_REGEX:,})"
        )
        return False
    try:
        re.compile(text)
    except RecursionError:
        reason = "nested too deeply"
    except Exception as exc:  # re.error; OverflowError for a repeat count beyond any
        reason = str(exc)
    else:
        return True
    r.problem(f"header {_clip(header)!r}: not a valid regular expression: {reason}")
    return False


# -- findings ----------------------------------------------------------------------


def analyze(policy: Policy) -> tuple[str, ...]:
    """What is valid in ``policy`` but almost certainly not meant, one sentence each.

    A route after a catch-all (a route without ``match``, or with an alternative
    that has no header condition and no method or ``*``) can never be chosen; nor
    can a route each of whose alternatives is one of earlier routes. Each finding
    names the routes by their path in the document, as problems do. Services come
    in the policy's order, routes in theirs; an empty tuple means nothing to say.
    """
    found: list[str] = []
    for service, spec in policy.traffic.items():
        found.extend(_unreachable(Reader([]).key("traffic").key(service).key("routes"), spec))
    return tuple(found)


def _unreachable(where: Reader, spec: TrafficSpec) -> list[str]:
    def label(i: int) -> str:
        name = spec.routes[i].name
        return where.index(i).path + (f" ({json.dumps(_clip(name))})" if name else "")

    found: list[str] = []
    first: dict[RouteMatch, int] = {}  # each alternative, and the first route that has it
    catch_all: int | None = None
    for i, route in enumerate(spec.routes):
        if catch_all is not None:
            found.append(f"{label(i)} is unreachable: {label(catch_all)} matches every request")
            continue
        earlier = {first.get(m) for m in route.match}
        if route.match and None not in earlier:
            shadows = sorted(j for j in earlier if j is not None)
            if len(shadows) == 1 and set(spec.routes[shadows[0]].match) == set(route.match):
                why = f"{label(shadows[0])} has the same match"
            else:
                why = "every request it matches is matched first by " + ", ".join(
                    label(j) for j in shadows
                )
            found.append(f"{label(i)} is unreachable: {why}")
        for m in route.match:
            first.setdefault(m, i)
        if not route.match or any(not m.headers and m.method in (None, "*") for m in route.match):
            catch_all = i
    return found


# -- telemetry ---------------------------------------------------------------------


#: Each telemetry section: its value class and its fields, each with how it is read.
_TELEMETRY: dict[str, tuple[type, dict[str, Callable[[Reader, Any], Any]]]] = {
    "tracing": (TracingSpec, {"enabled": Reader.boolean, "sampling": Reader.percentage}),
    "metrics": (
        MetricsSpec,
        {
            "enabled": Reader.boolean,
            "istio_compatible": Reader.boolean,
            "topic_depth": lambda r, v: r.integer(v, minimum=0, maximum=MAX_TOPIC_DEPTH),
        },
    ),
    "access_log": (AccessLogSpec, {"enabled": Reader.boolean, "sampling": Reader.percentage}),
}


def _telemetry(r: Reader, value: Any) -> TelemetrySpec | None:
    body = r.mapping(value, tuple(_TELEMETRY))
    if body is None:
        return None
    kw: dict[str, Any] = {}
    for section, raw in body.items():
        cls, fields = _TELEMETRY[section]
        sr = r.key(section)
        given = sr.mapping(raw, tuple(fields))
        if given is None:
            kw[section] = None
            continue
        skw = {k: fields[k](sr.key(k), v) for k, v in given.items()}
        kw[section] = None if None in skw.values() else cls(**skw)
    if None in kw.values():
        return None
    return TelemetrySpec(**kw)
