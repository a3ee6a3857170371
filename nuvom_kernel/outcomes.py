"""Recording what happened to a job: success, retry, failure — then acking, in that order.

The worker pool (:mod:`nuvom_kernel.worker`) runs jobs; this half decides and stores their
outcomes. Two rules hold everywhere here: nothing is acked before its outcome is stored (a
store that fails leaves the lease to expire, so the job runs again: at least once), and a
worker that lost its lease writes nothing (fencing, DESIGN.md §3).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import random
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from nuvom_kernel import events
from nuvom_kernel.errors import SerializationError, UnknownTaskError
from nuvom_kernel.models import Backoff, Job, JobRecord, JobStatus, Lease
from nuvom_kernel.serialization import to_wire

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.serialization import Serializer

__all__ = ["OutcomeRecorder", "Running", "Success"]

log = logging.getLogger("nuvom.worker")


@attrs.define(eq=False)
class Running:
    """One job in an executor: the lease it runs under and whether its outcome is settled."""

    job: Job
    lease: Lease
    envelope: dict[str, Any]
    thread: threading.Thread
    started_at: float
    started_mono: float
    deadline: float | None
    extended_at: float
    settled: bool = False
    abandoned: bool = False
    lock: threading.Lock = attrs.field(factory=threading.Lock)


class Success(NamedTuple):
    """A succeeded job waiting for the settler: what to store, what to ack, what to log."""

    lease: Lease
    record: JobRecord | None  # None with store_result=False
    func_name: str
    attempt: int
    duration_ms: float


class OutcomeRecorder:
    """The worker's outcome half, as a mixin: :class:`~nuvom_kernel.worker.Worker` provides
    the backends, the running-job table and the settler queue declared here."""

    kernel: Kernel
    queue: QueueBackend
    results: ResultBackend
    serializer: Serializer
    visibility: float
    origin: str
    processed: int
    failed: int
    _running: dict[str, Running]
    _settle_q: stdqueue.SimpleQueue[Success | None]
    _settler: threading.Thread | None

    def _claim_settlement(self, running: Running) -> bool:
        with running.lock:
            if running.settled:
                return False
            running.settled = True
        self._running.pop(running.job.id, None)
        return True

    def _settle_success(self, running: Running, result: Any) -> None:
        job, lease = running.job, running.lease
        try:
            wire = (to_wire(result, f"{job.func_name}() return value")
                    if job.options.store_result else None)
        except SerializationError as exc:
            self._settle_failure(running, exc, "".join(traceback.format_exception(exc)))
            return
        if not self._claim_settlement(running):
            return
        finished = time.time()
        job.status, job.result = JobStatus.SUCCEEDED, result
        record = None
        if job.options.store_result:
            record = self._record(job, running.envelope, JobStatus.SUCCEEDED,
                                  running.started_at, finished)
            record.result = wire
        success = Success(lease, record, job.func_name, job.attempts,
                          (finished - running.started_at) * 1000)
        if self._settler is not None:
            self._settle_q.put(success)  # recorded, acked and logged by the settler
        else:  # executing outside a started pool (eager mode): settle right here
            self._settle_batch([success])
        self.processed += 1
        events.emit(self.kernel.pm, "nuvom_after_execute", job=job, result=result)

    def _settle_failure(self, running: Running, exc: BaseException, tb: str,
                        kind: str = "error") -> None:
        if not self._claim_settlement(running):
            return
        job, lease, envelope = running.job, running.lease, running.envelope
        finished = time.time()
        job.failures += 1
        job.history.append({
            "attempt": job.attempts, "kind": kind, "error_type": _qualname(exc),
            "error_message": str(exc), "started_at": running.started_at,
            "finished_at": finished, "worker": self.origin,
        })
        job.error_type, job.error, job.traceback = _qualname(exc), str(exc), tb
        events.emit(self.kernel.pm, "nuvom_on_execute_error", job=job, error=exc)
        retryable = not isinstance(exc, UnknownTaskError | SerializationError)
        if retryable and job.failures <= job.options.retries:
            delay = self._retry_delay(job)
            job.status = JobStatus.RETRYING
            record = self._record(job, envelope, JobStatus.RETRYING, running.started_at,
                                  finished)
            if not self._store(record, lease):
                return
            envelope["failures"], envelope["history"] = job.failures, job.history
            retried = self._safely("queue its retry", job.id, self.queue.retry, lease,
                                   delay_secs=delay, body=self.serializer.dumps(envelope))
            if retried is False:
                log.warning("job=%s lost its lease before the retry was queued; the worker "
                            "that now holds it decides", job.id)
            log.info("job=%s task=%s status=RETRYING attempt=%d error=%s retry_in_s=%.2f",
                     job.id, job.func_name, job.attempts, _qualname(exc), delay)
            events.emit(self.kernel.pm, "nuvom_on_retry", job=job, error=exc, delay_secs=delay)
            return
        self._finish_failed(job, lease, envelope, exc, tb, running.started_at, kind=kind,
                            recorded_history=True)

    def _finish_failed(self, job: Job, lease: Lease, envelope: dict[str, Any],
                       exc: BaseException, tb: str, started_at: float, *, kind: str,
                       recorded_history: bool = False) -> None:
        finished = time.time()
        if not recorded_history:
            job.history.append({"attempt": job.attempts, "kind": kind,
                                "error_type": _qualname(exc), "error_message": str(exc),
                                "started_at": started_at, "finished_at": finished,
                                "worker": self.origin})
        job.status = JobStatus.FAILED
        job.error_type, job.error, job.traceback = _qualname(exc), str(exc), tb
        record = self._record(job, envelope, JobStatus.FAILED, started_at, finished)
        if not self._store(record, lease):
            return
        self._ack(lease, job)
        self.failed += 1
        self.processed += 1
        log.info("job=%s task=%s status=FAILED attempt=%d error=%s: %s", job.id,
                 job.func_name, job.attempts, job.error_type, job.error)

    def _fail_undecodable(self, lease: Lease, exc: Exception) -> None:
        now = time.time()
        record = JobRecord(job_id=lease.id, func_name="<undecodable>", status=JobStatus.FAILED,
                           queue=lease.message.queue, error_type=_qualname(exc),
                           error_message=str(exc), attempts=lease.deliveries,
                           created_at=lease.message.created_at, started_at=now,
                           finished_at=now, updated_at=now, worker=self.origin)
        if self._store(record, lease):
            self._ack(lease, None)
            self.failed += 1
        log.error("job=%s status=FAILED error=%s: %s", lease.id, _qualname(exc), exc)

    def _record(self, job: Job, envelope: dict[str, Any], status: JobStatus,
                started_at: float, finished_at: float) -> JobRecord:
        return JobRecord(
            job_id=job.id, func_name=job.func_name, status=status, queue=job.queue,
            args=envelope["args"], kwargs=envelope["kwargs"], module=job.module,
            options=envelope["opts"],
            error_type=job.error_type if status is not JobStatus.SUCCEEDED else None,
            error_message=job.error if status is not JobStatus.SUCCEEDED else None,
            traceback=job.traceback if status is not JobStatus.SUCCEEDED else None,
            attempts=job.attempts, max_retries=job.options.retries, history=list(job.history),
            created_at=job.created_at, started_at=started_at,
            finished_at=finished_at if status is not JobStatus.RETRYING else None,
            updated_at=finished_at, worker=self.origin, trace_id=job.trace_id,
        )

    def _settle_loop(self) -> None:
        """Record and ack succeeded jobs in batches: one result transaction, then one ack
        transaction, for everything that finished meanwhile (group commit).

        Why: two commits per job were most of a job's cost on SQLite. Batching adds no wait
        — a lone job is written at once — and keeps the order that makes delivery at least
        once: nothing is acked before its record is stored, and a batch that cannot be
        stored is not acked at all (its leases expire and the jobs run again).
        """
        done = False
        while not done:
            first = self._settle_q.get()
            batch = [] if first is None else [first]
            done = first is None
            while len(batch) < 512:
                try:
                    item = self._settle_q.get_nowait()
                except stdqueue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            if batch:
                self._settle_batch(batch)

    def _settle_batch(self, batch: list[Success]) -> None:
        batch = [item for item in batch if self._holds(item.lease)]
        if not batch:
            return
        records = [item.record for item in batch if item.record is not None]
        if records:
            try:
                self.results.put_many(records)
            except Exception as exc:
                log.error("%d job outcome(s) could not be recorded (%r); not acked, they will "
                          "run again after the visibility timeout: %s", len(records), exc,
                          " ".join(f"job={r.job_id}" for r in records))
                return
        leases = [item.lease for item in batch]
        try:
            acked = self.queue.ack_many(leases)
        except Exception as exc:  # one bad ack must not re-run the whole batch
            log.warning("queue backend %r failed to ack a batch of %d (%r); acking one by one",
                        self.queue.name, len(leases), exc)
            acked = [bool(self._safely("ack it after its outcome was recorded", lease.id,
                                       self.queue.ack, lease)) for lease in leases]
        for item, ok in zip(batch, acked, strict=False):
            if ok:
                log.info("job=%s task=%s status=SUCCEEDED attempt=%d duration_ms=%.1f",
                         item.lease.id, item.func_name, item.attempt, item.duration_ms)
            else:
                log.warning("job=%s lost its lease before the ack; another worker may run it "
                            "again", item.lease.id)

    def _holds(self, lease: Lease) -> bool:
        """Whether this worker still holds ``lease``, checked before writing an outcome.

        Why: fencing tokens stop a worker that lost its lease (frozen by SIGSTOP, stalled
        past the visibility timeout) from acking, but the result backend has no token: its
        outcome would overwrite the one recorded by the worker that took the job over
        (DESIGN.md §3). A lease well inside its known expiry is held (nobody else can claim
        it yet), which is every normal job; only a job near or past expiry pays for one
        ``extend``, whose success also renews the lease for the write that follows.
        """
        if time.time() < lease.expires_at - min(1.0, self.visibility / 4):
            return True
        if self._safely("confirm it still holds the lease", lease.id, self.queue.extend,
                        lease, self.visibility):
            return True
        log.warning("job=%s lost its lease before its outcome was recorded (the worker was "
                    "paused or stalled past the visibility timeout); not recording it: the "
                    "worker that took the job over records the outcome", lease.id)
        return False

    def _store(self, record: JobRecord, lease: Lease) -> bool:
        """Write the outcome; on failure leave the lease to expire so the job runs again."""
        if not self._holds(lease):
            return False
        try:
            self.results.put(record)
            return True
        except Exception as exc:
            log.error("job=%s could not record its outcome (%r); not acked, it will run again "
                      "after the visibility timeout", record.job_id, exc)
            return False

    def _safely(self, what: str, job_id: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a queue backend operation; an exception is logged and returns ``None``.

        Why: a backend that fails now and then (a dropped connection, a locked file) must
        not kill the thread that called it. Every caller is safe with a lost call: the lease
        expires and the job runs again (at least once).
        """
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            log.error("job=%s: queue backend %r failed to %s (%r); its lease will expire and "
                      "the job run again", job_id, self.queue.name, what, exc)
            return None

    def _ack(self, lease: Lease, job: Job | None) -> None:
        acked = self._safely("ack it after its outcome was recorded", lease.id,
                             self.queue.ack, lease)
        if acked is False:
            log.warning("job=%s lost its lease before the ack (it ran past the visibility "
                        "timeout without extension); another worker may run it again",
                        lease.id)

    def _retry_delay(self, job: Job) -> float:
        opts = job.options
        base = (opts.retry_delay_secs if opts.retry_delay_secs is not None
                else self.kernel.settings.retry_delay_secs)
        if opts.backoff is Backoff.EXPONENTIAL:
            delay = min(base * 2 ** (job.failures - 1), opts.backoff_max_secs)
            return delay / 2 + random.uniform(0, delay / 2) if opts.jitter else delay
        return base

    # --- monitor ------------------------------------------------------------------------


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
