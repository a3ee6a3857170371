"""The metrics the plugin registers, the ones ``docs/observability.md`` lists and the ones
the Grafana dashboard queries are the same names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from nuvom_plugins_prometheus import METRICS, dashboard_path
from nuvom_plugins_prometheus.exporter import Exporter
from nuvom_plugins_prometheus.settings import PrometheusSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _exposed() -> set[str]:
    text = generate_latest(Exporter(PrometheusSettings(port=0)).registry).decode()
    # prometheus_client adds a ``<counter>_created`` gauge (a counter's start time) of its own.
    return {name for name in re.findall(r"^# TYPE (\S+) ", text, re.M)
            if not name.endswith("_created")}


def test_every_registered_metric_is_in_the_list() -> None:
    assert _exposed() == set(METRICS)


def test_every_metric_is_documented_and_nothing_else() -> None:
    rows = set(re.findall(r"^\| `(nuvom_\w+)(?:\{[^`]*\})?` \|", DOC.read_text(), re.M))
    assert rows == set(METRICS)


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(dashboard_path().read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m)
            for e in exprs for m in re.findall(r"nuvom_\w+", e)}
    assert used and used <= set(METRICS), used - set(METRICS)
    assert {m for m in METRICS} <= used, "every metric has a panel"
