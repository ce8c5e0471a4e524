"""The call state machine, row by row of its tables, with a fake clock and a seeded source."""

from __future__ import annotations

import random

import pytest

from zmeshlib import Delivery, StatusCode
from zmeshlib.policy.model import Backoff, HedgingPolicy, RetryBudget, RetryPolicy
from zmeshlib.resilience import (
    Call,
    Cancel,
    EndpointSet,
    Finish,
    Mirror,
    RetryBudgetTracker,
    Send,
)

OK, UNAVAILABLE, INTERNAL = StatusCode.OK, StatusCode.UNAVAILABLE, StatusCode.INTERNAL
NO_BACKOFF = Backoff(base_interval=0.0, max_interval=0.0)


def retries(**kw: object) -> RetryPolicy:
    kw.setdefault("backoff", NO_BACKOFF)
    kw.setdefault("budget", None)
    return RetryPolicy(**kw)  # type: ignore[arg-type]


def endpoints(n: int = 3) -> EndpointSet:
    es = EndpointSet("round_robin", None, random.Random(1))
    es.update({f"e{i}": {} for i in range(n)}, 0.0)
    return es


def call(
    policy: RetryPolicy | None = None,
    *,
    method: str = "get",
    deadline: float = 10.0,
    es: EndpointSet | None = None,
    hedging: HedgingPolicy | None = None,
    budget: RetryBudgetTracker | None = None,
) -> tuple[Call, EndpointSet]:
    es = es if es is not None else endpoints()
    c = Call(method, deadline, policy or retries(), hedging, es, budget, random.Random(2), 0.0)
    return c, es


def sends(commands: list[object]) -> list[Send]:
    return [c for c in commands if isinstance(c, Send)]


def finish(commands: list[object]) -> Finish:
    (done,) = [c for c in commands if isinstance(c, Finish)]
    return done


def in_flight_total(es: EndpointSet) -> int:
    return sum(s.in_flight for s in es.endpoints.values())


def test_one_attempt_that_succeeds():
    c, es = call()
    (send,) = c.start(0.0)
    assert isinstance(send, Send) and send.attempt == 0 and send.deadline == 10.0
    assert in_flight_total(es) == 1
    done = finish(c.reply(0, OK, False, 0.01))
    assert (done.attempt, done.error) == (0, None) and c.finished
    assert in_flight_total(es) == 0
    assert c.reply(0, OK, False, 0.02) == [] and c.timer(20.0) == []  # nothing after Finish


def test_a_call_whose_deadline_passed_at_start_is_not_sent():
    c, _ = call(deadline=1.0)
    done = finish(c.start(1.0))
    assert done.error.status is StatusCode.DEADLINE_EXCEEDED
    assert done.error.delivery is Delivery.NOT_SENT


@pytest.mark.parametrize(
    ("status", "retriable", "retry_on", "retried"),
    [
        (UNAVAILABLE, False, ("unavailable",), True),
        (UNAVAILABLE, False, ("connect-failure",), False),
        (StatusCode.APPLICATION, True, ("retriable",), True),
        (StatusCode.APPLICATION, False, ("retriable",), False),
        (StatusCode.APPLICATION, True, ("unavailable",), False),
        (INTERNAL, False, ("internal",), True),
        (INTERNAL, False, ("unavailable",), False),
        (StatusCode.PERMISSION_DENIED, False, ("unavailable", "internal"), False),
    ],
)
def test_answered_failures_are_retried_as_retry_on_says(status, retriable, retry_on, retried):
    """Answered failures need no idempotent method: the server said what happened."""
    c, es = call(retries(retry_on=retry_on), method="charge")
    (first,) = sends(c.start(0.0))
    commands = c.reply(0, status, retriable, 0.01)
    if retried:
        assert commands == []  # a backoff of 0: the retry goes out at the timer
        (send,) = sends(c.timer(0.01))
        assert send.attempt == 1 and send.endpoint != first.endpoint  # another endpoint
    else:
        done = finish(commands)
        assert (done.attempt, done.error.status, done.error.delivery) == (
            0,
            status,
            Delivery.ANSWERED,
        )
    assert in_flight_total(es) == (1 if retried else 0)


