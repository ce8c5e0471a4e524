"""The call state machine: one logical request, its attempts, retries, hedges and deadline.

Rules this module keeps:

* Events in, commands out (h11's manner): the shell reports what happened
  (:meth:`Call.start`, :meth:`reply`, :meth:`not_sent`, :meth:`lost`,
  :meth:`timer`, :meth:`endpoints_changed`) and executes the commands returned
  (:class:`Send`, :class:`Cancel`, :class:`Mirror`, :class:`Finish`). Nothing here sends, waits
  or reads a clock: ``now`` is given, randomness is injected.
* A call finishes exactly once; after that every event returns nothing.
  Every attempt sent is reported to the endpoint set exactly once (its
  reply, its loss, its per-try timeout, or its cancellation).
* Failures are judged by what is known of the request's delivery
  (:class:`~zmeshlib.Delivery`), never guessed: a retry that could run a
  request twice is made only for an idempotent method.
* Attempt numbers start at 0 (``msg.attempt`` at the server). A call makes at
  most ``1 + retries.attempts`` attempts (Istio's meaning), or
  ``hedging.max_attempts`` when hedged; every one after the first must fit the
  retry budget.

When a failed attempt is retried (all must hold: attempts left, the budget
allows one more, the condition is listed in ``retry_on``, and the method is
idempotent where the table says so):

===================================  ====================  ===========  ==========
what happened to the attempt         condition             idempotent   delivery
===================================  ====================  ===========  ==========
could not be handed over (not sent)  ``connect-failure``   not needed   NOT_SENT
reply ``UNAVAILABLE``                ``unavailable``       not needed   ANSWERED
reply ``APPLICATION``, retriable     ``retriable``         not needed   ANSWERED
reply with another status S          S (``internal``...)   not needed   ANSWERED
no reply within ``per_try_timeout``  ``deadline-exceeded``  required    UNKNOWN
its endpoint went away in flight     ``unavailable``        required    UNKNOWN
===================================  ====================  ===========  ==========

Why: a request never handed over never ran, so trying elsewhere is always
safe. ``UNAVAILABLE`` is the status a server (or the mesh in front of it)
answers when it did not run the handler, and a retriable ``APPLICATION`` error
is the handler's own statement; any other listed status is the policy
author's explicit choice (gRPC retries listed statuses the same way). After a
per-try timeout or a lost endpoint nobody knows whether the handler ran:
only a method declared idempotent may run twice.

Hedging (gRPC A6) replaces retries for an idempotent method when the service
has a hedging policy: attempt 0 goes out; every ``delay`` with no final reply,
another copy goes to an endpoint not tried yet (none left: no hedge); a reply
that the table above would retry does not end the call (the next hedge goes
at once); the first reply that is OK, or an error the table would not retry,
commits: every other attempt is cancelled and counted.

Injected faults and mirroring (the route's :class:`~zmeshlib.resilience.routing.Plan`,
decided before the call starts) come first, as Envoy's fault filter comes before
its router: an injected ``delay`` holds the first attempt back (the deadline
keeps running, so a delay longer than the time left ends in
``DEADLINE_EXCEEDED``, never sent); an injected ``abort`` then ends the call
with its status, delivery NOT_SENT, without a send, a budget deposit or a
mirror copy. A call that goes out sends one :class:`Mirror` copy with its
first attempt, to an endpoint of the mirror's set (None when it has none: the
shell counts the copy as dropped). Mirror copies are never retried, awaited or
reported to an endpoint set: their fate does not touch the call's.

The overall deadline ends the call: ``DEADLINE_EXCEEDED``, delivery UNKNOWN if
an attempt was ever handed over, else the call was never sent (``UNAVAILABLE``
when it waited for an endpoint the whole time). A retry whose backoff would end
after the deadline is not made: the call ends with the last failure.
"""

from __future__ import annotations

import random

from .._models import Delivery, StatusCode
from ..policy.model import HedgingPolicy, RetryPolicy, status_key
from .backoff import backoff_delay
from .budget import RetryBudgetTracker
from .endpoints import EndpointSet, Outcome

_OK = StatusCode.OK
_UNAVAILABLE = StatusCode.UNAVAILABLE
_APPLICATION = StatusCode.APPLICATION
_DEADLINE = StatusCode.DEADLINE_EXCEEDED


