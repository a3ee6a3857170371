"""Hooks of ``nuvom-plugins-prometheus`` (entry point ``nuvom: prometheus``).

Idle until ``[plugins.prometheus] port`` (or ``NUVOM_PLUGINS__PROMETHEUS__PORT``) is set:
then the worker binds the port before it starts (``nuvom_worker_prepare``: a port in use
stops it with an error naming the setting), records every settled attempt
(``nuvom_after_settle``) and stops serving when its last worker stops. It works only
through hooks and the backend SPI (``stats()``), like any third-party plugin.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from nuvom_kernel import hookimpl
from nuvom_plugins_prometheus.exporter import Exporter
from nuvom_plugins_prometheus.settings import PrometheusSettings

if TYPE_CHECKING:
    from nuvom_kernel.outcome import Outcome
    from nuvom_kernel.worker import Worker

__all__ = ["current_exporter", "nuvom_after_settle", "nuvom_plugin_settings",
           "nuvom_worker_prepare", "nuvom_worker_shutdown"]

_lock = threading.Lock()
_exporter: Exporter | None = None  # one per process, while a worker with a port runs


def current_exporter() -> Exporter | None:
    """The exporter serving this process, if any (tests and embedders read its port)."""
    return _exporter


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    return {"prometheus": PrometheusSettings}


@hookimpl
def nuvom_worker_prepare(worker: Worker) -> None:
    global _exporter
    settings = PrometheusSettings.parse(worker.kernel.config.plugin_settings("prometheus"))
    if settings.port is None:
        return
    with _lock:
        if _exporter is None:
            exporter = Exporter(settings)
            exporter.serve()
            _exporter = exporter
        _exporter.add(worker)


@hookimpl
def nuvom_worker_shutdown(worker: Worker) -> None:
    global _exporter
    with _lock:
        if _exporter is not None and _exporter.remove(worker):
            _exporter.close()
            _exporter = None


@hookimpl
def nuvom_after_settle(outcome: Outcome) -> None:
    exporter = _exporter
    if exporter is not None:
        exporter.jobs.observe(outcome)
