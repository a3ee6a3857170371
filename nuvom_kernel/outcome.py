"""What a settled attempt tells an observer: :class:`Outcome`, the argument of the
``nuvom_after_settle`` hook.

Metrics need more than the job: when it was enqueued and became due (time waiting in the
queue), when the attempt started and finished (run time), how it ended, whether this worker
still held the lease when it settled, and how many earlier deliveries ended with no outcome
at all (a worker was killed). All of it is in the settlement (its record and its lease), so
an outcome is a thin view computed on access: building one costs an object, not a copy, and
an idle observer (an exporter with nothing configured) costs next to nothing.
"""

from __future__ import annotations

from nuvom_kernel.models import JobRecord, JobStatus, Settlement

__all__ = ["OUTCOME_STATUSES", "Outcome"]

#: Every :attr:`Outcome.status`, in the order metrics list them.
OUTCOME_STATUSES = ("succeeded", "failed", "retried", "timed_out")


class Outcome:
    """One attempt, as this worker settled it (or tried to).

    :param settlement: what the worker settled: the record it stored and the lease.
    :param landed: whether the record was stored and the lease acked or retried; ``False``
        when the lease was lost first (another worker holds the job now) or the store failed.
    """

    __slots__ = ("landed", "settlement")

    def __init__(self, settlement: Settlement, landed: bool) -> None:
        self.settlement = settlement
        self.landed = landed

    def __repr__(self) -> str:
        return (f"Outcome(job_id={self.job_id!r}, task={self.task!r}, status={self.status!r}, "
                f"attempt={self.attempt}, landed={self.landed})")

    @property
    def record(self) -> JobRecord:
        return self.settlement.record

    @property
    def job_id(self) -> str:
        return self.settlement.record.job_id

    @property
    def task(self) -> str:
        return self.settlement.record.task

    @property
    def queue(self) -> str:
        return self.settlement.record.queue

    @property
    def attempt(self) -> int:
        """The attempt number within its run (the lease's delivery count)."""
        return self.settlement.record.attempts

    @property
    def run(self) -> int:
        return self.settlement.record.run

    @property
    def status(self) -> str:
        """``succeeded``, ``retried`` (failed, will run again), ``timed_out`` (passed its
        timeout, whether it will run again or not) or ``failed`` (for good; also a message
        that does not decode or was delivered too often without an outcome). Each attempt
        has exactly one."""
        record = self.settlement.record
        if record.status is JobStatus.SUCCEEDED:
            return "succeeded"
        history = record.history
        if history and history[-1].get("kind") == "timeout" \
                and history[-1].get("attempt") == record.attempts:
            return "timed_out"
        return "retried" if self.settlement.retry_in is not None else "failed"

    @property
    def lease_lost(self) -> bool:
        """The worker no longer held the lease: its outcome was not recorded."""
        return not self.landed

    @property
    def enqueued_at(self) -> float:
        """Epoch seconds the job was enqueued (this run's first push)."""
        record = self.settlement.record
        return record.created_at if record.created_at is not None else \
            self.settlement.lease.message.created_at

    @property
    def due_at(self) -> float:
        """When this attempt could first run: the enqueue, or later for a delayed job, a
        retry waiting out its delay, or a workflow step released when its parents finished
        (its message is pushed then: the record's enqueue is the whole workflow's, and a
        step waiting for a five-second parent did not wait five seconds in the queue)."""
        message = self.settlement.lease.message
        return max(self.enqueued_at, message.created_at, message.available_at)

    @property
    def started_at(self) -> float:
        record = self.settlement.record
        return record.started_at if record.started_at is not None else record.updated_at

    @property
    def finished_at(self) -> float:
        record = self.settlement.record
        return record.finished_at if record.finished_at is not None else record.updated_at

    @property
    def wait_secs(self) -> float:
        """Time waiting in the queue before this attempt started (from :attr:`due_at`)."""
        return max(0.0, self.started_at - self.due_at)

    @property
    def run_secs(self) -> float:
        """How long the attempt ran (its function; for a timeout, until it was given up)."""
        return max(0.0, self.finished_at - self.started_at)

    @property
    def retry_in(self) -> float | None:
        """Seconds until the next attempt, for a retried one."""
        return self.settlement.retry_in

    @property
    def deliveries_without_outcome(self) -> int:
        """Earlier deliveries of this message that ended with no outcome (their worker
        crashed or was killed, or lost the lease)."""
        lease = self.settlement.lease
        return max(0, lease.deliveries - 1 - lease.message.failures)
