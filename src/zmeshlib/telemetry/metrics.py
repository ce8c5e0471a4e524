"""The mesh's OpenTelemetry metrics.

Rules this module keeps:

* Instruments are created once per Mesh, never per message; observable
  instruments read counters the mesh keeps anyway, so observing costs the hot
  path nothing.
* Without an OpenTelemetry SDK configured, the API's no-op provider makes all
  of this free.
* Callbacks hold the Mesh weakly: metrics never keep a closed mesh alive, and
  report nothing for it once it is closed.

=================================  ===========  =========================================
instrument                         kind         attributes
=================================  ===========  =========================================
``zmeshlib.policy.active``         gauge        ``revision``, ``workload``: 1 for the
                                                policy in force
``zmeshlib.policy.updates``        counter      ``revision`` (the new one)
``zmeshlib.policy.rejected``       counter      ``path``: a watched file that failed to load
``zmeshlib.policy.refused``        counter      ``reason`` (``not-a-signer``, ``older``,
                                                ``untrusted``...): a signed policy document
                                                ``follow_policy`` refused
``zmeshlib.handshakes``            obs counter  ``outcome`` (verified, anonymous,
                                                unknown-key, mechanism, refused...)
``zmeshlib.faults.injected``       obs counter  ``destination.service``, ``fault``
                                                (``delay``, ``abort``): requests given an
                                                injected fault (``traffic.<svc>.faults``)
``zmeshlib.mirror.copies``         obs counter  ``destination.service``, ``outcome``
                                                (``sent``, ``dropped``): mirror copies
                                                handed over, or dropped rather than queued
``rpc.client.call.duration``       histogram    seconds per call, retries included:
                                                ``rpc.system.name``, ``rpc.service``,
                                                ``rpc.method``, ``rpc.response.status_code``,
                                                ``error.type`` on failure
``rpc.server.call.duration``       histogram    seconds per request handled, same labels
``messaging.client.sent.messages`` obs counter  ``messaging.system`` (``zeromq``),
                                                ``messaging.operation.name`` (``publish``,
                                                ``push``), ``messaging.destination.name``
                                                (the service, never the topic)
``messaging.client.consumed.       obs counter  the same (``receive``), per message a SUB
messages``                                      or PULL hands the application
``messaging.process.duration``     histogram    seconds inside ``msg.process()``, with
                                                ``error.type`` when it raised
``zmeshlib.dropped.messages``      obs counter  ``zmeshlib.socket.kind``, ``zmeshlib.service``,
                                                ``reason``: frames dropped and counted
``zmeshlib.rpc.client.retries``    obs counter  ``rpc.service``: attempts after one failed
``zmeshlib.rpc.client.hedges``     obs counter  ``rpc.service``: attempts sent because the
                                                hedging delay passed
``zmeshlib.outlier.ejections``     obs counter  ``rpc.service``: endpoints ejected
``zmeshlib.outlier.ejected``       obs gauge    ``rpc.service``: endpoints ejected now
``zmeshlib.circuit.open``          obs gauge    ``rpc.service``: pools with every slot taken
``zmeshlib.circuit.refusals``      obs counter  ``rpc.service``: calls refused by a full
                                                ``pool`` (RESOURCE_EXHAUSTED, never sent)
``zmeshlib.authz.denials``         obs counter  ``rpc.service``, ``zmeshlib.policy``: calls
                                                a server's policy denied
=================================  ===========  =========================================

The observable ones read the counters every socket keeps anyway (its
``stats``) when the reader collects; a closed socket's counts stay in the
totals, so the counters never go down.

The request and message instruments are recorded only while a metrics SDK
is there (a ``meter_provider=`` given, or a global one set) and
``telemetry.metrics.enabled`` holds: otherwise not even their label sets are
built. Labels are bounded: a method name joins the labels only among the
first :data:`MAX_METHODS` a Mesh has seen (a server's methods come from the
network); later ones are reported as ``_OTHER``, as the HTTP conventions do
for unknown methods. Topics are never labels.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

# The API's provider until an SDK's is set globally: it records nothing. Not public API:
# tests/sockets/test_metrics.py checks that it is what the API hands out unset.
from opentelemetry.metrics import _internal as _metrics_internal  # its _METER_PROVIDER
from opentelemetry.metrics._internal import _ProxyMeterProvider as _PROXY

from .._models import StatusCode
from .istio import IstioMetrics

if TYPE_CHECKING:
    from ..sockets.mesh import Mesh

_SOCKET_COUNTERS = (
    ("messaging.client.sent.messages", "{message}", "messages sent"),
    ("messaging.client.consumed.messages", "{message}", "messages handed to the application"),
    ("zmeshlib.dropped.messages", "{message}", "frames dropped and counted, by reason"),
    ("zmeshlib.rpc.client.retries", "{attempt}", "attempts after one failed"),
    ("zmeshlib.rpc.client.hedges", "{attempt}", "attempts sent because the hedging delay passed"),
    ("zmeshlib.outlier.ejections", "{ejection}", "endpoints ejected by outlier detection"),
    ("zmeshlib.circuit.refusals", "{call}", "calls refused by a full pool (never sent)"),
    ("zmeshlib.authz.denials", "{call}", "calls a server's authorization denied, by policy"),
)


def _messaging(operation: str, service: str) -> tuple[tuple[str, str], ...]:
    return (
        ("messaging.destination.name", service),
        ("messaging.operation.name", operation),
        ("messaging.system", "zeromq"),
    )


def _view(sock: Any) -> tuple[str, Any, Any, Any]:
    """What a socket's counts are read from, without the socket: its kind, its core (which
    knows its service), its drops and its counts. Kept past the socket's collection."""
    return sock.kind.name, sock.core, sock.drops, sock.counts


