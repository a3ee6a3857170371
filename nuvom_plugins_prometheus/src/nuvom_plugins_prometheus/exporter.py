"""The exporter of one process: the registry it serves, its HTTP server, its queue timer.

Why one per process, not per worker: Prometheus scrapes a process (a host and port), and
``prometheus_client`` keeps counters per process; two workers in one process (tests,
embedding) share the counters and add up their slots.

With ``--pool process`` the process serving is the pool's parent, and it is also the one
that settles every attempt its children ran (children only run the function), so its own
:class:`JobMetrics` count them all: one endpoint, no multiprocess mode. Should a pool ever
settle in its children, they would record :class:`JobMetrics` through
``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROCESS_DIR``) and the parent
serve them with a ``MultiProcessCollector`` beside its :class:`LiveCollector`: recording
and serving are kept apart for that, and only the exporter decides what its registry holds.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.plugin_settings import plugin_env_var
from nuvom_plugins_prometheus.metrics import JobMetrics, LiveCollector
from nuvom_plugins_prometheus.settings import PrometheusSettings

if TYPE_CHECKING:
    from nuvom_kernel.worker import Worker

__all__ = ["Exporter", "bind_error"]

log = logging.getLogger("nuvom.prometheus")


def bind_error(host: str, port: int, exc: BaseException) -> str:
    """Why ``host:port`` could not be served, naming the setting to change: a port in use
    is the port's, a name that does not resolve or an address this machine does not have
    is the host's, a refusal is a permission. (Every failure used to read as a port clash,
    sending the operator after the wrong setting.)"""
    port_var, host_var = plugin_env_var("prometheus", "port"), plugin_env_var("prometheus",
                                                                             "host")
    where = f"cannot serve metrics on {host}:{port}"
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if code == errno.EADDRINUSE:
        return (f"[plugins.prometheus] port={port} ({port_var}): {where}: {reason}. Another "
                "process (another worker?) holds that port: give each worker on this host "
                "its own port, or 0 for any free one.")
    if code in (errno.EACCES, errno.EPERM):
        return (f"[plugins.prometheus] port={port} ({port_var}), host={host!r} ({host_var}): "
                f"{where}: permission denied ({reason}). Ports below 1024 need privileges: "
                "use a higher port, or 0 for any free one.")
    if isinstance(exc, socket.gaierror | UnicodeError):
        return (f"[plugins.prometheus] host={host!r} ({host_var}): {where}: the name does "
                f"not resolve ({reason}). Use an address of this machine, such as "
                "127.0.0.1, or 0.0.0.0 for every interface.")
    if code == errno.EADDRNOTAVAIL:
        return (f"[plugins.prometheus] host={host!r} ({host_var}): {where}: it is not an "
                f"address of this machine ({reason}). Use one of its addresses, such as "
                "127.0.0.1, or 0.0.0.0 for every interface.")
    return (f"[plugins.prometheus] host={host!r} ({host_var}), port={port} ({port_var}): "
            f"{where}: {reason}.")


class Exporter:
    """Serves ``/metrics`` for the workers of this process."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics(self.registry)
        self.live = LiveCollector()
        self.registry.register(self.live)
        self.port: int | None = None
        self._server: Any = None
        self._stopped = threading.Event()
        self._timer: threading.Thread | None = None

    def serve(self) -> None:
        """Bind the port now, so one in use is a startup error naming the setting.

        :raises PluginConfigError: the port cannot be bound.
        """
        host, port = self.settings.host, self.settings.port
        assert port is not None
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
            raise PluginConfigError(bind_error(host, port, exc)) from exc
        self.port = self._server.server_address[1]
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def add(self, worker: Worker) -> None:
        self.live.workers.append(worker)
        if self._timer is None:
            self._timer = threading.Thread(target=self._refresh_loop, daemon=True,
                                           name="nuvom-prometheus")
            self._timer.start()

    def remove(self, worker: Worker) -> bool:
        """Forget ``worker``; ``True`` when no worker is left (then :meth:`close`)."""
        if worker in self.live.workers:
            self.live.workers.remove(worker)
        return not self.live.workers

    def refresh(self) -> None:
        """Take a queue snapshot through the SPI (``stats()``) of the first worker's queue."""
        workers = list(self.live.workers)
        if workers:
            self.live.take(workers[0].kernel.queue.stats())

    def poll(self) -> bool:
        """One tick of the timer: :meth:`refresh`, or, when the store cannot be read, keep
        the last snapshot and count the failure (``nuvom_queue_stats_errors_total``; the
        snapshot's timestamp stops advancing, which is what an alert watches)."""
        try:
            self.refresh()
        except Exception as exc:  # the store is down: keep the last snapshot
            self.live.failed()
            log.warning("could not read queue stats for metrics (%r); retrying in %.1f s",
                        exc, self.settings.refresh_secs)
            return False
        return True

    def _refresh_loop(self) -> None:
        while not self._stopped.is_set():
            self.poll()
            self._stopped.wait(self.settings.refresh_secs)

    def close(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._timer is not None:
            self._timer.join(5)
