"""The pure choices of ``pool.max_connections`` (subsetting) and ``pool.idle_timeout``."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from zmeshlib.resilience.pool import idle
from zmeshlib.resilience.subsetting import keep

ENDPOINTS = [f"tcp://127.0.0.1:{5000 + i}" for i in range(10)]


def test_at_most_the_limit_of_each_group_and_their_union():
    seed = b"client-one"
    assert len(keep([ENDPOINTS], 3, seed)) == 3
    assert keep([ENDPOINTS[:2]], 3, seed) == set(ENDPOINTS[:2])  # fewer than the limit: all
    v1, v2 = ENDPOINTS[:7], ENDPOINTS[7:]
    kept = keep([ENDPOINTS, v1, v2], 2, seed)
    assert len(kept & set(v2)) >= 2 and len(kept & set(v1)) >= 2  # every subset reachable
    assert len(kept) <= 6
    assert keep([], 2, seed) == set() and keep([[]], 2, seed) == set()


def test_the_choice_is_the_seed_s_alone():
    assert keep([ENDPOINTS], 3, b"a") == keep([list(reversed(ENDPOINTS))], 3, b"a")
    choices = {frozenset(keep([ENDPOINTS], 3, bytes([i]))) for i in range(20)}
    assert len(choices) > 5  # clients pick their own


@pytest.mark.parametrize("seed", [bytes([i]) * 8 for i in range(20)])
def test_one_endpoint_joining_or_leaving_changes_at_most_one_choice(seed):
    before = keep([ENDPOINTS], 4, seed)
    for gone in ENDPOINTS:
        after = keep([[e for e in ENDPOINTS if e != gone]], 4, seed)
        assert len(before - after) <= 1 and len(after - before) <= 1
    joined = keep([[*ENDPOINTS, "tcp://127.0.0.1:6000"]], 4, seed)
    assert len(before - joined) <= 1


def test_a_fleet_of_clients_spreads_evenly():
    rng = random.Random(7)
    load: Counter[str] = Counter()
    clients = 2000
    for _ in range(clients):
        load.update(keep([ENDPOINTS], 3, rng.randbytes(16)))
    expected = clients * 3 / len(ENDPOINTS)  # 600 connections per server
    assert all(abs(n - expected) < 0.15 * expected for n in load.values()), load


@pytest.mark.parametrize(
    ("last_used", "busy", "now", "expected"),
    [
        ({"a": 0.0, "b": 5.0}, set(), 10.0, ["a"]),  # idle 10 s; b only 5
        ({"a": 0.0}, {"a"}, 10.0, []),  # a request in flight: never idle
        ({"a": 0.0, "b": 0.0}, {"b"}, 100.0, ["a"]),
        ({"a": 4.0}, set(), 10.0, ["a"]),  # exactly the timeout
        ({}, set(), 10.0, []),
    ],
)
def test_idle_connections(last_used, busy, now, expected):
    assert idle(last_used, busy, now, 6.0) == expected