def _socket_counts(
    view: tuple[str, Any, Any, Any],
) -> Iterator[tuple[str, tuple[tuple[str, str], ...], int]]:
    """(instrument, labels, value) for what one socket counted."""
    kind, core, drops, sock_counts = view
    service = core.service
    # copies, each made in one step: the socket's own thread may count on meanwhile
    for reason, n in dict(drops.counts).items():
        yield (
            "zmeshlib.dropped.messages",
            (("reason", reason), ("zmeshlib.service", service), ("zmeshlib.socket.kind", kind)),
            n,
        )
    counts = dict(sock_counts)
    # messages are counted in ints by the sockets, not through the SDK per message: an SDK
    # counter's add() costs more than a whole publication
    sent = counts.get("messages_sent")
    if sent:
        operation = "publish" if kind == "PUB" else "push"
        yield "messaging.client.sent.messages", _messaging(operation, service), sent
    consumed = getattr(core, "consumed", 0)
    if consumed:
        yield "messaging.client.consumed.messages", _messaging("receive", service), consumed
    for key, name in (
        ("retries", "zmeshlib.rpc.client.retries"),
        ("hedges", "zmeshlib.rpc.client.hedges"),
        ("outlier_ejected", "zmeshlib.outlier.ejections"),
        ("circuit_refused", "zmeshlib.circuit.refusals"),
    ):
        if counts.get(key):
            yield name, (("rpc.service", service),), counts[key]
    for policy, n in dict(getattr(core, "denied_by", {})).items():
        yield "zmeshlib.authz.denials", (("rpc.service", service), ("zmeshlib.policy", policy)), n


class _Observed:
    """The observable instruments of one meter provider, over every Mesh that uses it.

    An SDK keeps the first instrument of a name and ignores a second one's callbacks, so
    the instruments are made once per provider and each callback asks every live Mesh;
    observations with the same labels are summed (one process, one figure).
    """

    def __init__(self, meter: Any) -> None:
        self.members: weakref.WeakSet[MeshMetrics] = weakref.WeakSet()
        for name, unit, description in _SOCKET_COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[self._over(_socket_getter(name))], unit=unit,
                description=description,
            )  # fmt: skip
        for kind, name, unit, description, get in _MESH_OBSERVABLES:
            make = (
                meter.create_observable_gauge
                if kind == "gauge"
                else meter.create_observable_counter
            )
            make(name, callbacks=[self._over(get)], unit=unit, description=description)

    def _over(self, get: Callable[[Any], Iterable[Observation]]) -> Any:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[tuple[tuple[str, Any], ...], float] = {}
            for member in list(self.members):
                for point in get(member):
                    key = tuple(sorted((point.attributes or {}).items()))
                    totals[key] = totals.get(key, 0) + point.value
            return [Observation(v, dict(k)) for k, v in totals.items()]

        return observe


