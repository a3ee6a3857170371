"""Broken result backends: each subclasses the reference
:class:`~nuvom_kernel.testing.stubs.StubResults` and changes one method, breaking one promise
of the result contract (records, queries, or heartbeats)."""

from __future__ import annotations

from typing import Any

import attrs

from nuvom_kernel.backends import WorkerInfo
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.testing.stubs import StubResults

__all__ = [
    "EXPECTED_FAILURES", "AliasingResults", "AppendingHeartbeatResults", "CancelUndoneResults",
    "ImmortalWorkersResults", "LastWriterWinsResults", "NoTaskFilterResults",
    "OldestFirstResults", "PendingUnknownResults", "PurgeEverythingResults",
]


class OldestFirstResults(StubResults):
    """Pages oldest first."""

    name = "fake-oldest-first"

    def query(self, **kwargs: Any) -> list[JobRecord]:
        limit = kwargs.pop("limit", 50)
        rows = super().query(limit=1 << 30, **{**kwargs, "after": None})
        return rows[::-1][:limit]


class LastWriterWinsResults(StubResults):
    """Stores every write, fenced or not: a worker that lost its lease overwrites the
    outcome of the one that took the job over."""

    name = "fake-last-writer-wins"

    def put(self, record: JobRecord) -> bool:
        with self._lock:
            self._records.pop(record.job_id, None)
        return super().put(record)


class CancelUndoneResults(StubResults):
    """Fences by run and attempt only: a late outcome of a cancelled job's attempt replaces
    its CANCELLED record, and the operator's cancel reads as undone."""

    name = "fake-cancel-undone"

    def put(self, record: JobRecord) -> bool:
        with self._lock:
            old = self._records.get(record.job_id)
            if old is not None and old.status is JobStatus.CANCELLED:
                if (record.run, record.attempts) < (old.run, old.attempts):
                    return False
                self._records[record.job_id] = attrs.evolve(record)
                return True
        return super().put(record)


class NoTaskFilterResults(StubResults):
    """Ignores the ``task`` filter."""

    name = "fake-no-task-filter"

    def query(self, *, task: str | None = None, **kwargs: Any) -> list[JobRecord]:
        return super().query(**kwargs)


class PurgeEverythingResults(StubResults):
    """Purges unfinished jobs too."""

    name = "fake-purge-everything"

    def purge(self, older_than: float) -> int:
        with self._lock:
            doomed = [i for i, r in self._records.items() if r.updated_at < older_than]
            for job_id in doomed:
                del self._records[job_id]
            return len(doomed)


class AliasingResults(StubResults):
    """Stores and returns the caller's objects instead of copies."""

    name = "fake-aliasing"

    def put(self, record: JobRecord) -> bool:
        with self._lock:
            self._records[record.job_id] = record
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._records.get(job_id)


class PendingUnknownResults(StubResults):
    """Reports an id it never saw as a queued job (the original Nuvom's "pending" bug)."""

    name = "fake-pending-unknown"

    def get(self, job_id: str) -> JobRecord | None:
        return super().get(job_id) or JobRecord(job_id=job_id, task="",
                                                status=JobStatus.QUEUED)


class ImmortalWorkersResults(StubResults):
    """Ignores a heartbeat's TTL: a worker killed with ``kill -9`` stays listed forever."""

    name = "fake-immortal-workers"

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        super().heartbeat(info, float("inf"))


class AppendingHeartbeatResults(StubResults):
    """Keeps every heartbeat instead of the last: one worker shows up many times."""

    name = "fake-appending-heartbeats"

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        with self._lock:
            count = sum(1 for key in self._workers if key.split("#")[0] == info.id)
        super().heartbeat(attrs.evolve(info, id=f"{info.id}#{count}" if count else info.id),
                          ttl_secs)

    def live_workers(self) -> list[WorkerInfo]:
        return [attrs.evolve(w, id=w.id.split("#")[0]) for w in super().live_workers()]


#: Result fake class name -> the contract tests it must fail (and no others).
EXPECTED_FAILURES: dict[str, set[str]] = {
    "LastWriterWinsResults": {"test_put_is_fenced_by_run_and_attempt",
                              "test_a_cancel_is_final_for_its_run"},
    "CancelUndoneResults": {"test_a_cancel_is_final_for_its_run"},
    "OldestFirstResults": {"test_query_newest_updated_first_and_keyset_paging"},
    "NoTaskFilterResults": {"test_query_filters"},
    "PurgeEverythingResults": {"test_purge_removes_only_old_terminal_records"},
    "AliasingResults": {"test_records_are_copies", "test_put_is_fenced_by_run_and_attempt",
                        "test_a_cancel_is_final_for_its_run"},
    "PendingUnknownResults": {"test_unknown_ids",
                              "test_purge_removes_only_old_terminal_records"},
    "ImmortalWorkersResults": {"test_a_worker_that_stops_heartbeating_drops_out"},
    "AppendingHeartbeatResults": {"test_a_heartbeat_replaces_the_last_one"},
}