def test_not_sent_is_retried_on_connect_failure_whatever_the_method():
    c, _ = call(retries(retry_on=("connect-failure",)), method="charge")
    c.start(0.0)
    assert c.not_sent(0, 0.0) == []
    (send,) = sends(c.timer(0.0))
    assert send.attempt == 1
    c2, _ = call(retries(retry_on=("unavailable",)), method="charge")
    c2.start(0.0)
    done = finish(c2.not_sent(0, 0.0))
    assert (done.error.status, done.error.delivery) == (UNAVAILABLE, Delivery.NOT_SENT)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_per_try_timeout_is_retried_only_for_an_idempotent_method(idempotent):
    policy = retries(
        per_try_timeout=0.3,
        retry_on=("deadline-exceeded",),
        idempotent_methods=("get*",) if idempotent else (),
    )
    c, es = call(policy, method="getBalance")
    (send,) = c.start(0.0)
    assert send.deadline == 0.3 and c.next_timer() == 0.3
    commands = c.timer(0.3)
    assert Cancel(0) in commands
    if idempotent:
        (retry,) = sends(commands + c.timer(0.3))
        assert retry.attempt == 1 and retry.deadline == pytest.approx(0.6)
    else:
        done = finish(commands)
        assert (done.error.status, done.error.delivery) == (
            StatusCode.DEADLINE_EXCEEDED,
            Delivery.UNKNOWN,
        )
        assert in_flight_total(es) == 0


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_lost_endpoint_is_retried_only_for_an_idempotent_method(idempotent):
    policy = retries(retry_on=("unavailable",), idempotent_methods=("*",) if idempotent else ())
    c, _ = call(policy)
    c.start(0.0)
    commands = c.lost(0, 0.1)
    if idempotent:
        assert sends(c.timer(0.1))
    else:
        assert finish(commands).error.delivery is Delivery.UNKNOWN


def test_attempts_are_bounded_by_istios_meaning_of_attempts():
    c, _ = call(retries(attempts=2, retry_on=("unavailable",)))
    c.start(0.0)
    c.reply(0, UNAVAILABLE, False, 0.0)
    c.timer(0.0)
    c.reply(1, UNAVAILABLE, False, 0.0)
    c.timer(0.0)
    done = finish(c.reply(2, UNAVAILABLE, False, 0.0))  # 1 + 2 attempts
    assert done.attempt == 2 and "3 attempts made" in done.error.reason


def test_the_budget_blocks_retries_but_never_the_first_attempt():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=0.0, min_retries_per_second=0.1, ttl=10))
    c, _ = call(retries(retry_on=("unavailable",)), budget=budget)
    c.start(0.0)
    c.reply(0, UNAVAILABLE, False, 0.0)  # the one retry the floor allows
    assert sends(c.timer(0.0))
    done = finish(c.reply(1, UNAVAILABLE, False, 0.0))
    assert "retry budget" in done.error.reason
    c2, _ = call(retries(retry_on=("unavailable",)), budget=budget)
    assert sends(c2.start(0.0))  # the first attempt needs no budget


def test_backoff_waits_between_attempts_and_never_crosses_the_deadline():
    policy = retries(retry_on=("unavailable",), backoff=Backoff(0.1, 1.0))
    c, _ = call(policy, deadline=10.0)
    c.start(0.0)
    assert c.reply(0, UNAVAILABLE, False, 0.0) == []
    wait = c.next_timer()
    assert 0.0 <= wait <= 0.1
    assert sends(c.timer(wait))
    late, _ = call(retries(retry_on=("unavailable",), backoff=Backoff(5.0, 5.0)), deadline=1.0)
    late.start(0.0)
    draws = []
    for _ in range(20):  # whatever the draw, a backoff past the deadline ends the call
        late2, _ = call(retries(retry_on=("unavailable",), backoff=Backoff(50, 50)), deadline=1)
        late2.start(0.0)
        draws.append(late2.reply(0, UNAVAILABLE, False, 0.9))
    assert all(finish(d).error.status is UNAVAILABLE for d in draws if d)


