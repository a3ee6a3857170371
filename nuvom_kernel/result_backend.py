"""The result backend SPI: durable job records (state, result, error, attempt history),
plus worker heartbeats and schedule state for backends that declare them. Four primitives
(``put``, ``get``, ``query``, ``purge``); the seed's conveniences (``set_result``,
``get_full``, ``list_jobs`` …) are built on them here, so no plugin writes them.
Imported by plugins as :class:`nuvom_kernel.backends.ResultBackend`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import JobRecord, JobStatus, ScheduleState
from nuvom_kernel.spi import Backend
from nuvom_kernel.views import WorkerInfo, page_cursor

__all__ = ["ResultBackend"]


class ResultBackend(Backend):
    """Durable job records: state, result, error and attempt history.

    Required primitives: :meth:`put`, :meth:`get`, :meth:`query`, :meth:`purge`. Optional:
    :meth:`put_many` (one transaction for a batch of outcomes), :meth:`counts` and
    :meth:`counts_since`; with the ``heartbeats`` capability, :meth:`heartbeat`,
    :meth:`live_workers`, :meth:`forget_worker`.
    """

    #: Finished records older than this many seconds are deleted by every running worker
    #: (about once a minute: :mod:`nuvom_kernel.worker.expiry`), with the workflows that
    #: ended before then, as ``nuvom purge results --older-than`` does. ``0`` keeps them
    #: until that command. A backend sets it from its own ``result_ttl_secs`` setting; one
    #: whose store expires records itself (Redis key TTLs, PostgreSQL's tick) leaves it 0.
    result_ttl_secs: float = 0.0

    def __init__(self) -> None:
        pass

    # --- primitives -----------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, record: JobRecord) -> bool:
        """Store the record if it :func:`~nuvom_kernel.models.supersedes` the one stored
        under its ``job_id`` (or none is), atomically with that check; ``False`` and no
        change otherwise. This is what keeps a worker that lost its lease from overwriting
        the outcome of the worker that took the job over."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` for an id never stored."""

    @abc.abstractmethod
    def query(
        self,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[JobRecord]:
        """Records matching the filters, newest first: by ``updated_at``, then ``job_id``,
        both descending. ``after`` is the :func:`page_cursor` of the last record of the
        previous page (keyset paging: a page costs the same on page 1 and page 10,000)."""

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Delete terminal records whose ``updated_at`` is before the epoch ``older_than``."""

    # --- optional primitives --------------------------------------------------------------

    def put_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """Store several records, each fenced as in :meth:`put`; override to do it in one
        transaction (all or none)."""
        return [self.put(record) for record in records]

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records updated at or after the epoch ``since``, per queue and status
        (``{queue: {status: n}}``): what finished lately, for the dashboard's overview.
        The default pages through :meth:`query`; override with one indexed query."""
        totals: dict[str, dict[str, int]] = {}
        after = None
        while True:
            page = self.query(limit=1000, after=after)
            for record in page:
                if record.updated_at < since:
                    return totals
                per_queue = totals.setdefault(record.queue, {})
                per_queue[record.status.value] = per_queue.get(record.status.value, 0) + 1
            if len(page) < 1000:
                return totals
            after = page_cursor(page[-1])

    def counts(self) -> dict[str, int]:
        """Records per status, for ``nuvom status``; override with one indexed query."""
        totals: dict[str, int] = {}
        for status in JobStatus:
            after = None
            while True:
                page = self.query(status=status, limit=1000, after=after)
                if page:
                    totals[status.value] = totals.get(status.value, 0) + len(page)
                if len(page) < 1000:
                    break
                after = page_cursor(page[-1])
        return totals

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """Store ``info`` under ``info.id``, replacing that worker's previous heartbeat; it
        stays live for ``ttl_secs`` (the worker passes three intervals, so a worker that
        stops, even ``kill -9``, drops out of :meth:`live_workers` on its own). Why in the
        result backend: it is the store every host and ``nuvom status`` already share."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")

    def live_workers(self) -> list[WorkerInfo]:
        """Every worker whose last heartbeat has not expired, ordered by id (expired ones
        may be deleted on the way)."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")

    def forget_worker(self, worker_id: str) -> bool:
        """Drop a worker at once (its clean shutdown); ``True`` if it was listed."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")
    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every stored schedule state by name (capability ``schedules``)."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """Store ``state`` if the stored state of its schedule is still ``previous``
        (compared by ``updated_at``; ``None``: none stored yet), atomically; ``False`` and
        no change otherwise. The one write every scheduler races on: its winner fires the
        ticks."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    # --- conveniences ---------------------------------------------------------------------

    def set_result(self, job_id: str, result: Any, *, task: str = "") -> bool:
        """Record success of the stored run and attempt; ``result`` must already be in
        wire-safe form."""
        record = self.get(job_id) or JobRecord(job_id=job_id, task=task,
                                               status=JobStatus.SUCCEEDED)
        record.status = JobStatus.SUCCEEDED
        record.result = result
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

    def set_error(
        self,
        job_id: str,
        error_type: str,
        message: str,
        traceback: str | None = None,
        *,
        task: str = "",
    ) -> bool:
        """Record failure of the stored run and attempt."""
        record = self.get(job_id) or JobRecord(job_id=job_id, task=task,
                                               status=JobStatus.FAILED)
        record.status = JobStatus.FAILED
        record.error_type, record.error_message, record.traceback = error_type, message, traceback
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

    def get_result(self, job_id: str) -> Any:
        """The wire-safe result of a succeeded job, else ``None``."""
        record = self.get(job_id)
        return record.result if record and record.status is JobStatus.SUCCEEDED else None

    def get_error(self, job_id: str) -> dict[str, Any] | None:
        record = self.get(job_id)
        if record is None or record.error_type is None:
            return None
        return {"type": record.error_type, "message": record.error_message,
                "traceback": record.traceback}

    def get_full(self, job_id: str) -> dict[str, Any] | None:
        record = self.get(job_id)
        return record.to_dict() if record else None

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        task: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records as dicts, newest first; page on with ``after=page_cursor(last)``."""
        wanted = JobStatus(status) if status is not None else None
        records = self.query(status=wanted, task=task, limit=limit, after=after)
        return [r.to_dict() for r in records]
