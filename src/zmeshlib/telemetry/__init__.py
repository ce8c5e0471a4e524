"""OpenTelemetry for the mesh: spans and trace context, metrics (semconv, the mesh's own,
Istio's), and a Prometheus endpoint."""

from .metrics import MeshMetrics
from .prometheus import PrometheusEndpoint, serve_prometheus

__all__ = ["MeshMetrics", "PrometheusEndpoint", "serve_prometheus"]
