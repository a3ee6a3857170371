"""Result expiry: each worker deletes finished job records older than the result backend's
``result_ttl_secs``, as ``nuvom purge results --older-than`` would, once a minute.

Why in the worker: a store without expiry of its own (SQLite, the file backend) otherwise
grows for good — a worker at ~50 jobs/s added ~150 MB an hour to its SQLite file in a soak,
and an every-2-s schedule adds a record per tick — and peers expire results by default
(Celery after a day, RQ after 500 s, the Redis plugin after 7 days). Workers are the one
process that runs for as long as records accumulate. Why a thread of its own: a purge of a
long backlog (the first one after an upgrade) must delay neither a job nor a heartbeat.
Why every worker and no lock: a purge deletes by a cutoff, so two at once delete each row
once; a second worker's pass over an index finds nothing (one indexed statement). A backend
whose store expires records itself (Redis key TTLs, PostgreSQL's maintenance tick) leaves
``result_ttl_secs`` at 0 on the backend object, and nothing runs here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["EXPIRY_EVERY_SECS", "WORKFLOWS_EVERY_SECS", "Expiry"]

log = logging.getLogger("nuvom.worker")

#: How often a worker purges: a minute, or the TTL itself when shorter (at least a second),
#: so a record outlives its TTL by at most that much.
EXPIRY_EVERY_SECS = 60.0
#: How often it also purges ended workflows (or every tenth pass, when passes are shorter):
#: their stores read every graph to find the ended ones (the file backend under its
#: workflows lock), a cost a minute would repeat for nothing; a graph outlives its TTL by
#: at most this much.
WORKFLOWS_EVERY_SECS = 600.0


class Expiry:
    """Purges ``kernel``'s expired records (and ended workflows) from :meth:`start` to
    :meth:`stop`; does nothing when the result backend's ``result_ttl_secs`` is 0."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.ttl = 0.0
        self.every = EXPIRY_EVERY_SECS
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._workflows_at = 0.0  # monotonic time of the next purge of workflows

    def start(self) -> None:
        """Read the TTL from the result backend (opened by then: the worker's start opens
        its stores first, so a store that cannot open fails there, saying why)."""
        self.ttl = float(self.kernel.results.result_ttl_secs)
        if self.ttl <= 0:
            return
        self.every = max(1.0, min(EXPIRY_EVERY_SECS, self.ttl))
        self._thread = threading.Thread(target=self._loop, name="nuvom-expiry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def purge(self) -> tuple[int, int]:
        """One pass: job records and workflows that finished more than the TTL ago."""
        cutoff = time.time() - self.ttl
        records = self.kernel.results.purge(cutoff)
        flows = 0
        if time.monotonic() >= self._workflows_at:
            self._workflows_at = time.monotonic() + min(WORKFLOWS_EVERY_SECS, 10 * self.every)
            flows = self.kernel.queue.purge_workflows(cutoff)
        if records or flows:
            log.info("deleted %d job record(s) and %d workflow(s) that finished more than "
                     "%g s ago (result_ttl_secs of result backend %r)", records, flows,
                     self.ttl, self.kernel.results.name)
        return records, flows

    def _loop(self) -> None:
        while True:
            try:
                self.purge()
            except Exception as exc:  # the store is down or busy: the next pass catches up
                log.warning("could not delete expired job records (%r); retrying in %g s",
                            exc, self.every)
            if self._stopped.wait(self.every):
                return
