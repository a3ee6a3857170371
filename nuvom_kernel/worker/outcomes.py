"""Outcomes: the settlement each way a job can end — returned, raised, never run, unstorable.

:class:`Outcomes` turns what happened to a job into the one
:class:`~nuvom_kernel.models.Settlement` every outcome becomes: the record to store (its
status, its history entry, its error made storable) and, for a failure a retry may fix, the
retry's delay and message. It decides nothing about storing: :mod:`.landing` lands what is
built here, whatever it is. Separate because the two change for different reasons (what a
record says, against what a store does). A mixin of
:class:`~nuvom_kernel.worker.settle.Settler`, not an object of its own: an executor's
``settler.success(...)`` stays one method call per job.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import (
    JobExpiredError,
    NoRetry,
    NuvomError,
    Retry,
    SerializationError,
    UnknownTaskError,
    error_text,
    qualname,
)
from nuvom_kernel.models import Backoff, JobRecord, JobStatus, Lease, Settlement
from nuvom_kernel.serialization import from_wire, to_wire
from nuvom_kernel.workflow.graph import WF_HEADER

if TYPE_CHECKING:
    from nuvom_kernel.backends import ResultBackend
    from nuvom_kernel.job import Job
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.serialization import Serializer
    from nuvom_kernel.worker.settle import Running

__all__ = ["NEVER_RAN", "Outcomes"]

log = logging.getLogger("nuvom.worker")

#: History kinds of a message failed without running (``without_envelope``).
NEVER_RAN = ("dead", "undecodable")


def _storable(text: str) -> str:
    """``text`` as UTF-8 can hold it: an exception's message may carry lone surrogates (a
    file name decoded with ``surrogateescape``), which no store's UTF-8 encoder takes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


