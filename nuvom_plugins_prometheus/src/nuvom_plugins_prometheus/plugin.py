"""Hooks of ``nuvom-plugins-prometheus`` (entry point ``nuvom: prometheus``).

Idle until ``[plugins.prometheus] port`` (or ``NUVOM_PLUGINS__PROMETHEUS__PORT``) is set:
then the worker binds the port before it starts (``nuvom_worker_prepare``: a port in use
stops it with an error naming the setting), records every settled attempt
(``nuvom_after_settle``) and stops serving when its last worker stops. It works only
through hooks and the backend SPI (``stats()``), like any third-party plugin.

The per-job hook is implemented by a :class:`Recorder` registered only while a worker
exports: idle, the plugin adds nothing to a job (the settler builds no ``Outcome`` when
nobody observes). Counted on a drain before it was split off: ~7,600 instructions per job
(``benchmarks/instructions.py``), under 4 % of a job, for a hook that recorded nothing.
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

__all__ = ["RECORDER", "Recorder", "current_exporter", "nuvom_plugin_settings",
           "nuvom_worker_prepare", "nuvom_worker_shutdown"]

#: The name a :class:`Recorder` is registered under, in each exporting worker's kernel.
RECORDER = "prometheus.recorder"

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
        pm = worker.kernel.pm
        if pm.get_plugin(RECORDER) is None:  # one per kernel: its workers share its hooks
            pm.register(Recorder(_exporter), name=RECORDER)


@hookimpl
def nuvom_worker_shutdown(worker: Worker) -> None:
    """Runs after the worker settled its last job: nothing is left to record."""
    global _exporter
    with _lock:
        if _exporter is None:
            return
        last = _exporter.remove(worker)
        pm = worker.kernel.pm
        if all(other.kernel.pm is not pm for other in _exporter.live.workers) \
                and pm.get_plugin(RECORDER) is not None:
            pm.unregister(name=RECORDER)
        if last:
            _exporter.close()
            _exporter = None


class Recorder:
    """Records every settled attempt of an exporting worker's kernel in the exporter."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    @hookimpl
    def nuvom_after_settle(self, outcome: Outcome) -> None:
        self.exporter.jobs.observe(outcome)
