"""Running one job: delivery limit → decode → resolve → call → decide the outcome → settle.

Kept apart from the pool's threads so the same path serves a started pool and a single
job run on its own (eager/test mode, ``Worker.run_one``). Whatever the task raises —
``BaseException`` subclasses included — is a failed attempt, never a dead thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from nuvom_kernel import events
from nuvom_kernel.envelope import Envelope, EnvelopeVersionError
from nuvom_kernel.errors import (
    JobExpiredError,
    JobTimeoutError,
    NuvomError,
    SerializationError,
    UnknownTaskError,
    encoding_error,
)
from nuvom_kernel.events import HookInterrupted
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobStatus, Lease
from nuvom_kernel.worker.aio import run_on_thread_loop
from nuvom_kernel.worker.child_process import NoChildYet
from nuvom_kernel.worker.current import bind_job, current_job, in_a_pool
from nuvom_kernel.worker.monitor import LeaseMonitor
from nuvom_kernel.worker.settle import Running, Settler
from nuvom_kernel.workflow.graph import WF_HEADER
from nuvom_kernel.workflow.handle import resolve_input

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.worker.aio import AsyncPool
    from nuvom_kernel.worker.processes import ProcessPool

__all__ = ["HookInterrupted", "JobRunner", "bind_job", "current_job"]

log = logging.getLogger("nuvom.worker")

#: How long (at most; see :func:`_jittered`) a job a newer release enqueued waits before a
#: worker looks at it again.
NEWER_RELEASE_SECS = 10.0


def _jittered(secs: float) -> float:
    """30-90 % of ``secs``, for a job put back for another worker. A worker's idle claim
    loop starts again every ``poll_timeout_secs`` (1 s) with an immediate claim, so a
    delay of whole seconds lined up with it: the worker that put the job back took it again
    the moment it was due, every time, and a newer worker (its claims 0.1 s apart) never
    got it; a job of a task the old worker lacked failed when its grace ran out."""
    return secs * random.uniform(0.3, 0.9)


class JobRunner:
    """Runs leases to a settlement.

    :param running: the pool's table of started, unsettled jobs (the monitor reads it).
    :param slot_back: called when an abandoned (timed-out) job's function finally returns;
        ``True`` if the calling thread may go on serving the pool.
    """

    def __init__(self, kernel: Kernel, settler: Settler, running: dict[str, Running],
                 monitor: LeaseMonitor, slot_back: Callable[[Running], bool]) -> None:
        self.kernel = kernel
        self.settler = settler
        self.running = running
        self.monitor = monitor
        self.slot_back = slot_back
        self.serializer = kernel.serializer
        #: Set by a process pool: the function runs in a child, not on this thread.
        self.processes: ProcessPool | None = None
        #: How long after a job's deadline the monitor gives up its thread: at once in the
        #: thread pool; in the process pool only if the child was not killed in time (the
        #: thread is stuck in a hook, not in the child). ``None`` in the asyncio pool: the
        #: pool sets the monitor's deadline itself, ``kill_grace_secs`` after its timeout
        #: cancelled a coroutine, or after a sync task's thread took it (:mod:`.aio`).
        self.monitor_slack: float | None = 0.0
        #: Set when a thread or asyncio pool starts: a job that returns after its deadline
        #: is timed out (:meth:`_succeed_in_time`). Not in eager mode (``run_one`` on a
        #: pool never started), where docs/testing.md says timeouts are not enforced.
        self.deadlines_kept = False
        self._coroutine: dict[Callable[..., Any], bool] = {}
        self._newer_warned_at = float("-inf")  # see _leave_for_newer
        self._newer_seen = 0

    def run_one(self, lease: Lease) -> bool:
        """Run ``lease`` to its settlement; ``False`` if the calling thread was abandoned
        after a timeout and must leave the pool. Never raises for what a task does."""
        try:
            running = self._begin(lease)
            if running is None:
                return True
            return self._run(running)
        except Exception:  # a bug or a backend error outside the task: the lease expires
            self.running.pop(lease.id, None)
            log.exception("job=%s: unexpected error in the worker; not acked, it will run "
                          "again after the visibility timeout", lease.id)
            return True

    def _begin(self, lease: Lease) -> Running | None:
        """Check the delivery limit, decode, resolve the task; a Running job or ``None``
        when the lease was settled or handed back instead."""
        started_at, started_mono = time.time(), time.monotonic()
        message = lease.message
        settings = self.kernel.settings
        without_outcome = lease.deliveries - 1 - message.failures
        if without_outcome >= settings.max_deliveries:
            error = NuvomError(
                f"job was delivered {without_outcome} times without an outcome (each time "
                f"a worker crashed or was killed, e.g. out of memory, or stopped and gave "
                f"it up still running after its grace period); raise max_deliveries "
                f"(NUVOM_MAX_DELIVERIES or [settings] max_deliveries, now "
                f"{settings.max_deliveries}) to allow more")
            self.settler.submit(self.settler.without_envelope(lease, error, "dead"))
            return None
        try:
            envelope = Envelope.from_message(message, self.serializer)
            job = envelope.job(JobStatus.RUNNING)
        except EnvelopeVersionError as exc:
            self._leave_for_newer(lease, exc)
            return None
        except SerializationError as exc:
            self._undecodable(lease, exc)
            return None
        if WF_HEADER in job.headers:  # a workflow step: its parents' results first
            try:  # (a sound message: a parent's result purged or unreadable)
                resolve_input(self.kernel, job)
            except SerializationError as exc:
                self.settler.submit(self.settler.without_envelope(lease, exc, "undecodable"))
                return None
        job.attempts = lease.deliveries
        job.failures = max(message.failures, envelope.legacy_failures)
        job._kernel = self.kernel
        timeout = job.options.timeout_secs or settings.job_timeout_secs
        deadline = started_mono + timeout if timeout else None
        job.deadline = deadline
        slack = self.monitor_slack
        running = Running(job, lease, envelope, threading.current_thread(), started_at,
                          started_mono, None if deadline is None or slack is None
                          else deadline + slack, extended_at=started_mono)
        expires = job.options.expires_secs
        # the message's enqueue: a workflow step's, when its parents released it
        if expires is not None and lease.deliveries == 1 \
                and (waited := self.waited(lease)) > expires:
            self._expire(running, expires, waited)
            return None
        self.running[job.id] = running
        if deadline is not None:
            self.monitor.wake()
        return running

    def _run(self, running: Running) -> bool:
        try:
            with bind_job(running.job):
                result = self._call(running)
        except HookInterrupted:
            raise
        except BaseException as exc:  # a task's failure is data, whatever it raised
            self._failed(running, exc)
        else:  # (no frame more for a job without a deadline: most jobs)
            (self._succeed if running.job.deadline is None
             else self._succeed_in_time)(running, result)
        return not running.abandoned or self.slot_back(running)

    def _succeed_in_time(self, running: Running, result: Any) -> None:
        """:meth:`_succeed`, unless the job returned past its deadline before the monitor
        acted (a busy CPU, a task holding the GIL): it was recorded SUCCEEDED (a 0.8 s task
        of ``timeout_secs=0.3`` 4-16 times in 5,000 in a soak), though the docs say an
        attempt past its timeout is timed out. Not in eager mode (``deadlines_kept``)."""
        deadline = running.job.deadline
        if deadline is not None and self.deadlines_kept and time.monotonic() > deadline:
            job = running.job
            self._failed(running, JobTimeoutError.of(
                job, job.options.timeout_secs or self.kernel.settings.job_timeout_secs,
                "(it returned after its deadline, before the worker stopped it; its result "
                "is not kept)"))
        else:
            self._succeed(running, result)

    def _call(self, running: Running) -> Any:
        job = running.job
        if self.processes is not None:  # the child resolves and imports the task
            return self.processes.call(running, partial(
                events.emit, self.kernel.pm, "nuvom_before_execute", job=job))
        func = self.resolve(job)
        events.emit(self.kernel.pm, "nuvom_before_execute", job=job)
        if self._is_coroutine(func):
            if running.deadline is not None:  # the coroutine is cancelled at the deadline;
                # the thread is given up only if cancelling did not stop it
                running.deadline += self.kernel.settings.kill_grace_secs
            return run_on_thread_loop(func(*job.args, **job.kwargs), job)
        return func(*job.args, **job.kwargs)

    async def run_async(self, lease: Lease, pool: AsyncPool) -> Running | None:
        """The asyncio pool's :meth:`run_one`: the same path, awaiting the call. Returns the
        job's :class:`Running` (``None`` if the lease was settled or handed back before it
        started), whose ``abandoned`` tells the pool the slot was given up already."""
        running: Running | None = None
        in_a_pool()  # this job's own context (a task's, copied from its submitter's)
        try:
            running = self._begin(lease)
            if running is None:
                return None
            try:
                with bind_job(running.job):
                    func = self._known(running.job)
                    if func is None:  # its module's first job: imported off the loop (an
                        # import of seconds held every coroutine, and one that runs a loop
                        # of its own, asyncio.run() at import, failed here only)
                        func = await asyncio.to_thread(self.resolve, running.job)
                    events.emit(self.kernel.pm, "nuvom_before_execute", job=running.job)
                    coroutine = self._is_coroutine(func)
                    result = await pool.call(func, running, coroutine)
            except BaseException as exc:  # CancelledError too: only a forced stop cancels,
                self._failed(running, exc)  # and then the outcome was already given up
            else:  # a coroutine that never awaited ends as it ended (docs/workers.md)
                (self._succeed if coroutine else self._succeed_in_time)(running, result)
        except Exception:  # as in run_one: a bug or a backend error outside the task must
            # not leave the job held (its lease extended by the monitor forever): the
            # outcome is claimed, so the monitor cannot time it out now, and the lease expires
            if running is not None:
                running.decide()
            self.running.pop(lease.id, None)
            log.exception("job=%s: unexpected error in the worker; not acked, it will run "
                          "again after the visibility timeout", lease.id)
        return running

    def _is_coroutine(self, func: Callable[..., Any]) -> bool:
        """``inspect.iscoroutinefunction``, once per function (it was a µs per job)."""
        try:
            return self._coroutine[func]
        except KeyError:
            is_coroutine = self._coroutine[func] = inspect.iscoroutinefunction(func)
            return is_coroutine
        except TypeError:  # an unhashable callable (an instance with __call__)
            return inspect.iscoroutinefunction(func)

    def resolve(self, job: Job) -> Callable[..., Any]:
        fn = self.kernel.registry.resolve(job.task, job.module)
        return getattr(fn, "fn", fn)  # type: ignore[no-any-return]

    def _known(self, job: Job) -> Callable[..., Any] | None:
        """:meth:`resolve` without an import; ``None`` if it would import."""
        fn = self.kernel.registry.known(job.task, job.module)
        return None if fn is None else getattr(fn, "fn", fn)

    def _failed(self, running: Running, exc: BaseException) -> None:
        if isinstance(exc, UnknownTaskError) and self._hand_back(running, exc):
            return
        if isinstance(exc, NoChildYet) and self._give_back_unrun(running):
            return
        # The child's own traceback for an error the process pool rebuilt from its reply;
        # for anything else, where it was raised. (A task's exception with a
        # ``remote_traceback`` of its own, a JobFailedError of another job it waited for
        # among them, recorded that traceback as this job's; a non-str one was not stored
        # at all, and the job ran again at every visibility timeout.)
        child = getattr(exc, "child_traceback", None) if isinstance(exc, NuvomError) else None
        tb = child if isinstance(child, str) else "".join(traceback.format_exception(exc))
        self.fail(running, exc, tb, kind="timeout" if isinstance(exc, JobTimeoutError)
                  else "error")

    def _succeed(self, running: Running, result: Any) -> None:
        try:
            settlement = self.settler.success(running, result)
        except Exception as exc:  # not only SerializationError: a value nested too deep
            # (or holding itself) raises RecursionError, which left the lease to expire and
            # the job to run again until the delivery limit called it a crash
            self.fail(running, encoding_error(running.job.task, exc),
                      "".join(traceback.format_exception(exc)))
            return
        if not running.decide():
            return
        running.job.status, running.job.result = JobStatus.SUCCEEDED, result
        self.settler.submit(settlement)
        events.emit(self.kernel.pm, "nuvom_after_execute", job=running.job, result=result)

    def fail(self, running: Running, exc: BaseException, tb: str, kind: str = "error",
              decided: bool = False) -> None:
        if not decided and not running.decide():
            return
        settlement = self.settler.failure(running, exc, tb, kind)
        job = running.job
        # Settle first, observe after: an observer that blocks (or is slow) must not hold
        # the outcome back, or the monitor would keep the job's lease alive forever.
        self.settler.submit(settlement)
        events.emit(self.kernel.pm, "nuvom_on_execute_error", job=job, error=exc)
        if settlement.retry_in is not None:
            events.emit(self.kernel.pm, "nuvom_on_retry", job=job, error=exc,
                        delay_secs=settlement.retry_in)

    def waited(self, lease: Lease) -> float:
        """Seconds from the message's enqueue to this claim, both on the queue's clock: the
        claim's time is the lease's expiry less the visibility timeout.

        Why not this worker's clock against the enqueue: Redis and PostgreSQL stamp both on
        the server's clock, and a worker whose clock was minutes ahead of it failed every
        ``expires_secs`` job it claimed, unrun, as "not started in time". (A job claimed
        ahead of a busy thread counts as started at its claim.)"""
        return (lease.expires_at - self.settler.queue.visibility_timeout_secs
                - lease.message.created_at)

    def _expire(self, running: Running, expires: float, waited: float) -> None:
        """Fail a job that waited past its ``expires_secs`` without running it. Settled like
        any failure, but without the execute hooks: nothing was executed (observers still
        see its outcome through ``nuvom_after_settle``)."""
        job = running.job
        exc = JobExpiredError(
            f"job {job.id} ({job.task}) was not started within its expires_secs of "
            f"{expires:.3g} s (it waited {waited:.3g} s from its "
            "enqueue to its claim), so it never ran; `nuvom retry job` enqueues it again "
            "(its expiry counts from then)")
        running.decide()
        self.settler.submit(self.settler.failure(running, exc, "", kind="expired"))
        # (not logged here too: the settled attempt's status line carries the message)

    def _undecodable(self, lease: Lease, exc: SerializationError) -> None:
        """Fail a job whose message does not decode, its stored bytes first copied to the
        queue backend's quarantine where it keeps one (``nuvom status`` lists it). Why: the
        failure's ack deleted the only copy of what was stored (a body edited by hand or
        written by another tool), where a damaged entry is to be quarantined, not dropped.
        A copy the store fails to make is said in the record, which is settled all the same:
        left to expire, the lease came back until the delivery limit failed the job as one
        whose workers crashed, its bytes dropped then anyway."""
        queue = self.settler.queue
        kept = ("; the message as stored is kept in the queue backend's quarantine (`nuvom "
                "status` lists it)")
        try:
            copied = queue.copy_to_quarantine(lease, f"its body cannot be decoded: {exc}")
        except NotImplementedError:  # optional: the record alone says why
            copied, kept = None, ""
        except Exception as failed:
            copied, kept = None, (f"; copying the message as stored to the queue backend's "
                                  f"quarantine failed too ({failed!r}): it is not kept")
            log.error("job=%s: its message does not decode (%s), and queue backend %r failed "
                      "to copy it to quarantine (%r)", lease.id, exc, queue.name, failed)
        if copied is False:  # the lease was lost: its new holder decides
            return
        error = SerializationError(f"{exc}{kept}") if kept else exc
        self.settler.submit(self.settler.without_envelope(lease, error, "undecodable"))

    def _leave_for_newer(self, lease: Lease, exc: EnvelopeVersionError) -> None:
        """Put back, for :data:`NEWER_RELEASE_SECS`, a job a newer release enqueued.

        Why not fail it, as a message that does not decode is failed: its record could hold
        none of its arguments (this worker cannot read them), so the job was lost for good,
        where a newer worker would run it. It waits in the queue instead (the release takes
        the delivery back: no delivery limit is reached), and the worker says why, at most
        once a minute.
        """
        self.settler.safely("leave it for a newer worker", lease, self.settler.queue.release,
                            lease, delay_secs=_jittered(NEWER_RELEASE_SECS))
        now = time.monotonic()
        self._newer_seen += 1
        if now >= self._newer_warned_at + 60.0:
            log.warning("%s; left in the queue for a worker of a newer release (%d such "
                        "job(s) seen in the last minute): upgrade this worker", exc,
                        self._newer_seen)
            self._newer_warned_at, self._newer_seen = now, 0

    def _give_back_unrun(self, running: Running) -> bool:
        """Put back a job that never reached a process-pool child (the worker stopped while
        the child started); ``True`` if given back. The release takes its delivery back."""
        if not running.decide():
            return False
        self.running.pop(running.job.id, None)
        queue = self.settler.queue
        if self.settler.safely("give it back", running.lease, queue.release, running.lease):
            log.info("job=%s task=%s: the worker stopped before a pool child was ready to "
                     "run it; given back to its queue", running.job.id, running.job.task)
        return True

    def _hand_back(self, running: Running, exc: UnknownTaskError) -> bool:
        """During a rolling deploy, give a job whose task this (older) worker lacks back to
        the queue for ``unknown_task_grace_secs`` after enqueue; ``True`` if handed back."""
        grace = self.kernel.settings.unknown_task_grace_secs
        left = running.envelope.created_at + grace - time.time()
        if exc.import_failed or left <= 0 or not running.decide():
            return False
        self.running.pop(running.job.id, None)
        queue = self.settler.queue
        if self.settler.safely("hand it back", running.lease, queue.release, running.lease,
                               delay_secs=_jittered(min(1.0, left))):
            log.warning("job=%s: this worker has no task %r (an older deploy?); handed back "
                        "for another worker (%.0f s of unknown_task_grace_secs left)",
                        running.job.id, running.job.task, left)
        return True
