"""OpenTelemetry instruments of the mesh (metrics now; spans and trace context come with tracing)."""

from .metrics import MeshMetrics

__all__ = ["MeshMetrics"]