class Outcomes:
    """The outcome-building half of :class:`~nuvom_kernel.worker.settle.Settler`."""

    # The settler's, set in Settler.__init__ (annotations only: nothing here at runtime).
    kernel: Kernel
    results: ResultBackend
    serializer: Serializer
    origin: str

    def success(self, running: Running, result: Any) -> Settlement:
        """The settlement of a returned value (stored only with ``store_result``).

        :raises SerializationError: the value cannot be stored; the caller fails the job.
        """
        job = running.job
        wire = (to_wire(result, f"{job.task}() return value")
                if job.options.store_result else None)
        finished = time.time()
        record = running.envelope.succeeded(wire, job.attempts, running.lease.token,
                                            running.started_at, finished, self.origin)
        return Settlement(running.lease, record,
                          workflow=running.envelope.headers.get(WF_HEADER))

    def failure(self, running: Running, exc: BaseException, tb: str, kind: str = "error"
                ) -> Settlement:
        """A failed attempt: RETRYING (message back with a delay) while the task's
        ``retries`` allow and the error is one a retry can fix, else FAILED."""
        job, envelope = running.job, running.envelope
        finished = time.time()
        job.failures += 1
        message, tb = _storable(error_text(exc)), _storable(tb)  # a __str__ may raise
        entry = {"attempt": job.attempts, "run": job.run, "kind": kind,
                 "error_type": qualname(exc), "error_message": message,
                 "started_at": running.started_at, "finished_at": finished,
                 "worker": self.origin}
        details = getattr(exc, "details", None)
        if isinstance(details, dict) and isinstance(exc, NuvomError) \
                and type(exc).__module__.startswith("nuvom_kernel."):
            # a pool child's signal and rusage; not a task's own ``details`` (a method, as
            # on a gRPC error, left the attempt unrecorded; a dict overwrote the entry),
            # nor those of a task's subclass of Retry or NoRetry
            entry.update(details)
        envelope.history.append(entry)
        job.history = list(envelope.history)
        job.error_type, job.error, job.traceback = qualname(exc), message, tb
        retryable = not isinstance(exc, UnknownTaskError | SerializationError | NoRetry
                                   | JobExpiredError)
        status = (JobStatus.RETRYING if retryable and job.failures <= job.options.retries
                  else JobStatus.FAILED)
        job.status = status
        record = envelope.record(
            status, attempts=job.attempts, token=running.lease.token,
            error_type=job.error_type, error_message=job.error, traceback=tb,
            started_at=running.started_at,
            finished_at=finished if status is JobStatus.FAILED else None,
            updated_at=finished, worker=self.origin)
        if status is JobStatus.FAILED:
            return Settlement(running.lease, record, workflow=envelope.headers.get(WF_HEADER))
        asked = exc.delay_secs if isinstance(exc, Retry) else None
        return Settlement(running.lease, record,
                          retry_in=self.retry_delay(job) if asked is None else asked,
                          body=envelope.to_body(self.serializer))

    def without_envelope(self, lease: Lease, error: Exception, kind: str) -> Settlement:
        """FAILED for a message never run: it does not decode, or it was delivered too
        often without an outcome. The stored record (else the message) gives the arguments, the
        message the run (the stored one when the body does not decode)."""
        now = time.time()
        stored = self._stored(lease.id)
        envelope = self._decoded(lease)
        base = stored or self._from_message(lease, envelope)
        # Fenced by the message's own run, not the stored one: a stale message's failure
        # must not replace a newer run's outcome (see _rebased).
        run = base.run if envelope is None else envelope.run
        message = _storable(error_text(error))  # a decoder's error may carry anything
        history = [*base.history, {"attempt": lease.deliveries, "run": run, "kind": kind,
                                   "error_type": qualname(error), "error_message": message,
                                   "started_at": now, "finished_at": now,
                                   "worker": self.origin}]
        record = attrs.evolve(base, status=JobStatus.FAILED, error_type=qualname(error),
                              error_message=message, traceback=None, run=run,
                              attempts=lease.deliveries, token=lease.token, history=history,
                              result=None, started_at=now, finished_at=now, updated_at=now,
                              worker=self.origin)
        return Settlement(lease, record, workflow=self._workflow_of(lease, envelope))

    @staticmethod
    def _from_message(lease: Lease, envelope: Envelope | None) -> JobRecord:
        """The record of a message never recorded: what its envelope says it was (its
        arguments, its task's retries), else what its header can (its arguments may be
        what does not decode)."""
        if envelope is not None:
            try:
                record = envelope.record(JobStatus.FAILED)
                from_wire([record.args, record.kwargs])  # what readers of the record do
                return record
            except Exception:  # its arguments may be the poison itself
                pass
        return JobRecord(job_id=lease.id, task=lease.message.task or "<undecodable>",
                         status=JobStatus.FAILED, queue=lease.message.queue,
                         created_at=lease.message.created_at)

    def _workflow_of(self, lease: Lease, envelope: Envelope | None) -> str | None:
        """The workflow of a step failed without running, so its node ends with it: its
        envelope's header, or, for a body that does not decode, the graph's node of its id.
        Without the second, such a step was acked with its graph never moved (a stranded
        step: its workflow RUNNING, its dependents waiting, until ``nuvom workflow
        resume``). Looked up only for an undecodable message, which is rare."""
        if envelope is not None:
            return envelope.headers.get(WF_HEADER)
        queue = self.kernel.queue
        if not queue.capabilities.workflows:
            return None
        try:
            node = queue.workflow_step(lease.id)
        except Exception as exc:  # the step still fails; `nuvom workflow resume` mends it
            log.warning("job=%s: could not look up its workflow step (%r)", lease.id, exc)
            return None
        return None if node is None else node.workflow

    def _decoded(self, lease: Lease) -> Envelope | None:
        try:
            return Envelope.from_message(lease.message, self.serializer)
        except SerializationError:
            return None

    def _stored(self, job_id: str) -> JobRecord | None:
        try:
            return self.results.get(job_id)
        except Exception as exc:  # an unreadable record must not stop failing the job
            log.warning("job=%s: its stored record could not be read (%r)", job_id, exc)
            return None

    def retry_delay(self, job: Job) -> float:
        opts = job.options
        base: float = (opts.retry_delay_secs if opts.retry_delay_secs is not None
                       else self.kernel.settings.retry_delay_secs)
        if opts.backoff is Backoff.EXPONENTIAL:
            delay: float = min(base * 2 ** (job.failures - 1), opts.backoff_max_secs)
            return delay / 2 + random.uniform(0, delay / 2) if opts.jitter else delay
        return base

    def _unstorable(self, item: Settlement, exc: Exception, bare: bool) -> Settlement:
        """``item`` failed for good: its record (a result, an error text) cannot be stored;
        ``bare``: nor its arguments, options or earlier attempts."""
        record = item.record
        now = time.time()
        error = _storable(f"job {record.job_id} ({record.task}): its outcome "
                          f"({record.status.value}) cannot be stored by the "
                          f"{self.results.name!r} result backend: {type(exc).__name__}: "
                          f"{error_text(exc)}"
                          + ("; nor can its arguments, options or earlier errors, which are "
                             "not kept" if bare else ""))
        log.error("%s; it is stored as FAILED instead", error)
        kind = qualname(SerializationError(error))
        entry = {"attempt": record.attempts, "run": record.run, "kind": "unstorable",
                 "error_type": kind, "error_message": error, "started_at": record.started_at,
                 "finished_at": now, "worker": self.origin}
        failed = attrs.evolve(record, status=JobStatus.FAILED, result=None,
                              error_type=kind, error_message=error, traceback=None,
                              history=[entry] if bare else [*record.history, entry],
                              finished_at=now, updated_at=now)
        if bare:
            failed = attrs.evolve(failed, args=[], kwargs={}, options={})
        return Settlement(item.lease, failed, workflow=item.workflow)