def _socket_getter(name: str) -> Callable[[Any], Iterable[Observation]]:
    def get(member: Any) -> Iterable[Observation]:
        return member._socket_observations(name)

    return get


_OBSERVED: weakref.WeakKeyDictionary[Any, _Observed] = weakref.WeakKeyDictionary()


def _observed(provider: Any, meter: Any) -> _Observed:
    found = _OBSERVED.get(provider)
    if found is None:
        found = _OBSERVED[provider] = _Observed(meter)
    return found


_MESH_OBSERVABLES: tuple[tuple[str, str, str, str, Callable[[Any], Iterable[Observation]]], ...] = (
    ("gauge", "zmeshlib.outlier.ejected", "{endpoint}",
     "endpoints ejected now, by destination service", lambda m: m._ejected(None)),
    ("gauge", "zmeshlib.circuit.open", "{pool}",
     "circuit breakers (a service's pool, per subset) with every slot taken now",
     lambda m: m._open_circuits()),
    ("gauge", "zmeshlib.policy.active", "", "1 for the revision of the policy in force",
     lambda m: m._active(None)),
    ("counter", "zmeshlib.handshakes", "{handshake}",
     "handshake decisions of this workload's ZAP handler, by outcome",
     lambda m: m._handshakes(None)),
    ("counter", "zmeshlib.faults.injected", "{request}",
     "requests given an injected fault (traffic.<service>.faults)", lambda m: m._traffic("fault")),
    ("counter", "zmeshlib.mirror.copies", "{request}",
     "mirror copies handed over (sent) or dropped rather than queued",
     lambda m: m._traffic("mirror")),
)  # fmt: skip

#: Distinct method names a Mesh's metrics label; the rest are ``_OTHER``.
MAX_METHODS = 256


