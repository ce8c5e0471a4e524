"""Readers of the settings a service's traffic (or one of its routes) is made of.

Rules this module keeps:

* Each reader takes the problem-collecting :class:`~zmeshlib.policy._reader.Reader`
  at the setting's path and returns its value, or None with every problem
  recorded; nothing is raised. :mod:`zmeshlib.policy._traffic` calls them for
  ``traffic.<service>`` and for each of its routes, so a setting reads the
  same wherever it is written.
* A setting's own cross-checks are made here (split weights sum to 100 and
  name each subset once, ``max_ejection_time`` is not below
  ``base_ejection_time``, a mirror does not copy a service to itself, a
  subset named is defined); the checks between settings are the caller's.
* A replaced key is a problem that names its replacement (the retry budget's
  ``percent`` and ``min_concurrency``).
* Method patterns (``retries.idempotent_methods``, a route's ``method``,
  authorization's ``call``) are read by :func:`_plain_pattern`, here because
  this module depends on nothing of the policy package but the reader, the
  patterns and the model: every other module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._patterns import Pattern, parse_pattern
from ._reader import MAX_COUNT, Reader, _clip, _kind
from .model import (
    RETRY_CONDITIONS,
    STATUS_BY_KEY,
    AbortFault,
    Backoff,
    DelayFault,
    FaultSpec,
    HedgingPolicy,
    MirrorSpec,
    OutlierDetection,
    PoolSpec,
    RetryBudget,
    RetryPolicy,
    ServiceSpec,
    SplitDestination,
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


# -- settings ---------------------------------------------------------------------


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
