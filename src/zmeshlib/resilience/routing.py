"""One request's route: which settings, which subset, which injected fault, whether to mirror.

Rules this module keeps:

* The first route of ``traffic.<service>.routes`` whose ``match`` holds decides
  (Istio's VirtualService order); when none does, the service-level settings
  apply. A route's settings were resolved over the service's when the policy
  was read (:class:`~zmeshlib.policy.Route`), so nothing is merged here.
* A split is a weighted choice among subsets; a subset of weight 0, or one not
  listed when a split exists, is never chosen. No split: every endpoint.
* Faults are drawn independently, each by its own percentage (Envoy's fault
  filter): a delay, then an abort. An aborted request is never sent.
* A mirror copy is drawn by its percentage, after the faults. The call sends
  it with its first attempt, so an aborted request is not mirrored (Envoy's
  fault filter runs before its router, which mirrors).
* Every draw takes the injected random source, always in the same order
  (split, delay, abort, mirror) and only for what the settings have, so a
  seeded source gives the same plans every run.

Theory of operation: :func:`plan` is called once per logical request by the
client shell, before the call state machine starts. A service without routes,
split, faults or mirror returns the same :class:`Plan` every time, without a
draw: the common case costs one attribute test.

==========================  ==================================================
settings                    plan
==========================  ==================================================
no split                    ``subset`` None: balance over every endpoint
split [(a, 70), (b, 30)]    ``subset`` a with 0.7, b with 0.3
``faults.delay`` p %        ``delay`` its ``fixed_delay`` with p / 100, else 0
``faults.abort`` p %        ``abort`` its status with p / 100, else None
``mirror`` p %              ``mirror`` the spec with p / 100, else None
==========================  ==================================================
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from .._models import StatusCode
from ..policy.model import MirrorSpec, SplitDestination, TrafficSpec

_NO_HEADERS: Mapping[str, str] = {}


class Plan:
    """What one request gets: its settings, the subset to send to, faults, a mirror."""

    __slots__ = ("abort", "delay", "mirror", "subset", "traffic")

    def __init__(
        self,
        traffic: TrafficSpec,
        subset: str | None = None,
        delay: float = 0.0,
        abort: StatusCode | None = None,
        mirror: MirrorSpec | None = None,
    ) -> None:
        self.traffic = traffic
        self.subset = subset
        self.delay = delay
        self.abort = abort
        self.mirror = mirror

    def __repr__(self) -> str:
        return (
            f"Plan(subset={self.subset!r}, delay={self.delay!r}, abort={self.abort!r}, "
            f"mirror={self.mirror!r})"
        )


def select(spec: TrafficSpec, method: str, headers: Mapping[str, str] | None) -> TrafficSpec:
    """The settings of the first route that matches, or the service's own."""
    if spec.routes:
        found = headers if headers is not None else _NO_HEADERS
        for route in spec.routes:
            if route.matches(method, found):
                return route.traffic
    return spec


def choose_subset(split: tuple[SplitDestination, ...], rng: random.Random) -> str | None:
    """A weighted draw among ``split``'s subsets; None when there is no split."""
    if not split:
        return None
    total = sum(d.weight for d in split)
    point = rng.random() * total
    for dest in split:
        if dest.weight and point < dest.weight:
            return dest.subset
        point -= dest.weight
    # rounding at the top end: the last subset with a weight
    return next(d.subset for d in reversed(split) if d.weight)


def _drawn(percentage: float, rng: random.Random) -> bool:
    return percentage >= 100.0 or (percentage > 0.0 and rng.random() * 100.0 < percentage)


class Planner:
    """Plans for one service's requests under one policy (module docstring)."""

    __slots__ = ("_constant", "spec")

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        plain = not (spec.routes or spec.split or spec.faults or spec.mirror)
        self._constant = Plan(spec) if plain else None

    def plan(self, method: str, headers: Mapping[str, str] | None, rng: random.Random) -> Plan:
        if self._constant is not None:
            return self._constant
        return plan(self.spec, method, headers, rng)


def plan(
    spec: TrafficSpec, method: str, headers: Mapping[str, str] | None, rng: random.Random
) -> Plan:
    """The plan for one request (module docstring's table)."""
    traffic = select(spec, method, headers)
    subset = choose_subset(traffic.split, rng)
    delay = 0.0
    abort = None
    faults = traffic.faults
    if faults is not None:
        if faults.delay is not None and _drawn(faults.delay.percentage, rng):
            delay = faults.delay.fixed_delay
        if faults.abort is not None and _drawn(faults.abort.percentage, rng):
            abort = faults.abort.status
    mirror = traffic.mirror
    if mirror is not None and not _drawn(mirror.percentage, rng):
        mirror = None
    return Plan(traffic, subset, delay, abort, mirror)
