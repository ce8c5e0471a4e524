"""The endpoint set of one client socket: balancing, latency, and outlier ejection (Envoy's).

Rules this module keeps:

* Endpoints are the socket's verified upstreams (id = address, with its card's
  labels); :meth:`EndpointSet.update` follows the registry: new ones join
  healthy, vanished ones leave (the caller reports their attempts as lost).
* Every attempt is reported once: :meth:`started` when sent, :meth:`finished`
  with its :class:`Outcome` and latency. In-flight counts and the latency
  EWMA feed the balancer; outcomes feed outlier detection.
* Outlier detection is Envoy's, as Istio configures it:

  - an endpoint is ejected the moment ``consecutive_errors`` errors in a row
    are reached (``ERROR`` and ``CONNECT_FAILURE`` count; ``SUCCESS`` resets;
    ``CANCELLED``, a hedge abandoned, is neither);
  - only while 100 x (ejected + 1) / endpoints <= ``max_ejection_percent``,
    except that one may always be ejected while none is and
    ``always_eject_one`` holds (2-3 replicas are common, and 10% of 3 ejects
    nothing);
  - an ejection lasts min(``base_ejection_time`` x times ejected,
    ``effective_max_ejection_time``) and ends at the first ``interval`` sweep
    after it is over; a sweep also lowers by one the ejection count of an
    endpoint that stayed error-free for the whole interval;
  - when the healthy share is below ``min_health_percent``, balancing ignores
    ejections (Envoy's panic mode; 0 = never).

* Pure: ``now`` comes from the caller, randomness from the injected source.
  Sweeps run lazily from :meth:`pick` and :meth:`tick`, so an idle socket
  needs no timer.

Theory of operation: a pick filters the endpoints (not ejected, unless in
panic; not excluded, unless every candidate is) and hands the candidates to
the balancer. Ejections and returns are returned as :class:`Event` values and
counted in :attr:`EndpointSet.stats`.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Collection, Mapping

import attrs

from .._models import StatusCode
from ..policy.model import OutlierDetection
from . import balancers

#: Which reply statuses are errors when outlier detection is off (latency, counters).
DEFAULT_ERROR_CODES = OutlierDetection().error_codes
EWMA_DECAY = 10.0  # seconds: Finagle's peak EWMA decay time


class Outcome(enum.Enum):
    SUCCESS = "success"  # a reply whose status is not an error (OK, NOT_FOUND, ...)
    ERROR = "error"  # an error status, a per-try timeout, an endpoint lost in flight
    CONNECT_FAILURE = "connect-failure"  # could not be handed over: nothing sent
    CANCELLED = "cancelled"  # a hedge abandoned when another attempt answered


# plain names: looking a member up on its class, per request, is measurable
_SUCCESS, _ERROR, _CANCELLED = Outcome.SUCCESS, Outcome.ERROR, Outcome.CANCELLED


@attrs.frozen
class Event:
    """An ejection or a return, for logs and metrics."""

    kind: str  # "ejected" | "returned"
    endpoint: str
    until: float | None = None  # when an ejection may end (ejections only)
    times: int = 0  # how many times the endpoint has been ejected


_NOTHING: list[Event] = []  # what finished() returns without events: shared, never changed


class EndpointState:
    """What is known of one endpoint."""

    __slots__ = (
        "consecutive_errors",
        "ejected_until",
        "errors",
        "errors_this_interval",
        "ewma",
        "id",
        "in_flight",
        "labels",
        "last_sample",
        "requests",
        "times_ejected",
    )

    def __init__(self, endpoint: str, labels: Mapping[str, str]) -> None:
        self.id = endpoint
        self.labels = labels
        self.in_flight = 0
        self.ewma: float | None = None  # peak latency EWMA, seconds; None until measured
        self.last_sample = 0.0
        self.consecutive_errors = 0
        self.errors_this_interval = 0
        self.ejected_until: float | None = None
        self.times_ejected = 0
        self.requests = 0
        self.errors = 0

    def __repr__(self) -> str:
        state = "ejected" if self.ejected_until is not None else "healthy"
        return f"<EndpointState {self.id} {state} in_flight={self.in_flight}>"


class EndpointSet:
    """The endpoints of one client socket (module docstring)."""

    def __init__(
        self,
        balancer: str = "least_request",
        outlier: OutlierDetection | None = None,
        rng: random.Random | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        #: Told of every ejection and return, as it happens (the shell logs them).
        self.on_event = on_event
        self.endpoints: dict[str, EndpointState] = {}
        self._members: list[EndpointState] = []
        self._next_sweep: float | None = None
        self.stats: dict[str, int] = {"ejections": 0, "returns": 0, "panics": 0}
        self._balancer_name = ""
        self.configure(balancer, outlier)

    def configure(self, balancer: str, outlier: OutlierDetection | None) -> None:
        """A new policy: its balancer and outlier detection; what is known is kept."""
        if balancer != self._balancer_name:
            self._choose = balancers.make(balancer)
            self._balancer_name = balancer
        self.outlier = outlier
        self.error_codes = outlier.error_codes if outlier is not None else DEFAULT_ERROR_CODES
        if outlier is None:
            for state in self._members:  # nothing stays ejected without outlier detection
                state.ejected_until = None
            self._next_sweep = None

    # -- membership ----------------------------------------------------------------

    def update(self, members: Mapping[str, Mapping[str, str]], now: float) -> list[str]:
        """The endpoints now connected (address -> card labels); returns those that left."""
        gone = [e for e in self.endpoints if e not in members]
        for endpoint in gone:
            del self.endpoints[endpoint]
        for endpoint, labels in members.items():
            state = self.endpoints.get(endpoint)
            if state is None:
                self.endpoints[endpoint] = EndpointState(endpoint, labels)
            else:
                state.labels = labels
        self._members = list(self.endpoints.values())
        return gone

    def __len__(self) -> int:
        return len(self._members)

    # -- choosing --------------------------------------------------------------------

    def pick(self, now: float, exclude: Collection[str] = ()) -> str | None:
        """The endpoint for the next attempt, or None when none may take it."""
        members = self._members
        if not members:
            return None
        if len(members) == 1 and members[0].ejected_until is None and self._next_sweep is None:
            return members[0].id  # one endpoint, healthy: nothing to choose
        if self.outlier is not None:
            if self._next_sweep is not None and now >= self._next_sweep:
                self.tick(now)
            healthy = [s for s in members if s.ejected_until is None]
            if len(healthy) * 100 < self.outlier.min_health_percent * len(members):
                self.stats["panics"] += 1
                healthy = members  # panic: balance over all of them
        else:
            healthy = members
        if not healthy:
            return None
        candidates = [s for s in healthy if s.id not in exclude] if exclude else healthy
        if not candidates:
            candidates = healthy  # every candidate tried already: one may be tried again
        if len(candidates) == 1:
            return candidates[0].id
        return self._choose(candidates, self._rng).id

    # -- outcomes -----------------------------------------------------------------------

    def started(self, endpoint: str, now: float) -> None:
        state = self.endpoints.get(endpoint)
        if state is not None:
            state.in_flight += 1
            state.requests += 1

    def classify(self, status: StatusCode) -> Outcome:
        """A reply's outcome for outlier detection: an error only if its status is listed."""
        return _ERROR if status in self.error_codes else _SUCCESS

    def finished(self, endpoint: str, outcome: Outcome, latency: float, now: float) -> list[Event]:
        state = self.endpoints.get(endpoint)
        if state is None:
            return []  # it left meanwhile
        if state.in_flight > 0:
            state.in_flight -= 1
        if outcome is _SUCCESS:
            state.consecutive_errors = 0
            ewma = state.ewma  # the peak EWMA (_sample), its usual case inline
            if ewma is None or latency >= ewma:
                state.ewma = latency
                state.last_sample = now
            else:
                self._sample(state, latency, now)
            return _NOTHING
        if outcome is _CANCELLED:
            return _NOTHING
        state.errors += 1
        state.errors_this_interval += 1
        state.consecutive_errors += 1
        outlier = self.outlier
        if (
            outlier is None
            or state.ejected_until is not None
            or state.consecutive_errors < outlier.consecutive_errors
        ):
            return []
        return self._eject(state, now)

    def _sample(self, state: EndpointState, latency: float, now: float) -> None:
        """Peak EWMA: a slower sample is taken at once, a faster one decays in."""
        ewma = state.ewma
        if ewma is None or latency >= ewma:
            state.ewma = latency
        else:
            w = math.exp(-(now - state.last_sample) / EWMA_DECAY)
            state.ewma = ewma * w + latency * (1.0 - w)
        state.last_sample = now

    def _eject(self, state: EndpointState, now: float) -> list[Event]:
        outlier = self.outlier
        assert outlier is not None
        ejected = sum(1 for s in self._members if s.ejected_until is not None)
        within = 100 * (ejected + 1) <= outlier.max_ejection_percent * len(self._members)
        if not within and not (outlier.always_eject_one and ejected == 0):
            return []
        state.times_ejected += 1
        length = min(
            outlier.base_ejection_time * state.times_ejected, outlier.effective_max_ejection_time
        )
        state.ejected_until = now + length
        state.consecutive_errors = 0
        self.stats["ejections"] += 1
        if self._next_sweep is None:
            self._next_sweep = now + outlier.interval
        event = Event("ejected", state.id, state.ejected_until, state.times_ejected)
        if self.on_event is not None:
            self.on_event(event)
        return [event]

    # -- the interval sweep --------------------------------------------------------------

    def next_timer(self) -> float | None:
        return self._next_sweep

    def tick(self, now: float) -> list[Event]:
        """Run the interval sweep if one is due: returns, and multipliers lowered."""
        outlier = self.outlier
        if outlier is None or self._next_sweep is None or now < self._next_sweep:
            return []
        events = []
        for state in self._members:
            if state.ejected_until is not None:
                if now >= state.ejected_until:
                    state.ejected_until = None
                    self.stats["returns"] += 1
                    event = Event("returned", state.id, None, state.times_ejected)
                    if self.on_event is not None:
                        self.on_event(event)
                    events.append(event)
            elif state.times_ejected and not state.errors_this_interval:
                state.times_ejected -= 1
            state.errors_this_interval = 0
        busy = any(s.ejected_until is not None or s.times_ejected for s in self._members)
        self._next_sweep = now + outlier.interval if busy else None
        return events

    def ejected(self) -> list[str]:
        return [s.id for s in self._members if s.ejected_until is not None]