class MeshMetrics:
    """The instruments of one Mesh."""

    def __init__(self, mesh: Mesh, meter_provider: Any = None) -> None:
        from .. import __version__

        self._explicit = meter_provider is not None
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("zmeshlib", __version__)
        self._mesh = weakref.ref(mesh)
        self._in_force = mesh._in_force
        self._labels: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._seen: tuple[object, object, bool] = (None, None, False)  # recording()'s answer
        self._methods: set[str] = set()
        self.client_duration = meter.create_histogram(
            "rpc.client.call.duration", unit="s", description="calls made, retries included"
        )
        self.server_duration = meter.create_histogram(
            "rpc.server.call.duration", unit="s", description="requests handled"
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="time in msg.process()"
        )
        self._closed_totals: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        #: What each live socket's counts are read from (:func:`_view`), by id.
        self._views: dict[int, tuple[str, Any, Any, Any]] = {}
        self._views_lock = threading.Lock()
        self.policy_updates = meter.create_counter(
            "zmeshlib.policy.updates", unit="{update}", description="policy swaps"
        )
        self.policy_rejected = meter.create_counter(
            "zmeshlib.policy.rejected",
            unit="{file}",
            description="watched policy files that failed to load (the last good policy stays)",
        )
        self.policy_refused = meter.create_counter(
            "zmeshlib.policy.refused",
            unit="{document}",
            description="signed policy documents follow_policy refused, by reason "
            "(the policy in force stays)",
        )
        _observed(provider, meter).members.add(self)
        self._istio = IstioMetrics(meter, str(mesh.spiffe_id or ""), mesh.labels)
        self.istio_now: IstioMetrics | None = None  # istio()'s answer, kept with recording()'s

    def istio(self) -> IstioMetrics | None:
        """Istio's instruments while they are recorded: :meth:`recording`, and the policy's
        ``telemetry.metrics.istio_compatible``. (A hot path that has just asked
        :meth:`recording` reads :attr:`istio_now`, which that call keeps current.)"""
        return self.istio_now if self.recording() else None

    def topic_depth(self) -> int:
        return int(self._in_force.policy.telemetry.metrics.topic_depth)

    def socket_opened(self, sock: Any) -> None:
        """Follow a new socket's counts, until it is closed or collected."""
        key = id(sock)  # unique while it lives; its finalizer runs before the id is reused
        with self._views_lock:
            self._views[key] = _view(sock)
        weakref.finalize(sock, self._fold, key)

    def socket_closed(self, sock: Any) -> None:
        """Keep a closing socket's counts in the totals (counters never go down)."""
        self._fold(id(sock))

    def _fold(self, key: int) -> None:
        with self._views_lock:
            view = self._views.pop(key, None)
            if view is not None:
                for name, labels, value in _socket_counts(view):
                    self._closed_totals[name, labels] += value

    def _socket_observations(self, name: str) -> list[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        totals: Counter[tuple[tuple[str, str], ...]] = Counter()
        with self._views_lock:
            for (kind, labels), value in self._closed_totals.items():
                if kind == name:
                    totals[labels] += value
            views = list(self._views.values())
        for view in views:
            for kind, labels, value in _socket_counts(view):
                if kind == name:
                    totals[labels] += value
        return [Observation(v, dict(labels)) for labels, v in sorted(totals.items())]

    def _ejected(self, _options: CallbackOptions) -> Iterable[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        by: Counter[str] = Counter()
        for sock in list(mesh._sockets):
            destinations = getattr(sock, "destinations", None)
            if destinations is not None:
                by[sock.service] += sum(len(es.ejected()) for es in destinations.sets())
        return [Observation(n, {"rpc.service": s}) for s, n in sorted(by.items())]

    def _open_circuits(self) -> list[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        return [
            Observation(n, {"rpc.service": service})
            for service, n in sorted(mesh._traffic.open_circuits().items())
        ]

    def recording(self) -> bool:
        """Whether request and message instruments are recorded (module docstring); the
        answer is kept while the policy and the global provider stay the same objects."""
        policy = self._in_force.policy
        provider = _metrics_internal._METER_PROVIDER
        if policy is self._seen[0] and provider is self._seen[1]:
            return self._seen[2]
        answer = policy.telemetry.metrics.enabled and (
            self._explicit or not isinstance(metrics.get_meter_provider(), _PROXY)
        )
        self._seen = (policy, provider, answer)
        self.istio_now = (
            self._istio if answer and policy.telemetry.metrics.istio_compatible else None
        )
        return answer

    def rpc_labels(self, service: str, method: str, status: StatusCode) -> dict[str, Any]:
        """The labels of one call or request; the same dict for the same labels."""
        if method not in self._methods:
            if len(self._methods) >= MAX_METHODS:
                method = "_OTHER"
            else:
                self._methods.add(method)
        key = (service, method, status)
        labels = self._labels.get(key)
        if labels is None:
            labels = {
                "rpc.system.name": "zmeshlib",
                "rpc.service": service,
                "rpc.method": method,
                "rpc.response.status_code": status.name,
            }
            if status is not StatusCode.OK:
                labels["error.type"] = status.name
            if len(self._labels) < 4 * MAX_METHODS:
                self._labels[key] = labels
        return labels

    def messaging_labels(self, operation: str, service: str) -> dict[str, Any]:
        key = ("messaging", operation, service)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = {
                "messaging.system": "zeromq",
                "messaging.operation.name": operation,
                "messaging.destination.name": service,
            }
        return labels

    def _traffic(self, group: str) -> list[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        key = "fault" if group == "fault" else "outcome"
        return [
            Observation(n, {"destination.service": service, key: event.partition(".")[2]})
            for (service, event), n in sorted(mesh.traffic_counts().items())
            if event.startswith(group + ".")
        ]

    def _active(self, _options: CallbackOptions) -> Iterable[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        return [
            Observation(
                1, {"revision": mesh.policy_version, "workload": str(mesh.spiffe_id or "anonymous")}
            )
        ]

    def _handshakes(self, _options: CallbackOptions) -> Iterable[Observation]:
        mesh = self._mesh()
        if mesh is None or mesh.closed:
            return []
        return [Observation(n, {"outcome": k}) for k, n in mesh.handshake_counts().items()]
