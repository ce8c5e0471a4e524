"""Each subset is its own endpoint set, and its own circuit breaker: Istio's cluster per subset."""

from __future__ import annotations

import random
from typing import Any

from zmeshlib import Policy
from zmeshlib.resilience import Admission, Outcome
from zmeshlib.sockets.destinations import Destinations
from zmeshlib.sockets.traffic import ServiceTraffic

POLICY = Policy.from_dict(
    {
        "version": 1,
        "services": {
            "orders": {
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ]
            }
        },
        "traffic": {
            "orders": {
                "outlier_detection": {"consecutive_errors": 1, "max_ejection_percent": 100},
                "pool": {"max_requests": 1, "max_pending": 1},
            }
        },
    }
)


class Up:  # what Destinations reads of an upstream: its card's labels
    def __init__(self, version: str) -> None:
        self.card: Any = type("Card", (), {"labels": {"version": version}})()


def destinations() -> tuple[Destinations, ServiceTraffic]:
    traffic = ServiceTraffic(POLICY, "orders", POLICY.traffic_for("orders"))
    d = Destinations(random.Random(1), lambda event: None)
    d.configure(traffic)
    d.update("orders", {"a": Up("v1"), "b": Up("v1"), "c": Up("v2")}, {})  # type: ignore[dict-item]
    return d, traffic


def test_a_subset_balances_over_its_own_members_only():
    d, traffic = destinations()
    v1 = d.for_subset(traffic, "v1")
    assert sorted(v1.endpoints) == ["a", "b"] and sorted(d.all.endpoints) == ["a", "b", "c"]
    assert {v1.pick(0.0) for _ in range(50)} <= {"a", "b"}
    assert d.for_subset(traffic, None) is d.all


def test_an_ejection_in_one_subset_leaves_the_other_sets_alone():
    d, traffic = destinations()
    v1 = d.for_subset(traffic, "v1")
    v1.started("a", 0.0)
    assert v1.finished("a", Outcome.ERROR, 0.01, 0.0)  # ejected at once (consecutive_errors 1)
    assert v1.ejected() == ["a"] and d.all.ejected() == []


def test_the_circuit_breaker_is_per_subset():
    _, traffic = destinations()
    v1, v2 = traffic.pool_for("v1"), traffic.pool_for("v2")
    assert v1 is not None and v2 is not None and v1 is not v2
    assert v1.admit() is Admission.GO
    assert v1.admit() is Admission.WAIT  # v1 is full: its queue
    assert v2.admit() is Admission.GO  # the canary's pool is its own


def test_members_follow_the_upstreams():
    d, traffic = destinations()
    v2 = d.for_subset(traffic, "v2")
    d.update("orders", {"a": Up("v1"), "d": Up("v2")}, {})  # type: ignore[dict-item]
    assert sorted(v2.endpoints) == ["d"]
    assert d.empty_subset("v2") is None
    d.update("orders", {"a": Up("v1")}, {})  # type: ignore[dict-item]
    assert d.empty_subset("v2") == POLICY.services["orders"].subsets["v2"]