def test_the_deadline_ends_the_call_and_cancels_what_is_in_flight():
    c, es = call(deadline=2.0)
    c.start(0.0)
    assert c.next_timer() == 2.0
    commands = c.timer(2.0)
    assert Cancel(0) in commands
    done = finish(commands)
    assert (done.error.status, done.error.delivery) == (
        StatusCode.DEADLINE_EXCEEDED,
        Delivery.UNKNOWN,
    )
    assert in_flight_total(es) == 0


def test_no_endpoint_waits_for_one_and_fails_unavailable_never_sent():
    empty = EndpointSet("least_request", None, random.Random(1))
    c, _ = call(es=empty, deadline=1.0)
    assert c.start(0.0) == [] and c.next_timer() == 1.0
    empty.update({"late": {}}, 0.5)
    (send,) = c.endpoints_changed(0.5)
    assert send.endpoint == "late"

    nobody = EndpointSet()
    c2, _ = call(es=nobody, deadline=1.0)
    c2.start(0.0)
    done = finish(c2.timer(1.0))
    assert (done.error.status, done.error.delivery) == (UNAVAILABLE, Delivery.NOT_SENT)
    assert "no endpoint" in done.error.reason


def test_late_and_unknown_replies_are_ignored():
    c, _ = call(
        retries(per_try_timeout=0.1, retry_on=("deadline-exceeded",), idempotent_methods=("*",))
    )
    c.start(0.0)
    c.timer(0.1)  # attempt 0 given up
    assert c.reply(0, OK, False, 0.2) == []  # its late reply: ignored
    assert c.reply(99, OK, False, 0.2) == []


def test_hedging_sends_a_copy_after_the_delay_and_the_first_answer_wins():
    policy = retries(idempotent_methods=("get*",))
    c, es = call(policy, hedging=HedgingPolicy(delay=0.02, max_attempts=3))
    (first,) = sends(c.start(0.0))
    assert c.next_timer() == 0.02
    (second,) = sends(c.timer(0.02))
    assert second.attempt == 1 and second.endpoint != first.endpoint
    assert not first.hedge and second.hedge  # sent for the delay: a hedge (its own metric)
    (third,) = sends(c.timer(0.04))
    assert third.endpoint not in (first.endpoint, second.endpoint)
    assert c.timer(0.06) == []  # max_attempts reached
    commands = c.reply(1, OK, False, 0.05)
    assert {x.attempt for x in commands if isinstance(x, Cancel)} == {0, 2}
    assert finish(commands).attempt == 1 and c.cancelled == 2
    assert in_flight_total(es) == 0


def test_a_retriable_hedge_failure_sends_the_next_copy_at_once():
    policy = retries(idempotent_methods=("*",), retry_on=("unavailable",))
    c, _ = call(policy, hedging=HedgingPolicy(delay=1.0, max_attempts=3))
    c.start(0.0)
    (copy,) = sends(c.reply(0, UNAVAILABLE, False, 0.01))  # no waiting for the delay
    assert copy.attempt == 1 and not copy.hedge  # sent because one failed: a retry
    done = finish(c.reply(1, StatusCode.NOT_FOUND, False, 0.02))  # not retriable: commits
    assert (done.attempt, done.error.status) == (1, StatusCode.NOT_FOUND)


def test_a_method_that_is_not_idempotent_is_never_hedged():
    policy = retries(idempotent_methods=("get*",))
    c, _ = call(policy, method="charge", hedging=HedgingPolicy(delay=0.02, max_attempts=3))
    c.start(0.0)
    assert c.next_timer() == 10.0 and sends(c.timer(0.5)) == []


