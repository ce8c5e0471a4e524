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
``messaging.client.sent.messages`` counter      ``messaging.system`` (``zeromq``),
                                                ``messaging.operation.name`` (``publish``,
                                                ``push``), ``messaging.destination.name``
                                                (the service, never the topic)
``messaging.client.consumed.         counter      the same (``receive``), per message a SUB
messages``                                      or PULL hands the application
``messaging.process.duration``     histogram    seconds inside ``msg.process()``, with
                                                ``error.type`` when it raised
=================================  ===========  =========================================

The request and message instruments are recorded only while a metrics SDK
is there (a ``meter_provider=`` given, or a global one set) and
``telemetry.metrics.enabled`` holds: otherwise not even their label sets are
built. Labels are bounded: a method name joins the labels only among the
first :data:`MAX_METHODS` a Mesh has seen (a server's methods come from the
network); later ones are reported as ``_OTHER``, as the HTTP conventions do
for unknown methods. Topics are never labels.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

# The API's provider until an SDK's is set globally: it records nothing. Not public API:
# tests/sockets/test_metrics.py checks that it is what the API hands out unset.
from opentelemetry.metrics import _internal as _metrics_internal  # its _METER_PROVIDER
from opentelemetry.metrics._internal import _ProxyMeterProvider as _PROXY

from .._models import StatusCode

if TYPE_CHECKING:
    from ..sockets.mesh import Mesh

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
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="messages sent"
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="messages handed to the application",
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="time in msg.process()"
        )
        self.policy_updates = meter.create_counter(
            "zmeshlib.policy.updates", unit="{update}", description="policy swaps"
        )
        self.policy_rejected = meter.create_counter(
            "zmeshlib.policy.rejected",
            unit="{file}",
            description="watched policy files that failed to load (the last good policy stays)",
        )
        meter.create_observable_gauge(
            "zmeshlib.policy.active",
            callbacks=[self._active],
            description="1 for the revision of the policy in force",
        )
        meter.create_observable_counter(
            "zmeshlib.handshakes",
            callbacks=[self._handshakes],
            unit="{handshake}",
            description="handshake decisions of this workload's ZAP handler, by outcome",
        )
        meter.create_observable_counter(
            "zmeshlib.faults.injected",
            callbacks=[lambda _options: self._traffic("fault")],
            unit="{request}",
            description="requests given an injected fault (traffic.<service>.faults)",
        )
        meter.create_observable_counter(
            "zmeshlib.mirror.copies",
            callbacks=[lambda _options: self._traffic("mirror")],
            unit="{request}",
            description="mirror copies handed over (sent) or dropped rather than queued",
        )

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
