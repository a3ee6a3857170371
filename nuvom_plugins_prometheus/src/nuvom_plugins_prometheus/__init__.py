"""Prometheus metrics for Nuvom workers (``nuvom-plugins-prometheus``).

Installed, it stays idle until ``[plugins.prometheus] port`` is set; then ``nuvom
runworker`` serves ``/metrics``. Every metric is listed in :data:`METRICS` and in
``docs/observability.md``; a Grafana dashboard ships in :func:`dashboard_path`.
"""

from __future__ import annotations

from pathlib import Path

from nuvom_plugins_prometheus.metrics import METRICS
from nuvom_plugins_prometheus.settings import PrometheusSettings

__version__ = "0.1.0"

__all__ = ["METRICS", "PrometheusSettings", "__version__", "dashboard_path"]


def dashboard_path() -> Path:
    """The Grafana dashboard JSON (import it in Grafana: Dashboards, New, Import)."""
    return Path(__file__).resolve().parent / "grafana" / "nuvom.json"
