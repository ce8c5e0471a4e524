"""The endpoint sets of one REQ socket: its service's, each subset's, each mirror's.

Rules this module keeps:

* Every subset a request is sent to has an endpoint set of its own, as Istio
  makes each DestinationRule subset an Envoy cluster of its own: balancing,
  in-flight counts, latency and outlier ejection are kept within the subset.
  A server in two subsets is known to each separately.
* A mirror to another service has its own set, over the upstreams the socket
  connects for that service only (``MeshSocket._also``); a mirror to a subset
  of the socket's own service uses that subset's set.
* Sets follow the upstreams (:meth:`Destinations.update`) and the policy
  (:meth:`Destinations.configure`): a subset redefined or gone is made again
  on next use, from the labels the policy now gives it.

Theory of operation: the client asks for the set of a request's plan
(:meth:`for_subset`, :meth:`for_mirror`) and hands it to the call state
machine; nothing here chooses an endpoint (the sets and their balancers do).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from ..policy.model import MirrorSpec, Subset
from ..resilience import EndpointSet
from ..resilience.endpoints import Event
from .base import Upstream
from .traffic import ServiceTraffic

Members = dict[str, Mapping[str, str]]  # address -> card labels


class Destinations:
    """The endpoint sets of one REQ socket (module docstring)."""

    def __init__(self, rng: random.Random, on_event: Callable[[Event], None]) -> None:
        self._rng = rng
        self._on_event = on_event
        #: The whole service: what a request without a split goes to.
        self.all = EndpointSet(rng=rng, on_event=on_event)
        self._subsets: dict[str, tuple[Subset, EndpointSet]] = {}
        self._mirrors: dict[tuple[str, str | None], tuple[Subset | None, EndpointSet]] = {}
        self._service = ""
        self._primary: Members = {}  # the service's upstreams
        self._others: dict[str, Members] = {}  # mirror service -> its upstreams

    def update(
        self, service: str, upstreams: Mapping[str, Upstream], also_only: Mapping[str, str]
    ) -> None:
        """The upstreams changed: ``also_only`` says which belong to a mirror service only."""
        now = time.monotonic()
        self._service = service
        primary: Members = {}
        others: dict[str, Members] = {}
        for address, up in upstreams.items():
            labels = up.card.labels if up.card else {}
            other = also_only.get(address)
            if other is None:
                primary[address] = labels
            else:
                others.setdefault(other, {})[address] = labels
        self._primary, self._others = primary, others
        self.all.update(primary, now)
        for subset, es in self._subsets.values():
            es.update(_within(primary, subset), now)
        for (other, _), (chosen, mirror_es) in self._mirrors.items():
            mirror_es.update(_within(self._members(other), chosen), now)

    def configure(self, traffic: ServiceTraffic) -> None:
        """A new policy: its balancer and outlier detection; subsets as it defines them."""
        spec = traffic.spec
        self.all.configure(spec.load_balancer, spec.outlier_detection)
        for name, (subset, es) in list(self._subsets.items()):
            if traffic.subsets.get(name) != subset:
                del self._subsets[name]  # redefined or gone: made again on next use
            else:
                es.configure(spec.load_balancer, spec.outlier_detection)
        self._mirrors.clear()  # made again on next use, from the new policy

    def for_subset(self, traffic: ServiceTraffic, name: str | None) -> EndpointSet:
        """The set of subset ``name`` of the service (None: the whole service)."""
        if name is None:
            return self.all
        entry = self._subsets.get(name)
        if entry is None:
            subset = traffic.subsets[name]  # the policy checked that it is defined
            es = self._new(traffic)
            es.update(_within(self._primary, subset), time.monotonic())
            entry = self._subsets[name] = (subset, es)
        return entry[1]

    def for_mirror(self, traffic: ServiceTraffic, mirror: MirrorSpec) -> EndpointSet:
        """Where a mirror's copies go: a subset of this service, or another service's."""
        if mirror.service == self._service and mirror.subset is not None:
            return self.for_subset(traffic, mirror.subset)
        key = (mirror.service, mirror.subset)
        entry = self._mirrors.get(key)
        if entry is None:
            found = traffic.policy.services.get(mirror.service)
            subset = found.subsets[mirror.subset] if found and mirror.subset else None
            es = self._new(traffic)
            es.update(_within(self._members(mirror.service), subset), time.monotonic())
            entry = self._mirrors[key] = (subset, es)
        return entry[1]

    def sets(self) -> list[EndpointSet]:
        """Every endpoint set: the service's, each subset's, each mirror's."""
        return [self.all, *(es for _, es in self._subsets.values()),
                *(es for _, es in self._mirrors.values())]  # fmt: skip

    def empty_subset(self, name: str) -> Subset | None:
        """Subset ``name`` when it is known and has no endpoint (for error messages)."""
        entry = self._subsets.get(name)
        return entry[0] if entry is not None and not len(entry[1]) else None

    def _members(self, service: str) -> Members:
        return self._primary if service == self._service else self._others.get(service, {})

    def _new(self, traffic: ServiceTraffic) -> EndpointSet:
        spec = traffic.spec
        return EndpointSet(
            spec.load_balancer, spec.outlier_detection, rng=self._rng, on_event=self._on_event
        )


def _within(members: Members, subset: Subset | None) -> Members:
    if subset is None:
        return members
    return {a: labels for a, labels in members.items() if subset.selects(labels)}
