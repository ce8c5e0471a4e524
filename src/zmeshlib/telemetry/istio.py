"""Istio's standard metrics, from inside the socket (``telemetry.metrics.istio_compatible``).

Rules this module keeps:

* Names, units and label names are Istio's, so Istio's Grafana dashboards
  and Kiali read them unchanged: ``istio_requests_total``,
  ``istio_request_duration_milliseconds``, ``istio_request_bytes`` and
  ``istio_response_bytes``, with Istio's default buckets.
* Both ends report, as Envoy does on each side: a client as
  ``reporter="source"``, a server as ``reporter="destination"``.
* Who: the principal the handshake authenticated, never a name from the
  network's payload; ``unknown`` where nothing is known (Istio's word).
  Workload and namespace come from the Istio form of the SPIFFE ID,
  ``spiffe://<td>/ns/<namespace>/sa/<account>`` (the account is the workload);
  the version from the card's ``version`` label.
* ``response_code`` is the HTTP status each gRPC status maps to (table
  below), ``grpc_response_status`` the gRPC code; ``request_protocol`` is
  ``zeromq``; ``connection_security_policy`` is ``mutual_tls`` when the peer
  was authenticated (CURVE and a verified SVID), else ``none``.
* Messages (which Istio never measured, istio/istio#9813) get twins with the
  same label names: ``istio_messages_total`` and ``istio_message_bytes``,
  plus ``messaging_operation`` and ``topic``. A topic is labelled by its
  first ``telemetry.metrics.topic_depth`` segments (split at ``.``, ``/``
  and ``:``), never raw: a topic can be anything a publisher makes up.
* Label sets are built once per distinct key and kept, up to
  :data:`MAX_LABEL_SETS`; beyond that they are built per use.
"""

from __future__ import annotations

import re
from typing import Any

from .._models import Peer, StatusCode

#: The HTTP status each status maps to (google.rpc.Code's documented mapping;
#: APPLICATION, zmeshlib's own, is gRPC's UNKNOWN).
HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.APPLICATION: 500,
}
GRPC_UNKNOWN = 2

#: Istio's default buckets (milliseconds; bytes: powers of ten to 10^8).
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                       60000, 300000, 600000, 1800000, 3600000)  # fmt: skip
BYTES_BUCKETS = tuple(float(10**i) for i in range(9))
MAX_LABEL_SETS = 4096
UNKNOWN = "unknown"
_ISTIO_FORM = re.compile(r"^spiffe://[^/]+/ns/([^/]+)/sa/([^/]+)$")
_SEGMENT = re.compile(r"[./:]")


def topic_label(topic: str, depth: int) -> str:
    """The first ``depth`` segments of ``topic`` (``orders.eu.created``, 1: ``orders``)."""
    if depth <= 0:
        return ""
    ends = [m.start() for m in _SEGMENT.finditer(topic)]
    return topic if len(ends) < depth else topic[: ends[depth - 1]]


def _who(spiffe_id: str, labels: Any) -> tuple[str, str, str, str]:
    """(principal, workload, namespace, version) of one end."""
    if not spiffe_id:
        return UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
    match = _ISTIO_FORM.match(spiffe_id)
    workload, namespace = (match.group(2), match.group(1)) if match else (UNKNOWN, UNKNOWN)
    version = (labels or {}).get("version", UNKNOWN)
    return spiffe_id, workload, namespace, version


def _sizes(meter: Any, name: str, description: str) -> Any:
    """A histogram of payload sizes in bytes, on Istio's buckets."""
    return meter.create_histogram(
        name, unit="By", description=description, explicit_bucket_boundaries_advisory=BYTES_BUCKETS
    )


class IstioMetrics:
    """The Istio-named instruments of one Mesh (module docstring)."""

    def __init__(self, meter: Any, own_id: str, own_labels: Any) -> None:
        self._own = _who(own_id, own_labels)
        self._labels: dict[tuple[Any, ...], dict[str, str]] = {}
        self.requests = meter.create_counter(
            "istio_requests_total", unit="{request}", description="requests, by both ends"
        )
        self.duration = meter.create_histogram(
            "istio_request_duration_milliseconds", unit="ms", description="request durations",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
        )  # fmt: skip
        self.request_bytes = _sizes(meter, "istio_request_bytes", "request payload sizes")
        self.response_bytes = _sizes(meter, "istio_response_bytes", "response payload sizes")
        self.messages = meter.create_counter(
            "istio_messages_total", unit="{message}", description="messages, by both ends"
        )
        self.message_bytes = _sizes(meter, "istio_message_bytes", "message payload sizes")

    def request(
        self,
        reporter: str,
        peer: Peer | None,
        service: str,
        status: StatusCode,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """One request as ``reporter`` (``source``: the client; ``destination``: the server)
        saw it; ``peer`` is the other end (None: not known, as after a timeout)."""
        labels = self._request_labels(reporter, peer, service, status)
        self.requests.add(1, labels)
        self.duration.record(seconds * 1000.0, labels)
        self.request_bytes.record(request_bytes, labels)
        self.response_bytes.record(response_bytes, labels)

    def message(
        self, reporter: str, operation: str, peer: Peer | None, service: str, topic: str,
        depth: int, size: int,
    ) -> None:  # fmt: skip
        """One message sent (``source``) or received (``destination``)."""
        key = ("message", reporter, operation, peer, service, topic_label(topic, depth))
        labels = self._labels.get(key)
        if labels is None:
            labels = self._ends(reporter, peer, service)
            labels["messaging_operation"] = operation
            labels["topic"] = key[-1]
            self._keep(key, labels)
        self.messages.add(1, labels)
        self.message_bytes.record(size, labels)

    def _request_labels(
        self, reporter: str, peer: Peer | None, service: str, status: StatusCode
    ) -> dict[str, str]:
        key = ("request", reporter, peer, service, status)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._ends(reporter, peer, service)
            labels["response_code"] = str(HTTP_STATUS.get(status, 500))
            grpc = int(status) if status is not StatusCode.APPLICATION else GRPC_UNKNOWN
            labels["grpc_response_status"] = str(grpc)
            labels["response_flags"] = "-"
            self._keep(key, labels)
        return labels

    def _ends(self, reporter: str, peer: Peer | None, service: str) -> dict[str, str]:
        other = (
            _who(str(peer.spiffe_id), peer.labels)
            if peer is not None and peer.spiffe_id is not None
            else _who("", None)
        )
        source, destination = (self._own, other) if reporter == "source" else (other, self._own)
        secured = peer is not None and peer.authenticated
        return {
            "reporter": reporter,
            "source_principal": source[0],
            "source_workload": source[1],
            "source_workload_namespace": source[2],
            "source_canonical_service": source[1],
            "source_version": source[3],
            "destination_principal": destination[0],
            "destination_workload": destination[1],
            "destination_workload_namespace": destination[2],
            "destination_canonical_service": destination[1],
            "destination_version": destination[3],
            "destination_service": service or UNKNOWN,
            "destination_service_name": service or UNKNOWN,
            "destination_service_namespace": destination[2],
            "request_protocol": "zeromq",
            "connection_security_policy": "mutual_tls" if secured else "none",
        }

    def _keep(self, key: tuple[Any, ...], labels: dict[str, str]) -> None:
        if len(self._labels) < MAX_LABEL_SETS:
            self._labels[key] = labels