class Send:
    """Send attempt ``attempt`` of the request to ``endpoint``; it may wait until ``deadline``.
    ``hedge``: sent because the hedging delay passed (not because an attempt failed)."""

    __slots__ = ("attempt", "deadline", "endpoint", "hedge")

    def __init__(self, attempt: int, endpoint: str, deadline: float, hedge: bool = False) -> None:
        self.attempt = attempt
        self.endpoint = endpoint
        self.deadline = deadline
        self.hedge = hedge

    def __repr__(self) -> str:
        hedge = ", hedge" if self.hedge else ""
        return f"Send({self.attempt}, {self.endpoint!r}, {self.deadline:.3f}{hedge})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Send) and (self.attempt, self.endpoint, self.deadline) == (
            other.attempt,
            other.endpoint,
            other.deadline,
        )

    __hash__ = None  # type: ignore[assignment]


class Cancel:
    """Stop waiting for attempt ``attempt`` (a reply that comes later is dropped as late)."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"Cancel({self.attempt})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cancel) and self.attempt == other.attempt

    __hash__ = None  # type: ignore[assignment]


class Mirror:
    """Hand a shadow copy of the request to ``endpoint`` if its connection takes it at once;
    None: the mirror has no endpoint (drop the copy and count it)."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"Mirror({self.endpoint!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mirror) and self.endpoint == other.endpoint

    __hash__ = None  # type: ignore[assignment]


class CallFailure:
    """Why a call failed. ``attempt``: whose reply was the final error (the shell raises the
    error that reply stands for), None when the failure is local."""

    __slots__ = ("attempt", "delivery", "reason", "retriable", "status")

    def __init__(
        self,
        status: StatusCode,
        delivery: Delivery,
        reason: str,
        attempt: int | None = None,
        retriable: bool = False,
    ) -> None:
        self.status = status
        self.delivery = delivery
        self.reason = reason
        self.attempt = attempt
        self.retriable = retriable

    def __repr__(self) -> str:
        return f"CallFailure({self.status.name}, {self.delivery.name}, {self.reason!r})"


class Finish:
    """The call is over: the reply of ``attempt`` is the result, unless ``error`` says it failed."""

    __slots__ = ("attempt", "error")

    def __init__(self, attempt: int | None, error: CallFailure | None) -> None:
        self.attempt = attempt
        self.error = error

    def __repr__(self) -> str:
        return f"Finish({self.attempt}, {self.error!r})"


Command = Send | Cancel | Mirror | Finish


class _Attempt:
    __slots__ = ("deadline", "endpoint", "sent_at")

    def __init__(self, endpoint: str, sent_at: float, deadline: float) -> None:
        self.endpoint = endpoint
        self.sent_at = sent_at
        self.deadline = deadline


class Call:
    """One logical request (module docstring)."""

    __slots__ = (
        "_abort",
        "_backoff_until",
        "_budget",
        "_delay_until",
        "_endpoints",
        "_handed_over",
        "_hedge_at",
        "_hedging",
        "_idempotent",
        "_in_flight",
        "_last_failure",
        "_max_attempts",
        "_mirror",
        "_retries",
        "_rng",
        "_sent",
        "_tried",
        "_waiting_endpoint",
        "cancelled",
        "deadline",
        "finished",
        "method",
        "outcome",
    )

    def __init__(
        self,
        method: str,
        deadline: float,
        retries: RetryPolicy,
        hedging: HedgingPolicy | None,
        endpoints: EndpointSet,
        budget: RetryBudgetTracker | None,
        rng: random.Random,
        now: float,
        *,
        delay: float = 0.0,
        abort: StatusCode | None = None,
        mirror: EndpointSet | None = None,
    ) -> None:
        self.method = method
        self.deadline = deadline
        self._retries = retries
        self._idempotent = retries.is_idempotent(method) if retries.idempotent_methods else False
        self._hedging = hedging if hedging is not None and self._idempotent else None
        self._max_attempts = (
            self._hedging.max_attempts if self._hedging is not None else 1 + retries.attempts
        )
        self._endpoints = endpoints
        self._budget = budget
        self._rng = rng
        self._in_flight: dict[int, _Attempt] = {}
        self._tried: list[str] = []
        self._sent = 0  # attempts started
        self._handed_over = 0  # attempts that left this process (not reported not-sent)
        self._last_failure: CallFailure | None = None
        self._waiting_endpoint = False
        self._backoff_until: float | None = None
        self._hedge_at: float | None = None
        self._delay_until: float | None = now + delay if delay > 0.0 else None
        self._abort = abort
        self._mirror = mirror
        self.cancelled = 0  # attempts abandoned when another one answered
        self.finished = False
        self.outcome: Finish | None = None

    # -- events ----------------------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        if now >= self.deadline:
            return self._fail(_DEADLINE, Delivery.NOT_SENT, "the deadline passed before it started")
        if self._delay_until is not None:
            return []  # an injected delay: timer() goes on when it is over
        return self._go(now)

    def _go(self, now: float) -> list[Command]:
        """The request goes out, unless an injected abort ends it here."""
        if self._abort is not None:
            return self._fail(
                self._abort, Delivery.NOT_SENT, "aborted by fault injection (faults.abort)"
            )
        if self._budget is not None:
            self._budget.deposit(now)
        commands = self._send(now)
        if self._mirror is not None:
            commands.append(Mirror(self._mirror.pick(now)))
        return commands

    def reply(self, attempt: int, status: StatusCode, retriable: bool, now: float) -> list[Command]:
        """A reply envelope for ``attempt`` arrived (``retriable``: an APPLICATION error's flag)."""
        sent = self._in_flight.pop(attempt, None)
        if sent is None or self.finished:
            return []  # late, or for an attempt already given up
        endpoints = self._endpoints
        endpoints.finished(sent.endpoint, endpoints.classify(status), now - sent.sent_at, now)
        if status is _OK:
            return self._commit(attempt, None)
        if status is _UNAVAILABLE:
            condition = "unavailable"
        elif status is _APPLICATION:
            condition = "retriable" if retriable else ""
        else:
            condition = status_key(status)
        failure = CallFailure(
            status,
            Delivery.ANSWERED,
            f"attempt {attempt} was answered {status.name} by {sent.endpoint}",
            attempt,
            retriable,
        )
        if condition and condition in self._retries.retry_on:
            return self._failed(failure, now)
        return self._commit(attempt, failure)

    def not_sent(self, attempt: int, now: float) -> list[Command]:
        """Attempt ``attempt`` could not be handed over (no connection, a full queue)."""
        sent = self._in_flight.pop(attempt, None)
        if sent is None or self.finished:
            return []
        self._handed_over -= 1
        self._endpoints.finished(sent.endpoint, Outcome.CONNECT_FAILURE, 0.0, now)
        failure = CallFailure(
            _UNAVAILABLE, Delivery.NOT_SENT, f"attempt {attempt} could not reach {sent.endpoint}"
        )
        return self._failed(failure, now, condition="connect-failure")

    def lost(self, attempt: int, now: float) -> list[Command]:
        """The endpoint of ``attempt`` went away (or came back with a new key) in flight."""
        sent = self._in_flight.pop(attempt, None)
        if sent is None or self.finished:
            return []
        self._endpoints.finished(sent.endpoint, Outcome.ERROR, now - sent.sent_at, now)
        failure = CallFailure(
            _UNAVAILABLE,
            Delivery.UNKNOWN,
            f"attempt {attempt}: {sent.endpoint} went away while the request was in flight; it "
            "may or may not have run",
        )
        return self._failed(failure, now, condition="unavailable", needs_idempotent=True)

    def timer(self, now: float) -> list[Command]:
        """Due timers: the deadline, per-try timeouts, the hedge delay, the end of a backoff."""
        if self.finished:
            return []
        if now >= self.deadline:
            return self._expire(now)
        if self._delay_until is not None:
            if now < self._delay_until:
                return []
            self._delay_until = None
            return self._go(now)
        commands: list[Command] = []
        for attempt, sent in list(self._in_flight.items()):
            if now >= sent.deadline:
                del self._in_flight[attempt]
                self._endpoints.finished(sent.endpoint, Outcome.ERROR, now - sent.sent_at, now)
                commands.append(Cancel(attempt))
                failure = CallFailure(
                    _DEADLINE,
                    Delivery.UNKNOWN,
                    f"attempt {attempt} to {sent.endpoint} got no reply within its per-try "
                    f"timeout ({self._retries.per_try_timeout}s)",
                )
                commands += self._failed(
                    failure, now, condition="deadline-exceeded", needs_idempotent=True
                )
                if self.finished:
                    return commands
        if self._hedge_at is not None and now >= self._hedge_at:
            self._hedge_at = None
            commands += self._hedge(now)
        if self._backoff_until is not None and now >= self._backoff_until:
            self._backoff_until = None
            commands += self._send(now)
        return commands

    def endpoints_changed(self, now: float) -> list[Command]:
        """The endpoint set changed: a call waiting for an endpoint tries again."""
        if self.finished or not self._waiting_endpoint:
            return []
        self._waiting_endpoint = False
        return self._send(now)

    def next_timer(self) -> float | None:
        """When :meth:`timer` must be called next (monotonic), None once finished."""
        if self.finished:
            return None
        due = self.deadline
        if self._delay_until is not None and self._delay_until < due:
            return self._delay_until
        for sent in self._in_flight.values():
            if sent.deadline < due:
                due = sent.deadline
        if self._hedge_at is not None and self._hedge_at < due:
            due = self._hedge_at
        if self._backoff_until is not None and self._backoff_until < due:
            due = self._backoff_until
        return due

    @property
    def in_flight(self) -> dict[int, str]:
        """Attempt -> endpoint, for the attempts awaiting a reply."""
        return {n: a.endpoint for n, a in self._in_flight.items()}

    # -- decisions -----------------------------------------------------------------------

    def _send(self, now: float, hedge: bool = False) -> list[Command]:
        endpoint = self._endpoints.pick(now, self._tried)
        if endpoint is None:
            self._waiting_endpoint = True
            return []
        attempt = self._sent
        self._sent += 1
        self._handed_over += 1
        self._tried.append(endpoint)
        per_try = self._retries.per_try_timeout
        deadline = self.deadline if per_try is None else min(self.deadline, now + per_try)
        self._in_flight[attempt] = _Attempt(endpoint, now, deadline)
        self._endpoints.started(endpoint, now)
        hedging = self._hedging
        if hedging is not None and self._sent < self._max_attempts:
            self._hedge_at = now + hedging.delay
        return [Send(attempt, endpoint, deadline, hedge)]

    def _hedge(self, now: float, hedge: bool = True) -> list[Command]:
        """Another copy, to an endpoint not tried yet, if the budget allows one (``hedge``:
        for the delay; False: for a failed attempt, a retry)."""
        if self._sent >= self._max_attempts:
            return []
        if self._endpoints.pick(now, self._tried) in self._tried:
            return []  # every endpoint has a copy already
        if self._budget is not None and not self._budget.try_withdraw(now):
            return []
        return self._send(now, hedge)

    def _failed(
        self,
        failure: CallFailure,
        now: float,
        *,
        condition: str = "",
        needs_idempotent: bool = False,
    ) -> list[Command]:
        """An attempt failed in a way the table allows to retry (``condition`` checked here
        for the local failures): try again, or end the call with this failure."""
        self._last_failure = failure
        if condition and condition not in self._retries.retry_on:
            return self._end_unless_in_flight(failure)
        if needs_idempotent and not self._idempotent:
            return self._end_unless_in_flight(failure)
        if self._hedging is not None:  # the next copy at once, else wait for the others
            commands = self._hedge(now, hedge=False)
            if commands or self._in_flight:
                return commands
            return self._commit(failure.attempt, failure, because="no copy left to send")
        if self._sent >= self._max_attempts:
            return self._commit(failure.attempt, failure, because=f"{self._sent} attempts made")
        if self._budget is not None and not self._budget.try_withdraw(now):
            return self._commit(failure.attempt, failure, because="the retry budget is spent")
        backoff = self._retries.backoff
        delay = backoff_delay(
            self._sent - 1, backoff.base_interval, backoff.max_interval, self._rng
        )
        if now + delay >= self.deadline:
            return self._commit(failure.attempt, failure, because="no time left for a retry")
        self._backoff_until = now + delay
        return []

    def _end_unless_in_flight(self, failure: CallFailure) -> list[Command]:
        if self._in_flight:  # hedging: another copy may still answer
            return []
        return self._commit(failure.attempt, failure)

    def _expire(self, now: float) -> list[Command]:
        if self._delay_until is not None:
            return self._fail(
                _DEADLINE,
                Delivery.NOT_SENT,
                "an injected delay (faults.delay) outlasted the deadline",
            )
        if self._handed_over > 0:
            last = self._last_failure
            if not self._in_flight and last is not None and last.delivery is Delivery.ANSWERED:
                return self._commit(last.attempt, last, because="the deadline passed")
            return self._fail(
                _DEADLINE,
                Delivery.UNKNOWN,
                f"no reply within the deadline after {self._sent} attempt(s)",
            )
        if self._waiting_endpoint and self._last_failure is None:
            return self._fail(
                _UNAVAILABLE, Delivery.NOT_SENT, "no endpoint was available before the deadline"
            )
        last = self._last_failure
        reason = last.reason if last is not None else "not sent before the deadline"
        status = _UNAVAILABLE if last is not None else _DEADLINE
        return self._fail(status, Delivery.NOT_SENT, reason)

    def _fail(self, status: StatusCode, delivery: Delivery, reason: str) -> list[Command]:
        return self._commit(None, CallFailure(status, delivery, reason))

    def _commit(
        self, attempt: int | None, failure: CallFailure | None, because: str = ""
    ) -> list[Command]:
        """End the call: cancel what is still in flight, then Finish."""
        self.finished = True
        commands: list[Command] = []
        if self._in_flight:
            endpoints = self._endpoints
            for other, sent in self._in_flight.items():
                endpoints.finished(sent.endpoint, Outcome.CANCELLED, 0.0, 0.0)
                commands.append(Cancel(other))
            self.cancelled += len(self._in_flight)
            self._in_flight.clear()
        if failure is not None and because:
            failure.reason = f"{failure.reason} ({because})"
        self.outcome = Finish(attempt, failure)
        commands.append(self.outcome)
        return commands
