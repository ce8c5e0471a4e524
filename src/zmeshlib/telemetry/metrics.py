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
=================================  ===========  =========================================
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:
    from ..sockets.mesh import Mesh


class MeshMetrics:
    """The instruments of one Mesh."""

    def __init__(self, mesh: Mesh, meter_provider: Any = None) -> None:
        from .. import __version__

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("zmeshlib", __version__)
        self._mesh = weakref.ref(mesh)
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
