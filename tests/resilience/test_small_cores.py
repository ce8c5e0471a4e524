"""Backoff, the retry budget, the pool and the balancers, exactly, with a fake clock and seeds."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from zmeshlib.policy.model import RetryBudget
from zmeshlib.resilience import Admission, Pool, RetryBudgetTracker, backoff_delay
from zmeshlib.resilience.balancers import least_request, make, peak_ewma, uniform
from zmeshlib.resilience.endpoints import EndpointState

# -- backoff ------------------------------------------------------------------------


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 4, 10, 100])
def test_backoff_stays_within_the_jittered_exponential_bound(retry):
    rng = random.Random(retry)
    ceiling = min(0.25, 0.025 * 2**retry)
    draws = [backoff_delay(retry, 0.025, 0.25, rng) for _ in range(4000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    assert sum(draws) / len(draws) == pytest.approx(ceiling / 2, rel=0.05)  # full jitter


# -- the retry budget -------------------------------------------------------------------


def test_the_floor_lets_a_quiet_client_retry_and_then_bounds_it():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=0.2, min_retries_per_second=1, ttl=10))
    budget.deposit(0.0)
    assert sum(budget.try_withdraw(0.0) for _ in range(50)) == 10  # 1/s x 10 s, no more


def test_retries_may_add_their_ratio_of_the_requests():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=0.2, min_retries_per_second=0, ttl=10))
    for _ in range(100):
        budget.deposit(1.0)
    assert sum(budget.try_withdraw(1.0) for _ in range(100)) == 20
    assert budget.refused == 80
    assert budget.window(1.0) == (100, 20)


def test_counts_leave_the_window_with_their_bucket():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=1.0, min_retries_per_second=0, ttl=10))
    budget.deposit(0.5)  # bucket 0: [0, 1)
    assert budget.try_withdraw(0.5)
    assert not budget.try_withdraw(0.6)
    assert budget.window(9.99) == (1, 1)  # still within the ten buckets
    assert budget.window(10.0) == (0, 0)  # bucket 0 is ten buckets old: gone
    budget.deposit(10.0)
    assert budget.try_withdraw(10.0)


def test_a_budget_shared_by_threads_never_overspends():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=0.0, min_retries_per_second=10, ttl=10))
    won: list[bool] = []
    lock = threading.Lock()

    def spend() -> None:
        got = [budget.try_withdraw(1.0) for _ in range(100)]
        with lock:
            won.extend(got)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 100


# -- the pool (circuit breaking) --------------------------------------------------------


def test_the_pool_admits_queues_and_refuses():
    pool = Pool(max_requests=2, max_pending=1)
    assert [pool.admit() for _ in range(4)] == [
        Admission.GO,
        Admission.GO,
        Admission.WAIT,
        Admission.FULL,
    ]
    assert pool.admit_waiting() is Admission.WAIT  # no slot yet
    pool.release()
    assert pool.admit_waiting() is Admission.GO
    assert (pool.active, pool.waiting, pool.rejected) == (2, 0, 1)
    assert "pool.max_requests = 2" in pool.refusal("payment")
    unlimited = Pool(None, None)
    assert all(unlimited.admit() is Admission.GO for _ in range(1000))


def test_the_pool_counts_right_under_threads():
    pool = Pool(max_requests=5, max_pending=0)

    def churn() -> None:
        for _ in range(500):
            if pool.admit() is Admission.GO:
                pool.release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (pool.active, pool.waiting) == (0, 0)


# -- balancers ---------------------------------------------------------------------------------


def _states(*in_flight: int) -> list[EndpointState]:
    states = []
    for i, n in enumerate(in_flight):
        s = EndpointState(f"e{i}", {})
        s.in_flight = n
        states.append(s)
    return states


def test_p2c_prefers_the_idle_endpoint_as_often_as_two_choices_allow():
    """With in-flight [0, 5, 5], the idle one wins whenever it is one of the two drawn:
    2/3 of the draws; ties between the busy two split the rest."""
    states = _states(0, 5, 5)
    rng = random.Random(7)
    wins = Counter(least_request(states, rng).id for _ in range(30_000))
    assert wins["e0"] / 30_000 == pytest.approx(2 / 3, abs=0.01)
    assert wins["e1"] == pytest.approx(wins["e2"], rel=0.05)


def test_peak_ewma_prefers_the_fast_endpoint_and_tries_a_new_one():
    fast, slow, new = _states(0, 0, 0)
    fast.ewma, slow.ewma = 0.001, 0.200
    rng = random.Random(3)
    picks = Counter(peak_ewma([fast, slow], rng).id for _ in range(1000))
    assert picks == {"e0": 1000}
    picks = Counter(peak_ewma([fast, slow, new], rng).id for _ in range(3000))
    assert picks["e1"] == 0  # the slow one loses every draw it is in
    assert picks["e2"] > 500  # never measured: costed like the fastest, so tried
    fast.in_flight = 500  # load counts: cost = ewma x (in flight + 1)
    assert Counter(peak_ewma([fast, slow], rng).id for _ in range(100)) == {"e1": 100}


def test_round_robin_is_fair_and_random_is_uniform():
    states = _states(0, 0, 0, 0)
    rr = make("round_robin")
    assert Counter(rr(states, random.Random()).id for _ in range(400)) == {
        f"e{i}": 100 for i in range(4)
    }
    rng = random.Random(1)
    counts = Counter(uniform(states, rng).id for _ in range(40_000))
    assert all(c == pytest.approx(10_000, rel=0.05) for c in counts.values())
