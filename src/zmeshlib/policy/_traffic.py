"""From the ``traffic`` and ``telemetry`` sections of a policy document to their values.

Rules this module keeps:

* It reads with the same problem-collecting :class:`~zmeshlib.policy._reader.Reader`
  as the rest of the document (:mod:`zmeshlib.policy._document`, which calls
  :func:`_traffic` and :func:`_telemetry`): every problem is recorded with
  its path, a section with any problem is None, nothing is raised.
* Cross-references of a service's traffic are checked here, once its keys are
  read: a subset named by ``split`` or ``mirror`` is defined under
  ``services.<name>.subsets``, split weights sum to 100 and name each subset
  once, a per-try timeout fits inside the overall one, ``hedging`` has
  ``retries.idempotent_methods`` to hedge, ``max_ejection_time`` is not below
  ``base_ejection_time``, a mirror does not copy a service to itself.
* A replaced key is a problem that names its replacement (the retry budget's
  ``percent`` and ``min_concurrency``).
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
* Method patterns (``retries.idempotent_methods``, a route's ``method``) are
  read by :func:`_plain_pattern`, the same reader as authorization's ``call``
  patterns; :mod:`~zmeshlib.policy._document` imports it from here, so the
  two modules depend one way only.
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

from ._patterns import Pattern, parse_pattern
from ._reader import MAX_COUNT, Reader, _clip, _kind
from .model import (
    LOAD_BALANCERS,
    RETRY_CONDITIONS,
    STATUS_BY_KEY,
    AbortFault,
    AccessLogSpec,
    Backoff,
    DelayFault,
    FaultSpec,
    HeaderMatch,
    HedgingPolicy,
    MetricsSpec,
    MirrorSpec,
    OutlierDetection,
    Policy,
    PoolSpec,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteMatch,
    ServiceSpec,
    SplitDestination,
    TelemetrySpec,
    TracingSpec,
    TrafficSpec,
)

# -- patterns ----------------------------------------------------------------------


def _parsed(r: Reader, value: Any, *, suffix_allowed: bool = True) -> tuple[str, Pattern] | None:
    """A pattern string and its parse, or None with the problem recorded."""
    text = r.string(value)
    if text is None:
        return None
    pattern = parse_pattern(text, suffix_allowed=suffix_allowed)
    if isinstance(pattern, str):
        r.problem(pattern)
        return None
    return text, pattern


def _plain_pattern(r: Reader, value: Any) -> str | None:
    """A method or header-value pattern: exact, ``prefix*``, ``*suffix`` or ``*``."""
    parsed = _parsed(r, value)
    return None if parsed is None else parsed[0]


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


def _split(
    r: Reader, value: Any, service: str, services: Mapping[str, ServiceSpec]
) -> tuple[SplitDestination, ...] | None:
    before = len(r.problems)
    destinations = []
    for dr, item in r.items(value):
        dest = _split_destination(dr, item)
        if dest is not None:
            _check_subset(dr.key("subset"), service, dest.subset, services)
            destinations.append(dest)
    total = sum(d.weight for d in destinations)
    complete = isinstance(value, list | tuple) and len(destinations) == len(value)
    if complete and total != 100:
        r.problem(f"weights sum to {total}, they must sum to 100")
    names = [d.subset for d in destinations]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        r.problem(f"subset {_clip(dup)!r} appears more than once")
    return tuple(destinations) if len(r.problems) == before else None


def _check_subset(
    r: Reader, service: str, subset: str, services: Mapping[str, ServiceSpec]
) -> None:
    spec = services.get(service)
    if spec is None or subset not in spec.subsets:
        where = (
            f"services.{service}.subsets"
            if spec
            else f"services ({_clip(service)!r} is not listed)"
        )
        r.problem(
            f"subset {_clip(subset)!r} of service {_clip(service)!r} is not defined in {where}"
        )


_RETRY_KEYS = (
    "attempts",
    "per_try_timeout",
    "retry_on",
    "idempotent_methods",
    "backoff",
    "budget",
)


def _retries(r: Reader, value: Any) -> RetryPolicy | None:
    body = r.mapping(value, _RETRY_KEYS)
    if body is None:
        return None
    before = len(r.problems)
    kw: dict[str, Any] = {}
    if "attempts" in body:
        kw["attempts"] = r.key("attempts").integer(body["attempts"], minimum=0, maximum=10)
    if "per_try_timeout" in body:
        kw["per_try_timeout"] = r.key("per_try_timeout").duration(body["per_try_timeout"])
    if "retry_on" in body:
        allowed = (*RETRY_CONDITIONS, *STATUS_BY_KEY)
        kw["retry_on"] = r.key("retry_on").list_of(
            body["retry_on"], lambda rr, v: rr.choice(v, allowed)
        )
    if "idempotent_methods" in body:
        kw["idempotent_methods"] = r.key("idempotent_methods").list_of(
            body["idempotent_methods"], _plain_pattern
        )
    if "backoff" in body:
        kw["backoff"] = _backoff(r.key("backoff"), body["backoff"])
    if "budget" in body:
        kw["budget"] = _budget(r.key("budget"), body["budget"])
    if len(r.problems) != before:
        return None
    return RetryPolicy(**kw)


def _backoff(r: Reader, value: Any) -> Backoff | None:
    body = r.mapping(value, ("base_interval", "max_interval"))
    if body is None:
        return None
    base = (
        r.key("base_interval").duration(body["base_interval"]) if "base_interval" in body else None
    )
    cap = r.key("max_interval").duration(body["max_interval"]) if "max_interval" in body else None
    if ("base_interval" in body and base is None) or ("max_interval" in body and cap is None):
        return None
    backoff = Backoff(
        base_interval=Backoff().base_interval if base is None else base,
        max_interval=Backoff().max_interval if cap is None else cap,
    )
    if backoff.max_interval < backoff.base_interval:
        r.key("max_interval").problem("must not be below base_interval")
        return None
    return backoff


#: The budget's old keys, and what to write instead.
_REPLACED_BUDGET_KEYS = {
    "percent": (
        "'percent' was replaced by 'retry_ratio', a fraction of the requests sent over "
        "'ttl' (20 percent is retry_ratio: 0.2)"
    ),
    "min_concurrency": (
        "'min_concurrency' was replaced by 'min_retries_per_second', the retries allowed "
        "every second whatever the ratio"
    ),
}


def _budget(r: Reader, value: Any) -> RetryBudget | None:
    """The retry budget; ``false`` or ``null`` turn it off (None), as does a bad one."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        r.problem(
            f"expected a mapping such as {{retry_ratio: 0.2, min_retries_per_second: 10, "
            f"ttl: 10s}} ({{}} for those defaults), or false to turn the budget off; "
            f"got {_kind(value)}"
        )
        return None
    body = r.mapping(
        value, ("retry_ratio", "min_retries_per_second", "ttl", *_REPLACED_BUDGET_KEYS)
    )
    if body is None:
        return None
    before = len(r.problems)
    for old, replaced in _REPLACED_BUDGET_KEYS.items():
        if old in body:
            r.key(old).problem(replaced)
    kw: dict[str, Any] = {}
    if "retry_ratio" in body:
        kw["retry_ratio"] = r.key("retry_ratio").number(
            body["retry_ratio"], minimum=0, maximum=1000
        )
    if "min_retries_per_second" in body:
        kw["min_retries_per_second"] = r.key("min_retries_per_second").number(
            body["min_retries_per_second"], minimum=0, maximum=MAX_COUNT
        )
    if "ttl" in body:
        kw["ttl"] = r.key("ttl").duration(body["ttl"], maximum=3600.0)
    if len(r.problems) != before:
        return None
    return RetryBudget(**kw)


