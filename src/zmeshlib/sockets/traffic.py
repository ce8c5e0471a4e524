"""What the client sockets of one Mesh share per destination service, under one policy.

Rules this module keeps:

* One :class:`ServiceTraffic` per (Mesh, service, settings): the route
  planner, the retry budgets, the circuit breakers and who waits for a slot.
  A new policy with the same settings for a service keeps them (and their
  counts); new settings start afresh.
* A circuit breaker (``pool``) is per subset, as Istio makes each
  DestinationRule subset its own Envoy cluster with its own breakers: a
  canary that fills its pool does not refuse requests for the stable subset.
* A retry budget is per retry policy: a route that sets its own ``retries``
  has its own budget, the routes that inherit the service's share one.
* Fault and mirror counts are the Mesh's, per service, and outlive policy
  swaps: they feed metrics (``telemetry/metrics.py``) and ``Mesh.traffic_counts()``.

Theory of operation: a client socket asks :meth:`Traffic.of` for the current
policy's :class:`ServiceTraffic` at each request (one identity test in the
usual case), plans the request with its planner, takes a slot of the chosen
subset's pool and runs the call with the route's budget.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..policy import Policy
from ..policy.model import RetryBudget, Subset, TrafficSpec
from ..resilience import Pool, RetryBudgetTracker
from ..resilience.routing import Planner

_NO_SUBSETS: Mapping[str, Subset] = {}


def mirror_services(service: str, spec: TrafficSpec) -> frozenset[str]:
    """Other services the settings mirror to (the service's and its routes')."""
    mirrors = [spec.mirror, *(r.traffic.mirror for r in spec.routes)]
    return frozenset(m.service for m in mirrors if m is not None and m.service != service)


class ServiceTraffic:
    """The shared state of one destination service under one policy (module docstring)."""

    __slots__ = (
        "_budgets",
        "_lock",
        "_pools",
        "mirrors",
        "planner",
        "policy",
        "spec",
        "subsets",
        "waiters",
    )

    def __init__(self, policy: Policy, service: str, spec: TrafficSpec) -> None:
        self.policy = policy
        self.spec = spec
        self.planner = Planner(spec)
        found = policy.services.get(service)
        self.subsets: Mapping[str, Subset] = found.subsets if found is not None else _NO_SUBSETS
        self.mirrors = mirror_services(service, spec)
        self._lock = threading.Lock()
        self._budgets: dict[RetryBudget, RetryBudgetTracker] = {}
        self._pools: dict[str | None, Pool] = {}
        self.waiters: list[Any] = []  # the wake() of sockets waiting for a slot

    @property
    def budget(self) -> RetryBudgetTracker | None:
        """The budget of the service-level retry policy."""
        return self.budget_for(self.spec.retries.budget)

    def budget_for(self, spec: RetryBudget | None) -> RetryBudgetTracker | None:
        if spec is None:
            return None
        tracker = self._budgets.get(spec)
        if tracker is None:
            with self._lock:
                tracker = self._budgets.setdefault(spec, RetryBudgetTracker(spec))
        return tracker

    def pool_for(self, subset: str | None) -> Pool | None:
        """The circuit breaker of ``subset`` (None: the whole service), if ``pool`` sets one."""
        pool = self._pools.get(subset)
        if pool is not None:
            return pool
        spec = self.spec.pool
        if spec.max_requests is None and spec.max_pending is None:
            return None
        with self._lock:
            return self._pools.setdefault(subset, Pool(spec.max_requests, spec.max_pending))

    @property
    def pool(self) -> Pool | None:
        return self.pool_for(None)

    def release(self, pool: Pool) -> None:
        pool.release()
        for wake in list(self.waiters):
            wake()


class Traffic:
    """Every destination service's :class:`ServiceTraffic` of one Mesh. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, ServiceTraffic] = {}
        #: (service, event) -> count: ``fault.delay``, ``fault.abort``, ``mirror.sent``,
        #: ``mirror.dropped``.
        self.counts: Counter[tuple[str, str]] = Counter()

    def of(self, policy: Policy, service: str) -> ServiceTraffic:
        state = self._services.get(service)
        if state is not None and state.policy is policy:
            return state
        with self._lock:
            state = self._services.get(service)
            spec = policy.traffic_for(service)
            found = policy.services.get(service)
            subsets = found.subsets if found is not None else _NO_SUBSETS
            if state is None or state.spec != spec or state.subsets != subsets:
                state = ServiceTraffic(policy, service, spec)  # new settings: start afresh
            else:
                state.policy = policy  # same settings under a new policy: keep the counts
            self._services[service] = state
            return state

    def open_circuits(self) -> dict[str, int]:
        """Service -> its pools (per subset) with every slot taken now: an open circuit."""
        with self._lock:
            states = list(self._services.items())
        out: dict[str, int] = {}
        for service, state in states:
            full = sum(1 for pool in list(state._pools.values()) if pool.full())
            if full:
                out[service] = full
        return out

    def count(self, service: str, event: str, n: int = 1) -> None:
        with self._lock:
            self.counts[service, event] += n
