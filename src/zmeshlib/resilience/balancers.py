"""Load balancers: which endpoint of the candidates takes the next attempt.

Rules this module keeps:

* A balancer chooses among the candidates the endpoint set gives it (healthy,
  not excluded); it never sees an ejected endpoint unless the set is in panic.
* Pure: state (a cursor) lives on the balancer object, randomness comes from
  the random source passed in.

===================  ==========================================================
name                 chooses
===================  ==========================================================
``round_robin``      each candidate in turn (a cursor over the candidates)
``random``           uniformly at random
``least_request``    of two distinct candidates drawn at random, the one with
                     fewer requests in flight; a tie is broken at random (the
                     power of two choices, Envoy's default)
``peak_ewma``        of two drawn at random, the lower cost = latency EWMA x
                     (in flight + 1) (Finagle's); an endpoint never measured
                     costs as much as the fastest measured one, so it is tried
                     soon without being flooded
===================  ==========================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoints import EndpointState

Choose = Callable[[Sequence["EndpointState"], random.Random], "EndpointState"]


class RoundRobin:
    def __init__(self) -> None:
        self._cursor = 0

    def __call__(self, candidates: Sequence[EndpointState], rng: random.Random) -> EndpointState:
        self._cursor = (self._cursor + 1) % len(candidates)
        return candidates[self._cursor]


def uniform(candidates: Sequence[EndpointState], rng: random.Random) -> EndpointState:
    return candidates[rng.randrange(len(candidates))]


def _two(candidates: Sequence[EndpointState], rng: random.Random) -> tuple[EndpointState, ...]:
    i = rng.randrange(len(candidates))
    j = rng.randrange(len(candidates) - 1)
    if j >= i:
        j += 1
    return candidates[i], candidates[j]


def least_request(candidates: Sequence[EndpointState], rng: random.Random) -> EndpointState:
    if len(candidates) == 1:
        return candidates[0]
    a, b = _two(candidates, rng)
    if a.in_flight != b.in_flight:
        return a if a.in_flight < b.in_flight else b
    return a if rng.random() < 0.5 else b


def peak_ewma(candidates: Sequence[EndpointState], rng: random.Random) -> EndpointState:
    if len(candidates) == 1:
        return candidates[0]
    a, b = _two(candidates, rng)
    measured = [c.ewma for c in candidates if c.ewma is not None]
    floor = min(measured) if measured else 0.0
    cost_a = (floor if a.ewma is None else a.ewma) * (a.in_flight + 1)
    cost_b = (floor if b.ewma is None else b.ewma) * (b.in_flight + 1)
    if cost_a != cost_b:
        return a if cost_a < cost_b else b
    return least_request((a, b), rng)


def make(name: str) -> Choose:
    """A fresh balancer of that name (``round_robin`` keeps a cursor)."""
    if name == "round_robin":
        return RoundRobin()
    return BALANCERS[name]


BALANCERS: Mapping[str, Choose] = {
    "random": uniform,
    "least_request": least_request,
    "peak_ewma": peak_ewma,
    "round_robin": RoundRobin(),  # make() gives each endpoint set its own cursor
}