def _hedging(r: Reader, value: Any) -> HedgingPolicy | None:
    body = r.mapping(value, ("delay", "max_attempts"), required=("delay",))
    if body is None or "delay" not in body:
        return None
    delay = r.key("delay").duration(body["delay"])
    attempts = (
        r.key("max_attempts").integer(body["max_attempts"], minimum=2, maximum=10)
        if "max_attempts" in body
        else 2
    )
    if delay is None or attempts is None:
        return None
    return HedgingPolicy(delay=delay, max_attempts=attempts)


def _status(r: Reader, value: Any) -> Any:
    key = r.choice(value, tuple(STATUS_BY_KEY))
    return STATUS_BY_KEY[key] if key is not None else None


_OUTLIER_KEYS = (
    "consecutive_errors",
    "interval",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
    "always_eject_one",
    "min_health_percent",
    "error_codes",
)


def _outlier(r: Reader, value: Any) -> OutlierDetection | None:
    body = r.mapping(value, _OUTLIER_KEYS)
    if body is None:
        return None
    before = len(r.problems)
    kw: dict[str, Any] = {}
    if "consecutive_errors" in body:
        kw["consecutive_errors"] = r.key("consecutive_errors").integer(
            body["consecutive_errors"], minimum=1, maximum=MAX_COUNT
        )
    for k in ("interval", "base_ejection_time", "max_ejection_time"):
        if k in body:
            kw[k] = r.key(k).duration(body[k])
    for k in ("max_ejection_percent", "min_health_percent"):
        if k in body:
            kw[k] = r.key(k).percentage(body[k])
    if "always_eject_one" in body:
        kw["always_eject_one"] = r.key("always_eject_one").boolean(body["always_eject_one"])
    if "error_codes" in body:
        codes = r.key("error_codes").list_of(body["error_codes"], _status)
        kw["error_codes"] = frozenset(codes) if codes is not None else None
    if len(r.problems) != before:
        return None
    outlier = OutlierDetection(**kw)
    top = outlier.max_ejection_time
    if top is not None and top < outlier.base_ejection_time:
        r.key("max_ejection_time").problem(
            f"{top:g}s is below base_ejection_time ({outlier.base_ejection_time:g}s); "
            "the longest ejection cannot be shorter than the first"
        )
        return None
    return outlier


