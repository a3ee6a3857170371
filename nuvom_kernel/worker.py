"""The worker pool: lease → execute → record → ack, with retries, timeouts, hooks, signals.

Three kinds of thread:

* one **dispatcher** leases jobs with ``pop_batch`` — never more than there are idle
  executors, so jobs are not hoarded while other workers sit idle — and hands them over;
* **executors** (``workers`` of them) run one job at a time;
* one **monitor** extends the leases of running jobs and enforces timeouts. A thread cannot be
  killed, so a timed-out job is recorded as timed out, its executor is abandoned (its eventual
  return value is ignored) and a fresh executor takes its slot, keeping the pool's capacity.

Delivery is at least once: a job is acked only after its outcome is recorded. A retry goes back
to the queue with a delay (``queue.retry``), so it never blocks the jobs behind it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue as stdqueue
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel import events
from nuvom_kernel.dispatcher import decode_message, origin
from nuvom_kernel.errors import JobTimeoutError, NuvomError, SerializationError
from nuvom_kernel.models import Job, Lease
from nuvom_kernel.outcomes import OutcomeRecorder, Running, Success

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["Worker", "current_job"]

log = logging.getLogger("nuvom.worker")
_local = threading.local()


def current_job() -> Job | None:
    """The job the calling task is running as (``None`` outside a worker); use
    ``current_job().time_remaining()`` to stop cooperatively before a timeout."""
    return getattr(_local, "job", None)


class Worker(OutcomeRecorder):
    """A pool of executor threads serving one kernel's queue backend.

    :param workers: executor threads (default: the ``max_workers`` setting).
    :param queues: named queues to serve (default: every queue).
    :param batch_size: most jobs leased per ``pop_batch`` (default: ``batch_size`` setting).
    :param grace_period_secs: how long a graceful stop waits for running jobs.
    """

    def __init__(
        self,
        kernel: Kernel,
        *,
        workers: int | None = None,
        queues: Sequence[str] | None = None,
        batch_size: int | None = None,
        grace_period_secs: float | None = None,
        poll_timeout_secs: float = 1.0,
    ) -> None:
        settings = kernel.settings
        self.kernel = kernel
        self.workers = workers or settings.max_workers
        self.queues = list(queues) if queues else None
        self.batch_size = batch_size or settings.batch_size
        self.grace_period_secs = (settings.grace_period_secs if grace_period_secs is None
                                  else grace_period_secs)
        self.poll_timeout_secs = poll_timeout_secs
        self.queue = kernel.queue
        self.results = kernel.results
        self.serializer = kernel.serializer
        self.visibility = self.queue.visibility_timeout_secs
        self.origin = origin()
        self.processed = 0
        self.failed = 0
        self._cv = threading.Condition()
        self._free = 0
        self._handoff: stdqueue.SimpleQueue[Lease | None] = stdqueue.SimpleQueue()
        self._settle_q: stdqueue.SimpleQueue[Success | None] = stdqueue.SimpleQueue()
        self._settler: threading.Thread | None = None
        self._running: dict[str, Running] = {}
        self._monitor_cv = threading.Condition()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._abandoned: set[threading.Thread] = set()
        self._signals = 0
        self._in_lifecycle_hook = False  # the main thread is inside startup/shutdown hooks

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads and return; :meth:`stop` and :meth:`join` end them."""
        self.kernel.registry.load_manifest(self.kernel.data_dir)
        for _ in range(self.workers):
            self._spawn_executor()
        for target, name in ((self._dispatch_loop, "nuvom-dispatcher"),
                             (self._monitor_loop, "nuvom-monitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._settler = threading.Thread(target=self._settle_loop, name="nuvom-settler",
                                         daemon=True)
        self._settler.start()
        self._emit_lifecycle("nuvom_worker_startup")
        log.info("worker %s started: %d threads, queues=%s, backend=%s", self.origin,
                 self.workers, ",".join(self.queues or ["*"]), self.queue.name)

    def stop(self, graceful: bool = True) -> None:
        """Stop leasing; a graceful stop lets running jobs finish, a forced one does not."""
        self._stopping.set()
        if not graceful:
            self._forced.set()
        self.queue.notify()
        with self._cv:
            self._cv.notify_all()
        with self._monitor_cv:
            self._monitor_cv.notify_all()

    def run(self, install_signals: bool = True) -> int:
        """Run until stopped (by signal or :meth:`stop`); returns the process exit code:
        0 after a clean drain, 1 if running jobs had to be abandoned."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        self.start()
        while not self._stopping.wait(0.5):
            pass
        return self.join()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("received %s: finishing running jobs (up to %.0f s); signal again to "
                        "stop at once", signal.Signals(signum).name, self.grace_period_secs)
            self.stop(graceful=True)
        else:
            log.warning("received %s again: stopping now", signal.Signals(signum).name)
            self.stop(graceful=False)
        if self._in_lifecycle_hook and threading.current_thread() is threading.main_thread():
            # A startup/shutdown hook is holding the main thread (maybe forever): leave it,
            # or run() could never reach the drain and the signal would change nothing.
            raise _HookInterrupted

    def _emit_lifecycle(self, hook_name: str) -> None:
        """Emit a worker lifecycle hook; a signal may interrupt it (see ``_on_signal``)."""
        main = threading.current_thread() is threading.main_thread()
        try:
            self._in_lifecycle_hook = main
            events.emit(self.kernel.pm, hook_name, worker=self)
        except _HookInterrupted:
            log.error("a plugin's %s hook was still running when the worker was signalled; "
                      "it was interrupted", hook_name)
        finally:
            if main:
                self._in_lifecycle_hook = False

    def join(self) -> int:
        """Finish a stop: return unstarted leases, wait for running jobs, emit shutdown."""
        self._release_unstarted()
        deadline = time.monotonic() + self.grace_period_secs
        while self._running and not self._forced.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._forced.wait(min(0.05, remaining))
            self._release_unstarted()
        clean = not self._running
        for running in list(self._running.values()):  # grace expired or forced
            with running.lock:
                if running.settled:
                    continue
                running.settled = True
                # Its thread is still inside the task: never join it below, or a forced
                # stop would wait out the whole join deadline for a job already given up.
                self._abandoned.add(running.thread)
            if self._safely("return it to the queue", running.job.id, self.queue.retry,
                            running.lease, delay_secs=0):  # runs again; attempt counted
                log.warning("job=%s task=%s abandoned at shutdown; returned to the queue",
                            running.job.id, running.job.func_name)
        self._running.clear()
        for _ in range(len(self._threads)):
            self._handoff.put(None)
        self._stopped.set()
        with self._monitor_cv:
            self._monitor_cv.notify_all()
        # Wait for our threads to leave the backend before anyone closes it; a thread stuck
        # in a timed-out task is abandoned and never joined.
        join_deadline = time.monotonic() + self.poll_timeout_secs + 5.0
        for thread in self._threads:
            if thread is not threading.current_thread() and thread not in self._abandoned:
                thread.join(max(0.0, join_deadline - time.monotonic()))
        if self._settler is not None:  # record and ack what finished, before shutdown
            self._settle_q.put(None)
            self._settler.join(max(5.0, join_deadline - time.monotonic()))
        self._emit_lifecycle("nuvom_worker_shutdown")
        log.info("worker %s stopped: %d jobs processed (%d failed)%s", self.origin,
                 self.processed, self.failed, "" if clean else ", running jobs abandoned")
        return 0 if clean else 1

    def _release_unstarted(self) -> None:
        while True:
            try:
                lease = self._handoff.get_nowait()
            except stdqueue.Empty:
                return
            if lease is not None:
                self._safely("release it", lease.id, self.queue.release, lease)
                with self._cv:
                    self._free += 1

    # --- dispatcher ---------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._cv:
                while self._free <= 0 and not self._stopping.is_set():
                    self._cv.wait()
                wanted = min(self._free, self.batch_size)
            if self._stopping.is_set():
                return
            try:
                leases = self.queue.pop_batch(wanted, self.poll_timeout_secs, self.queues)
                failures = 0
            except Exception:
                failures += 1
                backoff = min(0.05 * 2 ** min(failures, 6), 2.0)
                log.exception("queue backend %r failed to lease jobs; retrying in %.2f s",
                              self.queue.name, backoff)
                self._stopping.wait(backoff)
                continue
            with self._cv:
                self._free -= len(leases)
            for lease in leases:
                if self._stopping.is_set():
                    self._safely("release it", lease.id, self.queue.release, lease)
                    with self._cv:
                        self._free += 1
                else:
                    self._handoff.put(lease)

    # --- executors ----------------------------------------------------------------------

    def _spawn_executor(self) -> None:
        thread = threading.Thread(target=self._executor_loop, name="nuvom-executor",
                                  daemon=True)
        with self._cv:
            self._free += 1
            self._cv.notify()
        thread.start()
        self._threads.append(thread)

    def _executor_loop(self) -> None:
        while True:
            lease = self._handoff.get()
            if lease is None:
                return
            if self._stopping.is_set():  # leased but not started: straight back
                self._safely("release it", lease.id, self.queue.release, lease)
            else:
                try:
                    if self._execute(lease):
                        return  # abandoned after a timeout; a new thread took its slot
                except Exception:
                    # A backend error after the task ran (ack, retry): the lease expires and
                    # the job runs again; this thread keeps its slot in the pool.
                    self._running.pop(lease.id, None)
                    log.exception("job=%s: unexpected error while settling; not acked, it "
                                  "will run again after the visibility timeout", lease.id)
            with self._cv:
                self._free += 1
                self._cv.notify()

    def _execute(self, lease: Lease) -> bool:
        """Run one lease to its outcome; ``True`` if the thread was abandoned meanwhile."""
        started_at, started_mono = time.time(), time.monotonic()
        try:
            job, envelope = decode_message(lease.message, self.serializer)
        except SerializationError as exc:
            self._fail_undecodable(lease, exc)
            return False
        job.attempts = lease.deliveries
        job._kernel = self.kernel
        if lease.deliveries > self.kernel.settings.max_deliveries:
            error = NuvomError(
                f"job was delivered {lease.deliveries} times without an outcome (a worker "
                f"crashed or was killed each time); raise NUVOM_MAX_DELIVERIES to allow more")
            self._finish_failed(job, lease, envelope, error, "", started_at, kind="dead")
            return False
        timeout = job.options.timeout_secs or self.kernel.settings.job_timeout_secs
        deadline = started_mono + timeout if timeout else None
        job.deadline = deadline
        running = Running(job, lease, envelope, threading.current_thread(), started_at,
                           started_mono, deadline, extended_at=started_mono)
        self._running[job.id] = running
        if deadline is not None:
            with self._monitor_cv:
                self._monitor_cv.notify()
        _local.job = job
        try:
            fn = self.kernel.registry.resolve(job.func_name, job.module)
            events.emit(self.kernel.pm, "nuvom_before_execute", job=job)
            func = getattr(fn, "fn", fn)
            if inspect.iscoroutinefunction(func):
                result = asyncio.run(func(*job.args, **job.kwargs))
            else:
                result = func(*job.args, **job.kwargs)
        except (Exception, SystemExit) as exc:  # a task's failure is data, not a crash
            self._settle_failure(running, exc, traceback.format_exc())
        else:
            self._settle_success(running, result)
        finally:
            _local.job = None
        return running.abandoned

    def _monitor_loop(self) -> None:
        extend_every = self.visibility / 3
        while not self._stopped.is_set():
            now = time.monotonic()
            wake = now + min(extend_every, 1.0)
            for running in list(self._running.values()):
                if running.settled:
                    continue
                if running.deadline is not None:
                    if now >= running.deadline:
                        self._time_out(running)
                        continue
                    wake = min(wake, running.deadline)
                if now - running.extended_at >= extend_every:
                    expiry = time.time() + self.visibility  # taken before: an underestimate
                    try:
                        extended = self.queue.extend(running.lease, self.visibility)
                    except Exception as exc:  # retried on the next tick, well before expiry
                        log.error("job=%s: queue backend %r failed to extend its lease (%r); "
                                  "retrying", running.job.id, self.queue.name, exc)
                        continue
                    running.extended_at = now
                    if extended:
                        running.lease = attrs.evolve(running.lease, expires_at=expiry)
                    else:
                        log.warning("job=%s lost its lease while running", running.job.id)
            with self._monitor_cv:
                self._monitor_cv.wait(max(0.0, wake - time.monotonic()))

    def _time_out(self, running: Running) -> None:
        job = running.job
        error = JobTimeoutError(
            f"job {job.id} ({job.func_name}) exceeded its timeout of "
            f"{running.deadline - running.started_mono:.3g} s")  # type: ignore[operator]
        with running.lock:
            if running.settled or running.abandoned:
                return
            running.abandoned = True  # its thread exits whenever the task returns
            self._abandoned.add(running.thread)
        self._spawn_executor()  # keep capacity: the stuck thread never returns to the pool
        # Settle on a thread of its own: settling runs plugin observers (on_execute_error,
        # on_retry), and one that blocks must not stop this monitor from extending the
        # leases of every other running job.
        thread = threading.Thread(target=self._settle_failure, args=(running, error, ""),
                                  kwargs={"kind": "timeout"}, name="nuvom-timeout",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()


class _HookInterrupted(BaseException):
    """Raised by the signal handler to pull the main thread out of a hung lifecycle hook
    (a BaseException, so the observer isolation in :func:`events.emit` does not catch it)."""
