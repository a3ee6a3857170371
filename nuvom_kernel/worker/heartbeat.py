"""The worker's heartbeat: who it is and how busy, written to the result backend on a timer.

Why a thread of its own, off the job path: a heartbeat must keep coming while every
executor is inside a long task, and a slow or failing store must never delay a job. The
record (:class:`~nuvom_kernel.views.WorkerInfo`) lives three ``heartbeat_secs`` in the
result backend, so a worker that stops beating — even ``kill -9`` — drops out of
``nuvom status`` after three missed heartbeats with nobody cleaning up; a clean stop
removes it at once. A result backend without the ``heartbeats`` capability simply lists no
workers (said once in the log).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from nuvom_kernel import __version__
from nuvom_kernel.views import RUNNING_LISTED, WorkerInfo

if TYPE_CHECKING:
    from nuvom_kernel.worker.pool import Worker

__all__ = ["FORGET_SECS", "MISSED_HEARTBEATS", "Heartbeat"]

log = logging.getLogger("nuvom.worker")

#: A worker is listed until it has missed this many heartbeats.
MISSED_HEARTBEATS = 3
#: How long a stopping worker waits for its entry's removal.
FORGET_SECS = 2.0


class Heartbeat:
    """Beats for ``worker`` every ``heartbeat_secs`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.results = worker.kernel.results
        self.interval: float = worker.kernel.settings.heartbeat_secs
        self.id = f"{worker.origin}:{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.lag_secs = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def info(self) -> WorkerInfo:
        """What the worker says about itself now."""
        worker = self.worker
        reports: dict[str, float] = {"abandoned_threads": worker.abandoned_threads,
                                     "heartbeat_lag_secs": round(self.lag_secs, 6)}
        if worker.aio is not None:  # the asyncio pool's watchdog: a loop blocked by a task
            reports["loop_lag_secs"] = round(worker.aio.lag_secs, 6)
        running = sorted((r.started_at, r.job.id) for r in worker._unfinished())
        return WorkerInfo(
            id=self.id, host=socket.gethostname(), pid=os.getpid(), pool=worker.pool,
            slots=worker.workers, busy_slots=worker.busy_slots,
            queues=list(worker.queues or []), started_at=self.started_at,
            version=__version__, heartbeat_at=time.time(), heartbeat_secs=self.interval,
            reports=reports,
            running={job_id: round(at, 3) for at, job_id in running[:RUNNING_LISTED]})

    def start(self) -> None:
        if not type(self.results).capabilities.heartbeats:
            log.info("result backend %r keeps no worker heartbeats: `nuvom status` will not "
                     "list this worker", self.results.name)
            return
        self._thread = threading.Thread(target=self._loop, name="nuvom-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and remove this worker from the list at once — waiting at most
        :data:`FORGET_SECS` for the store: a store that stopped answering held the worker's
        exit for a socket timeout more (an orchestrator's grace period counts it), where
        the entry expires on its own anyway."""
        self._stopped.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        forget = threading.Thread(target=self._forget, name="nuvom-forget-worker",
                                  daemon=True)
        forget.start()
        forget.join(FORGET_SECS)
        if forget.is_alive():
            log.warning("could not remove worker %s from the result backend within %g s; "
                        "it drops out after %d missed heartbeats", self.id, FORGET_SECS,
                        MISSED_HEARTBEATS)

    def _forget(self) -> None:
        try:
            self.results.forget_worker(self.id)
        except Exception as exc:  # it expires on its own after three intervals
            log.warning("could not remove worker %s from the result backend (%r); it drops "
                        "out after %d missed heartbeats", self.id, exc, MISSED_HEARTBEATS)

    def beat(self) -> None:
        self.results.heartbeat(self.info(), MISSED_HEARTBEATS * self.interval)

    def _loop(self) -> None:
        due = time.monotonic()
        while True:
            now = time.monotonic()
            self.lag_secs = max(0.0, now - due)
            try:
                self.beat()
            except Exception as exc:  # the store is down: try again next interval
                log.warning("worker %s could not record its heartbeat (%r); retrying in "
                            "%.1f s", self.id, exc, self.interval)
            due = max(due + self.interval, now)
            if self._stopped.wait(max(0.0, due - time.monotonic())):
                return
