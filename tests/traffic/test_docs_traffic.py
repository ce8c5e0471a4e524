"""docs/traffic.md's policies do what the page says, decided by the pure core with seeded sources.

The behaviour across real processes is in test_across_processes.py; this holds
each snippet of the page to its sentences.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

import yaml

from zmeshlib import Policy, StatusCode
from zmeshlib.resilience.routing import Planner

PAGE = Path(__file__).parents[2] / "docs" / "traffic.md"
N = 10_000


def snippets() -> list[Policy]:
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    return [Policy.from_dict(yaml.safe_load(b)) for b in blocks]


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_every_policy_on_the_page_is_valid():
    assert len(snippets()) == 5


def test_the_canary_steps():
    _, first, second, _, _ = snippets()
    rng = random.Random(1)
    for policy, share in ((first, 0.10), (second, 0.50)):
        planner = Planner(policy.traffic_for("payment"))
        subsets = Counter(planner.plan("charge", None, rng).subset for _ in range(N))
        assert set(subsets) == {"v1", "v2"} and within_4_sigma(subsets["v2"], N, share)
        testers = {planner.plan("charge", {"x-canary": "1"}, rng).subset for _ in range(200)}
        assert testers == {"v2"}
        other = Counter(planner.plan("charge", {"x-canary": "2"}, rng).subset for _ in range(N))
        assert within_4_sigma(other["v2"], N, share)  # another value: not a tester


def test_the_chaos_drill_hits_refunds_only():
    drill = snippets()[3]
    planner = Planner(drill.traffic_for("payment"))
    rng = random.Random(2)
    refunds = [planner.plan("refund", None, rng) for _ in range(N)]
    assert within_4_sigma(sum(p.delay == 0.2 for p in refunds), N, 0.20)
    aborted = [p.abort for p in refunds if p.abort is not None]
    assert within_4_sigma(len(aborted), N, 0.05) and set(aborted) == {StatusCode.UNAVAILABLE}
    assert all(p.traffic.timeout == 1.0 for p in refunds)  # inherited from the service
    charges = [planner.plan("charge", None, rng) for _ in range(1000)]
    assert all(p.delay == 0.0 and p.abort is None for p in charges)


def test_the_shadow_launch_mirrors_everything_and_sends_only_to_v1():
    shadow = snippets()[4]
    planner = Planner(shadow.traffic_for("payment"))
    rng = random.Random(3)
    plans = [planner.plan("charge", None, rng) for _ in range(1000)]
    assert {p.subset for p in plans} == {"v1"}
    assert {(p.mirror.service, p.mirror.subset) for p in plans if p.mirror} == {
        ("payment", "shadow")
    }
    assert all(p.mirror is not None for p in plans)