def test_hedges_are_bounded_by_the_budget():
    budget = RetryBudgetTracker(RetryBudget(retry_ratio=0.0, min_retries_per_second=0.1, ttl=10))
    policy = retries(idempotent_methods=("*",))
    c, _ = call(policy, hedging=HedgingPolicy(delay=0.01, max_attempts=3), budget=budget)
    c.start(0.0)
    assert len(sends(c.timer(0.01))) == 1  # the budget's one
    assert sends(c.timer(0.02)) == []


def test_no_hedge_without_an_untried_endpoint():
    policy = retries(idempotent_methods=("*",))
    c, _ = call(policy, es=endpoints(1), hedging=HedgingPolicy(delay=0.01, max_attempts=3))
    c.start(0.0)
    assert sends(c.timer(0.01)) == []


# -- injected faults and mirroring (the route's plan) ----------------------------------


def test_an_injected_delay_holds_the_first_attempt_back_and_counts_against_the_deadline():
    es = endpoints()
    c = Call("get", 10.0, retries(), None, es, None, random.Random(2), 0.0, delay=0.05)
    assert c.start(0.0) == [] and c.next_timer() == 0.05
    assert c.timer(0.04) == [] and in_flight_total(es) == 0
    (send,) = c.timer(0.05)
    assert isinstance(send, Send) and send.attempt == 0 and send.deadline == 10.0


def test_a_delay_longer_than_the_deadline_ends_it_never_sent():
    c = Call("get", 1.0, retries(), None, endpoints(), None, random.Random(2), 0.0, delay=5.0)
    assert c.start(0.0) == [] and c.next_timer() == 1.0
    done = finish(c.timer(1.0))
    assert done.error is not None and done.error.status is StatusCode.DEADLINE_EXCEEDED
    assert done.error.delivery is Delivery.NOT_SENT and "faults.delay" in done.error.reason


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_an_injected_abort_ends_the_call_with_its_status_never_sent(delay: float):
    es, budget = endpoints(), RetryBudgetTracker(RetryBudget())
    mirror = endpoints(1)
    c = Call(
        "get", 10.0, retries(), None, es, budget, random.Random(2), 0.0,
        delay=delay, abort=StatusCode.RESOURCE_EXHAUSTED, mirror=mirror,
    )  # fmt: skip
    commands = c.start(0.0) if not delay else c.start(0.0) + c.timer(delay)
    (done,) = commands  # no Send, no Mirror
    assert isinstance(done, Finish) and done.error is not None
    assert done.error.status is StatusCode.RESOURCE_EXHAUSTED
    assert done.error.delivery is Delivery.NOT_SENT and "fault injection" in done.error.reason
    assert in_flight_total(es) == 0 and budget._window(0.0) == (0, 0)  # not a request sent


def test_a_mirror_copy_goes_with_the_first_attempt_only():
    mirror = EndpointSet("round_robin", None, random.Random(1))
    mirror.update({"shadow": {}}, 0.0)
    c = Call(
        "get", 10.0, retries(retry_on=("unavailable",)), None, endpoints(), None,
        random.Random(2), 0.0, mirror=mirror,
    )  # fmt: skip
    first = c.start(0.0)
    assert [type(x).__name__ for x in first] == ["Send", "Mirror"] and first[1].endpoint == "shadow"
    retry = c.reply(0, UNAVAILABLE, False, 0.0) + c.timer(0.0)
    assert [type(x).__name__ for x in retry] == ["Send"]  # a retry is not mirrored again
    assert mirror.endpoints["shadow"].in_flight == 0  # never reported to the mirror's set


def test_a_mirror_without_an_endpoint_is_a_copy_to_drop():
    empty = EndpointSet("round_robin", None, random.Random(1))
    c = Call("get", 10.0, retries(), None, endpoints(), None, random.Random(2), 0.0, mirror=empty)
    assert [x for x in c.start(0.0) if not isinstance(x, Send)] == [Mirror(None)]
