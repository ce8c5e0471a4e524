"""The call state machine's invariants under any sequence of events (hypothesis.stateful)."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zmeshlib import StatusCode
from zmeshlib.policy.model import Backoff, HedgingPolicy, OutlierDetection, RetryBudget, RetryPolicy
from zmeshlib.resilience import Call, Cancel, EndpointSet, Finish, RetryBudgetTracker, Send

STATUSES = [
    StatusCode.OK,
    StatusCode.UNAVAILABLE,
    StatusCode.INTERNAL,
    StatusCode.APPLICATION,
    StatusCode.NOT_FOUND,
    StatusCode.DEADLINE_EXCEEDED,
]


class CallMachine(RuleBasedStateMachine):
    @initialize(
        attempts=st.integers(0, 4),
        per_try=st.one_of(st.none(), st.floats(0.01, 2.0)),
        hedge=st.one_of(st.none(), st.floats(0.005, 0.5)),
        idempotent=st.booleans(),
        budget=st.booleans(),
        outlier=st.booleans(),
        n=st.integers(0, 4),
        seed=st.integers(0, 2**16),
    )
    def start(self, attempts, per_try, hedge, idempotent, budget, outlier, n, seed):
        self.now = 0.0
        self.es = EndpointSet(
            "least_request",
            OutlierDetection(consecutive_errors=1, max_ejection_percent=50) if outlier else None,
            random.Random(seed),
        )
        self.es.update({f"e{i}": {} for i in range(n)}, 0.0)
        policy = RetryPolicy(
            attempts=attempts,
            per_try_timeout=per_try,
            retry_on=("connect-failure", "unavailable", "deadline-exceeded", "internal"),
            backoff=Backoff(0.01, 0.1),
            budget=None,
            idempotent_methods=("*",) if idempotent else (),
        )
        hedging = HedgingPolicy(hedge, 3) if hedge is not None else None
        self.max_attempts = 3 if (hedging is not None and idempotent) else 1 + attempts
        tracker = RetryBudgetTracker(RetryBudget(0.5, 1.0, 10.0)) if budget else None
        self.call = Call("m", 5.0, policy, hedging, self.es, tracker, random.Random(seed), 0.0)
        self.sent: set[int] = set()
        self.finishes = 0
        self.after_finish: list[object] = []
        self.apply(self.call.start(0.0))

    def apply(self, commands: list[object]) -> None:
        if self.finishes:
            self.after_finish += commands
        for command in commands:
            if isinstance(command, Send):
                assert command.attempt not in self.sent
                self.sent.add(command.attempt)
                assert command.deadline <= self.call.deadline + 1e-9
            elif isinstance(command, Finish):
                self.finishes += 1
            else:
                assert isinstance(command, Cancel)

    @precondition(lambda self: self.call.in_flight)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), retriable=st.booleans())
    def reply(self, data, status, retriable):
        attempt = data.draw(st.sampled_from(sorted(self.call.in_flight)))
        self.apply(self.call.reply(attempt, status, retriable, self.now))

    @precondition(lambda self: self.call.in_flight)
    @rule(data=st.data(), lost=st.booleans())
    def not_sent_or_lost(self, data, lost):
        attempt = data.draw(st.sampled_from(sorted(self.call.in_flight)))
        event = self.call.lost if lost else self.call.not_sent
        self.apply(event(attempt, self.now))

    @rule(attempt=st.integers(0, 8), status=st.sampled_from(STATUSES))
    def stray_reply(self, attempt, status):
        if attempt not in self.call.in_flight:
            assert self.call.reply(attempt, status, False, self.now) == []

    @precondition(lambda self: not self.call.finished)
    @rule()
    def timer(self):
        due = self.call.next_timer()
        assert due is not None
        self.now = max(self.now, due)
        self.apply(self.call.timer(self.now))

    @rule(n=st.integers(0, 4))
    def endpoints_change(self, n):
        gone = self.es.update({f"e{i}": {} for i in range(n)}, self.now)
        for attempt, endpoint in sorted(self.call.in_flight.items()):
            if endpoint in gone:
                self.apply(self.call.lost(attempt, self.now))
        self.apply(self.call.endpoints_changed(self.now))

    @invariant()
    def bounded_and_consistent(self):
        assert len(self.sent) <= self.max_attempts
        assert self.finishes <= 1
        assert self.after_finish == []  # nothing after Finish
        if self.call.finished:
            assert self.finishes == 1 and self.call.in_flight == {}
            assert self.call.next_timer() is None
        else:
            assert self.call.next_timer() is not None and self.call.next_timer() >= self.now - 1e-9
        # every attempt sent and not yet given an outcome is what the endpoints count in flight
        counted = sum(s.in_flight for s in self.es.endpoints.values())
        live = sum(1 for e in self.call.in_flight.values() if e in self.es.endpoints)
        assert counted == live

    def teardown(self):
        # run the clock out: every call finishes by its deadline
        for _ in range(1000):
            if self.call.finished:
                break
            self.now = max(self.now, self.call.next_timer() or self.now)
            self.apply(self.call.timer(self.now))
        assert self.call.finished and self.finishes == 1


TestCallMachine = CallMachine.TestCase
TestCallMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
