"""The per-request plan: weighted split, fault and mirror draws, with seeded random sources.

Route matching itself (methods, headers, order, fall-through) is tabled in
tests/policy/test_routes.py, over parsed policies.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from zmeshlib import StatusCode
from zmeshlib.policy.model import (
    AbortFault,
    DelayFault,
    FaultSpec,
    MirrorSpec,
    SplitDestination,
    TrafficSpec,
)
from zmeshlib.resilience.routing import Planner, choose_subset, plan

N = 20_000


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def split(*pairs: tuple[str, int]) -> tuple[SplitDestination, ...]:
    return tuple(SplitDestination(s, w) for s, w in pairs)


@pytest.mark.parametrize(
    ("destinations", "expected"),
    [
        (split(("v1", 70), ("v2", 30)), {"v1": 0.7, "v2": 0.3}),
        (split(("v1", 90), ("v2", 10)), {"v1": 0.9, "v2": 0.1}),
        (split(("v1", 100), ("v2", 0)), {"v1": 1.0}),  # weight 0 gets nothing
        (split(("v1", 0), ("v2", 50), ("v3", 50)), {"v2": 0.5, "v3": 0.5}),
        (split(("v1", 33), ("v2", 33), ("v3", 34)), {"v1": 0.33, "v2": 0.33, "v3": 0.34}),
        ((), {None: 1.0}),  # no split: every endpoint
    ],
)
def test_a_weighted_split_lands_within_4_sigma(
    destinations: tuple[SplitDestination, ...], expected: dict[str | None, float]
):
    rng = random.Random(7)
    counts = Counter(choose_subset(destinations, rng) for _ in range(N))
    assert set(counts) == set(expected)  # nothing for a subset unlisted or of weight 0
    for subset, share in expected.items():
        assert within_4_sigma(counts[subset], N, share), (subset, counts)


def test_the_same_seed_gives_the_same_choices():
    destinations = split(("v1", 70), ("v2", 30))
    a, b = random.Random(3), random.Random(3)
    assert [choose_subset(destinations, a) for _ in range(100)] == [
        choose_subset(destinations, b) for _ in range(100)
    ]


def test_the_top_of_the_range_goes_to_the_last_weighted_subset():
    class Top(random.Random):
        def random(self) -> float:
            return 0.9999999999999999

    assert choose_subset(split(("v1", 50), ("v2", 50), ("v3", 0)), Top()) == "v2"


def faults(delay_pct: float | None = None, abort_pct: float | None = None) -> TrafficSpec:
    return TrafficSpec(
        faults=FaultSpec(
            DelayFault(0.05, delay_pct) if delay_pct is not None else None,
            AbortFault(StatusCode.UNAVAILABLE, abort_pct) if abort_pct is not None else None,
        )
    )


@pytest.mark.parametrize(("delay_pct", "abort_pct"), [(30, None), (None, 30), (50, 10), (0, 100)])
def test_faults_are_drawn_independently_each_by_its_percentage(
    delay_pct: float | None, abort_pct: float | None
):
    rng = random.Random(11)
    plans = [plan(faults(delay_pct, abort_pct), "get", None, rng) for _ in range(N)]
    delayed = sum(1 for p in plans if p.delay == 0.05)
    aborted = [p for p in plans if p.abort is not None]
    assert within_4_sigma(delayed, N, (delay_pct or 0) / 100)
    assert within_4_sigma(len(aborted), N, (abort_pct or 0) / 100)
    assert all(p.abort is StatusCode.UNAVAILABLE for p in aborted)
    if delay_pct and abort_pct:  # independent: both together as often as the product says
        both = sum(1 for p in plans if p.delay and p.abort is not None)
        assert within_4_sigma(both, N, delay_pct * abort_pct / 10_000)


def test_a_mirror_is_drawn_by_its_percentage():
    spec = TrafficSpec(mirror=MirrorSpec("orders", "shadow", 25.0))
    rng = random.Random(5)
    mirrored = sum(1 for _ in range(N) if plan(spec, "get", None, rng).mirror is not None)
    assert within_4_sigma(mirrored, N, 0.25)


def test_settings_without_routes_split_faults_or_mirror_plan_once_and_draw_nothing():
    class NoDraws(random.Random):
        def random(self) -> float:
            raise AssertionError("drew")

    planner = Planner(TrafficSpec(timeout=2.0))
    first = planner.plan("get", {"x": "1"}, NoDraws())
    assert first is planner.plan("other", None, NoDraws())
    assert first.subset is None and first.delay == 0.0 and first.abort is None
    assert first.mirror is None and first.traffic.timeout == 2.0
