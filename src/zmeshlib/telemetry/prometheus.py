"""A ``/metrics`` endpoint for Prometheus in one call (the ``zmeshlib[prometheus]`` extra).

It makes a meter provider whose reader is OpenTelemetry's Prometheus exporter,
over a collector registry of its own (two endpoints in one process never
report each other's series), and serves it over HTTP from a daemon thread.
Pass ``endpoint.meter_provider`` to every Mesh that should be scraped there.
"""

from __future__ import annotations

from typing import Any

from .._exceptions import MeshError


class PrometheusEndpoint:
    """A running ``/metrics`` endpoint; :meth:`close` (or ``with``) stops it."""

    def __init__(self, meter_provider: Any, server: Any, thread: Any, host: str) -> None:
        self.meter_provider = meter_provider
        self.port: int = server.server_port
        self.url = f"http://{host}:{self.port}/metrics"
        self._server = server
        self._thread = thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.meter_provider.shutdown()

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_prometheus(port: int = 9464, host: str = "127.0.0.1") -> PrometheusEndpoint:
    """Serve the mesh's metrics at ``http://host:port/metrics`` (``port=0``: any free port;
    9464 is the exporter's usual one). Bind ``host="0.0.0.0"`` to be scraped from elsewhere."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as e:
        raise MeshError(
            f"serve_prometheus needs the Prometheus exporter ({e.name} is missing): "
            "pip install 'zmeshlib[prometheus]'"
        ) from e
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        provider.shutdown()
        raise MeshError(
            f"cannot serve metrics on {host}:{port}: {e.strerror or e}; pick another port"
        ) from e
    return PrometheusEndpoint(provider, server, thread, host)