def _pool(r: Reader, value: Any) -> PoolSpec | None:
    counts = ("max_connections", "max_requests", "max_pending")
    times = ("connect_timeout", "idle_timeout")
    body = r.mapping(value, counts + times)
    if body is None:
        return None
    kw: dict[str, Any] = {}
    for k, v in body.items():
        if k in counts:
            kw[k] = r.key(k).integer(v, minimum=1, maximum=MAX_COUNT)
        else:
            kw[k] = r.key(k).duration(v)
    if None in kw.values():
        return None
    return PoolSpec(**kw)


def _faults(r: Reader, value: Any) -> FaultSpec | None:
    body = r.mapping(value, ("delay", "abort"))
    if body is None:
        return None
    if not body:
        r.problem("names no fault (delay, abort); omit it instead")
        return None
    delay = abort = None
    ok = True
    if "delay" in body:
        dr = r.key("delay")
        d = dr.mapping(body["delay"], ("fixed_delay", "percentage"), required=("fixed_delay",))
        fixed = (
            dr.key("fixed_delay").duration(d["fixed_delay"]) if d and "fixed_delay" in d else None
        )
        pct = dr.key("percentage").percentage(d["percentage"]) if d and "percentage" in d else 100.0
        delay = DelayFault(fixed, pct) if fixed is not None and pct is not None else None
        ok = delay is not None
    if "abort" in body:
        ar = r.key("abort")
        a = ar.mapping(body["abort"], ("status", "percentage"), required=("status",))
        status = _status(ar.key("status"), a["status"]) if a and "status" in a else None
        pct = ar.key("percentage").percentage(a["percentage"]) if a and "percentage" in a else 100.0
        abort = AbortFault(status, pct) if status is not None and pct is not None else None
        ok = ok and abort is not None
    return FaultSpec(delay, abort) if ok else None


def _split_destination(r: Reader, value: Any) -> SplitDestination | None:
    body = r.mapping(value, ("subset", "weight"), required=("subset", "weight"))
    if body is None or "subset" not in body or "weight" not in body:
        return None
    subset = r.key("subset").string(body["subset"])
    weight = r.key("weight").integer(body["weight"], minimum=0, maximum=100)
    return SplitDestination(subset, weight) if subset is not None and weight is not None else None


def _mirror(
    r: Reader, value: Any, service: str, services: Mapping[str, ServiceSpec]
) -> MirrorSpec | None:
    body = r.mapping(value, ("service", "subset", "percentage"))
    if body is None:
        return None
    if not body:
        r.problem("names neither a service nor a subset to mirror to")
        return None
    target = r.key("service").string(body["service"]) if "service" in body else service
    subset = r.key("subset").string(body["subset"]) if "subset" in body else None
    pct = r.key("percentage").percentage(body["percentage"]) if "percentage" in body else 100.0
    if target is None or pct is None or ("subset" in body and subset is None):
        return None
    if target == service and subset is None:
        r.problem("mirrors the service to itself; name another service or a subset")
        return None
    if subset is not None:
        _check_subset(r.key("subset"), target, subset, services)
    return MirrorSpec(target, subset, pct)


# -- telemetry ---------------------------------------------------------------------


def _telemetry(r: Reader, value: Any) -> TelemetrySpec | None:
    body = r.mapping(value, ("tracing", "metrics", "access_log"))
    if body is None:
        return None
    kw: dict[str, Any] = {}
    if "tracing" in body:
        tr = r.key("tracing")
        t = tr.mapping(body["tracing"], ("enabled", "sampling"))
        if t is None:
            kw["tracing"] = None
        else:
            tkw: dict[str, Any] = {}
            if "enabled" in t:
                tkw["enabled"] = tr.key("enabled").boolean(t["enabled"])
            if "sampling" in t:
                tkw["sampling"] = tr.key("sampling").percentage(t["sampling"])
            kw["tracing"] = None if None in tkw.values() else TracingSpec(**tkw)
    for k, cls in (("metrics", MetricsSpec), ("access_log", AccessLogSpec)):
        if k in body:
            sr = r.key(k)
            s = sr.mapping(body[k], ("enabled",))
            if s is None or "enabled" not in s:
                kw[k] = None if s is None else cls()
            else:
                enabled = sr.key("enabled").boolean(s["enabled"])
                kw[k] = None if enabled is None else cls(enabled)
    if None in kw.values():
        return None
    return TelemetrySpec(**kw)
