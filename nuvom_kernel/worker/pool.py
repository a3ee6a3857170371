"""The worker pool: claim → run → settle, with retries, timeouts, hooks and signals.

Four kinds of thread:

* one **dispatcher** (:mod:`.dispatch`) claims jobs with ``pop_batch`` and hands them
  over: for the idle executors and, while jobs are short, a few ahead (:mod:`.slots`), so a
  backlog drains in claims and settles of many jobs instead of one or two; long jobs are not
  held back from other workers;
* **executors** (``workers`` of them) run one job at a time and decide its outcome — in the
  thread itself, in a child process the thread owns (``pool="process"``,
  :mod:`.processes`), or, with ``pool="asyncio"`` (:mod:`.aio`), as tasks on one event loop
  instead of threads;
* one **settler** (:mod:`.settle`) stores outcomes and acks or retries leases,
  in batches, for every outcome alike;
* one **monitor** (:mod:`.monitor`) extends the leases of running and settling jobs in one
  ``extend_many`` and enforces timeouts (:mod:`.timeouts`). A thread cannot be killed, so a
  timed-out job is recorded as timed out and its executor abandoned (its eventual return
  value is ignored); a fresh executor takes its slot while fewer than
  ``max_abandoned_threads`` are abandoned. Past that the worker claims fewer jobs (and says
  so) until an abandoned thread returns and takes its slot back: a runaway task cannot make
  a worker start threads without bound.

Delivery is at least once: a job is acked only after its outcome is recorded. Definitions:
``Job.attempts`` counts every start of the function in the current run (a start whose worker
was killed counts); ``retries=N`` allows N + 1 attempts that ended in an exception or a
timeout; ``max_deliveries`` bounds deliveries that produced no outcome at all (checked before
the message is decoded, so a message that kills its worker cannot loop forever).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nuvom_kernel.config import MAX_BATCH_SIZE, MAX_PREFETCH, MAX_WORKERS
from nuvom_kernel.discovery_run import discover_before_start, load_at_start
from nuvom_kernel.envelope import origin
from nuvom_kernel.errors import WorkerPrepareError
from nuvom_kernel.limits import apply_limits
from nuvom_kernel.models import JobStatus, Lease, Settlement
from nuvom_kernel.scheduler import Scheduler
from nuvom_kernel.values import whole_argument
from nuvom_kernel.worker.aio import AsyncPool
from nuvom_kernel.worker.current import in_a_pool
from nuvom_kernel.worker.dispatch import Dispatcher
from nuvom_kernel.worker.expiry import Expiry
from nuvom_kernel.worker.heap import frozen_heap
from nuvom_kernel.worker.heartbeat import Heartbeat
from nuvom_kernel.worker.monitor import LeaseMonitor
from nuvom_kernel.worker.processes import ProcessPool
from nuvom_kernel.worker.run import JobRunner, current_job
from nuvom_kernel.worker.settle import Running, Settler, outcomes_soon
from nuvom_kernel.worker.signals import StopSignals
from nuvom_kernel.worker.slots import Slots
from nuvom_kernel.worker.timeouts import Timeouts

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["Worker", "current_job"]

log = logging.getLogger("nuvom.worker")

#: What can run a job's function (``--pool``, the ``pool`` setting).
POOLS = ("thread", "process", "asyncio")
#: Settings that only a process pool's children obey.
PROCESS_ONLY = ("max_tasks_per_child", "max_memory_per_child", "max_child_age_secs")
#: How long a stop that gives up running jobs waits for the queue to take them back.
GIVE_BACK_SECS = 2.0
#: The id :meth:`Worker._open_stores` looks up (a read: harmless whatever it finds).
_NO_JOB = "nuvom worker start"


class Worker(Dispatcher, Timeouts):
    """A pool of executor threads serving one kernel's queue backend.

    :param workers: executor threads (default: the ``max_workers`` setting).
    :param queues: named queues to serve (default: every queue).
    :param batch_size: most jobs claimed per ``pop_batch`` (default: ``batch_size`` setting).
    :param grace_period_secs: how long a graceful stop waits for running jobs.
    :param pool: what runs the functions: ``thread`` (default: the ``pool`` setting),
        ``process`` (:mod:`.processes`) or ``asyncio`` (:mod:`.aio`).
    :param scheduler: also fire the schedules of known tasks (:mod:`nuvom_kernel.scheduler`);
        without it, the scheduler's thread only keeps concurrency limits up to date.
    :param prefetch: most jobs claimed ahead of idle executors (default: the ``prefetch``
        setting; see :mod:`.slots`).
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
        pool: str | None = None,
        scheduler: bool = True,
        prefetch: int | None = None,
        discover: bool = False,
    ) -> None:
        settings = kernel.settings
        self.kernel = kernel
        self.workers = whole_argument("Worker(workers=...)", workers, 1,
                                      MAX_WORKERS) or settings.max_workers
        self.queues = list(queues) if queues else None
        self.batch_size = whole_argument("Worker(batch_size=...)", batch_size, 1,
                                         MAX_BATCH_SIZE) or settings.batch_size
        prefetch = whole_argument("Worker(prefetch=...)", prefetch, 0, MAX_PREFETCH)
        self.grace_period_secs = (settings.grace_period_secs if grace_period_secs is None
                                  else grace_period_secs)
        self.max_abandoned = (self.workers if settings.max_abandoned_threads is None
                              else settings.max_abandoned_threads)
        self.poll_timeout_secs = poll_timeout_secs
        #: discover the project's tasks at start where the manifest is missing or stale
        #: (``nuvom runworker``: :func:`~nuvom_kernel.discovery_run.discover_before_start`)
        self.discover = discover
        self.queue = kernel.queue
        self.serializer = kernel.serializer
        self.visibility = self.queue.visibility_timeout_secs
        self.origin = origin()
        self.settler = Settler(kernel, self.queue, kernel.results, self.origin, self._on_settled,
                               lambda: outcomes_soon(self.slots.pace, self.slots.backlog,
                                                     self._running))
        self.processed = 0
        self.failed = 0
        self._abandoned_alive = 0  # abandoned threads still inside their task
        self._owed = 0  # slots whose replacement thread was not started
        self._running: dict[str, Running] = {}
        self._stopping = threading.Event()
        self._forced = threading.Event()
        #: Set when the dispatcher ended on an error of its own: the worker stops, exit 1.
        self._broken = False
        self._threads: list[threading.Thread] = []
        self._abandoned: set[threading.Thread] = set()
        self._task_ended = {}  # these three: see Timeouts
        self._timed_out = {}
        self._timed_out_lock = threading.Lock()
        self.signals = StopSignals(self)
        self.pool = pool or settings.pool
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; use one of {', '.join(POOLS)}")
        child_limits = [name for name in PROCESS_ONLY if getattr(settings, name) is not None]
        if child_limits and self.pool != "process":  # a leak bound that bounds nothing
            log.warning("%s appl%s to the process pool only; this worker runs the %s pool, "
                        "which ignores %s (run it with --pool process)",
                        ", ".join(child_limits), "ies" if len(child_limits) == 1 else "y",
                        self.pool, "it" if len(child_limits) == 1 else "them")
        self.slots = Slots(self.workers, self.batch_size,
                           settings.prefetch if prefetch is None else prefetch,
                           ahead_ok=self.pool != "asyncio")
        self._cv = self.slots.cv
        self.monitor = LeaseMonitor(self.queue, self._running, self._time_out,
                                    self.settler.settling, (self.slots, self._put_back))
        self.runner = JobRunner(kernel, self.settler, self._running, self.monitor,
                                self._slot_back)
        self.processes: ProcessPool | None = None
        self.aio: AsyncPool | None = None
        if self.pool == "process":
            self.processes = self.runner.processes = ProcessPool(kernel, self.workers,
                                                                 self._stopping)
        elif self.pool == "asyncio":
            self.aio = AsyncPool(min(32, self.workers), self.slots, self.max_abandoned,
                                 settings.kill_grace_secs, self.monitor.wake)
        self.runner.monitor_slack = {"thread": 0.0, "asyncio": None,
                                     "process": settings.kill_grace_secs + 2.0}[self.pool]
        self.heartbeat = Heartbeat(self)
        self.expiry = Expiry(kernel)
        self.scheduler = Scheduler(kernel, fire=scheduler, reported=None if self.processes
                                   is None else self.processes.reported_limits)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads and return; :meth:`stop` and :meth:`join` end them.

        :raises WorkerPrepareError: a ``nuvom_worker_prepare`` hook raised (the message
            names the plugin; its exception is the cause).
        :raises Exception: what the manifest or the backend raised while the worker
            prepared. Either way nothing started, and the shutdown hook has run, so a plugin
            that prepared gave back what it took (a port, a hook).
        """
        try:
            self._prepare_plugins()
            self._open_stores()
            written = self.discover and discover_before_start(self.kernel, self._stopping)
            # a stop during the scan ends it unwritten: "run `nuvom discover tasks`" would
            # tell the operator to run what they just stopped
            load_at_start(self.kernel, written, self.processes is not None,
                          quiet=self._stopping.is_set())
            self.scheduler._limits = apply_limits(self.kernel)  # before the first claim
        except BaseException:
            self.signals.emit_lifecycle("nuvom_worker_shutdown")
            raise
        self.scheduler.start()
        self.settler.start()
        if self.processes is not None:
            self.processes.start()
        # A job that returns past its deadline is timed out (a child keeps its own
        # deadline; a coroutine that never awaited ends as it ended: docs/workers.md,
        # Timeouts). Not in eager mode, where the pool is never started.
        self.runner.deadlines_kept = self.processes is None
        if self.aio is not None:  # jobs are tasks on one loop: slots, not threads
            self.aio.start()
            with self._cv:
                self.slots.free = self.workers
        else:
            for started in range(self.workers):
                if not self._spawn_executor(self.workers - started):
                    break
        dispatcher = threading.Thread(target=self._dispatch_loop, name="nuvom-dispatcher",
                                      daemon=True)
        dispatcher.start()
        self._threads.append(dispatcher)
        self.monitor.start()
        self.heartbeat.start()
        self.expiry.start()
        self.signals.emit_lifecycle("nuvom_worker_startup")
        # where the stores are: a path in a setting creates one on first use, silently
        results = self.kernel.results
        where = self.queue.location or "its location unsaid"
        if (results.name, results.location) != (self.queue.name, self.queue.location):
            where += f"; results={results.name} ({results.location or 'location unsaid'})"
        log.info("worker %s started: %s pool of %d, queues=%s, backend=%s (%s)", self.origin,
                 self.pool, self.workers, ",".join(self.queues or ["*"]), self.queue.name,
                 where)

    def _open_stores(self) -> None:
        """Read from both stores once before any thread starts (an id no job has: an
        indexed lookup everywhere). A store that cannot be used — written by a newer plugin
        than the one installed (a host left behind in a rolling upgrade, or rolled back), a
        database file that cannot be opened — fails :meth:`start`, which ``runworker``
        reports in one line; opened lazily by the first claim, it was logged with a
        traceback every 2 s by a worker that never stopped."""
        self.queue.peek_state(_NO_JOB)
        self.settler.results.get(_NO_JOB)
        self.queue.check_writable()
        self.settler.results.check_writable()

    def _prepare_plugins(self) -> None:
        pm = self.kernel.pm
        try:
            pm.hook.nuvom_worker_prepare(worker=self)
        except Exception as exc:
            log.debug("nuvom_worker_prepare raised", exc_info=exc)
            name = pm.raised_by("nuvom_worker_prepare", exc)
            who = "a plugin" if name is None else f"plugin {name!r}"
            fix = "" if name is None else f", or run without it: NUVOM_DISABLE_PLUGINS={name}"
            using = self._backends_of(name) if name is not None else []
            if using:  # disabled, it would take the backend along: the worker could not start
                fix = (f"; it provides the {' and the '.join(using)} in use, so it cannot be "
                       "disabled: choose another with "
                       + " or ".join(f"NUVOM_{what.upper().replace(' ', '_')}=<name>"
                                     for what in using))
            raise WorkerPrepareError(
                f"{who} failed to prepare the worker (nuvom_worker_prepare), so it did not "
                f"start and leased nothing: {exc!r}. Fix what it reports{fix} "
                f"(--log-level DEBUG shows its traceback)") from exc

    def _backends_of(self, plugin: str) -> list[str]:
        """Which of the backends in use ``plugin`` provides ("queue backend", "result
        backend")."""
        pm, settings = self.kernel.pm, self.kernel.settings
        found = []
        for hook, name, what in (
                ("nuvom_register_queue_backends", settings.queue_backend, "queue backend"),
                ("nuvom_register_result_backends", settings.result_backend, "result backend")):
            if pm.provider(hook, name) == plugin:
                found.append(what)
        return found

    def stop(self, graceful: bool = True) -> None:
        """Stop leasing; a graceful stop lets running jobs finish, a forced one does not."""
        self._stopping.set()
        self.scheduler.stop(wait=False)
        if not graceful:
            self._forced.set()
        self.queue.notify()
        self.slots.wake_all()
        self.monitor.wake()

    def run(self, install_signals: bool = True) -> int:
        """Run until stopped (by signal or :meth:`stop`); returns the process exit code:
        0 after a clean drain, 1 if running jobs had to be abandoned (the heap of the
        process is frozen meanwhile: :func:`frozen_heap`)."""
        if install_signals:
            self.signals.install()
        try:
            with frozen_heap():
                self.start()
                while not self._stopping.wait(0.5):
                    pass
                return self.join()
        finally:
            if install_signals:
                self.signals.uninstall()

    def join(self) -> int:
        """Finish a stop: return unstarted leases, wait for running jobs, settle what
        finished, emit shutdown."""
        self._release_unstarted()
        deadline = time.monotonic() + self.grace_period_secs
        while self._unfinished() and not self._forced.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._forced.wait(min(0.05, remaining))
            self._release_unstarted()
        clean = not self._unfinished()
        if not clean and not self._forced.is_set():  # the grace period ran out: a stop
            self.signals.arm_exit("the grace period ran out")  # as bounded as a forced one
        abandoned = []
        for running in self._unfinished():  # grace expired or forced
            if not running.decide():
                continue
            # Its thread is still inside the task: never join it below, or a forced stop
            # would wait out the whole join deadline for a job already given up.
            self._abandoned.add(running.thread)
            self._running.pop(running.job.id, None)
            abandoned.append(running)
        if abandoned:
            self._give_back(abandoned)
        self.scheduler.stop()
        self.slots.close(len(self._threads))
        join_deadline = time.monotonic() + self.poll_timeout_secs + 5.0
        for thread in self._threads:
            if thread is not threading.current_thread() and thread not in self._abandoned:
                thread.join(max(0.0, join_deadline - time.monotonic()))
        self._release_unstarted()  # what the dispatcher handed over as the stop began
        if self.processes is not None:  # idle children exit; a forced stop kills busy ones
            self.processes.stop(force=not clean)
        if self.aio is not None:  # what is still on the loop was given up: cancel it
            self.aio.stop()
        self._settle_timed_out_now()
        # settle what finished; the store may refuse it (down, a full disk): then the stop is
        # not clean either, since those jobs run again (each is named in the log)
        recorded = self.settler.stop(max(5.0, join_deadline - time.monotonic()))
        self.monitor.stop()  # it kept extending leases until everything settled
        self.heartbeat.stop()
        self.expiry.stop()
        self.signals.emit_lifecycle("nuvom_worker_shutdown")
        self.signals.disarm()
        log.info("worker %s stopped: %d job%s processed (%d failed)%s%s", self.origin,
                 self.processed, "" if self.processed == 1 else "s", self.failed,
                 "" if clean else ", running jobs abandoned",
                 "" if recorded else ", outcomes not recorded (those jobs will run again)")
        return 0 if clean and recorded and not self._broken else 1

    def _give_back(self, abandoned: list[Running]) -> None:
        """Expire the abandoned jobs' leases now, so they run again at once elsewhere and
        the delivery counts as one without an outcome (as a crash would): in one call,
        waited for at most :data:`GIVE_BACK_SECS`.

        Why bounded: a stop that gives up running jobs must end at once, and a store that
        does not answer (a host cut off from its Redis or PostgreSQL) held each lease's
        call for the backend's own timeouts, one lease after another: minutes. Unanswered,
        the leases expire by themselves after the visibility timeout.
        """
        leases = [running.lease for running in abandoned]

        def give_back() -> None:
            held = self.settler.safely("return it to the queue", leases[0],
                                       self.queue.extend_many, leases, 0)
            for running, ok in zip(abandoned, held or [False] * len(leases), strict=True):
                if ok:
                    log.warning("job=%s task=%s abandoned at shutdown; returned to the queue",
                                running.job.id, running.job.task)

        thread = threading.Thread(target=give_back, name="nuvom-give-back", daemon=True)
        thread.start()
        thread.join(GIVE_BACK_SECS)
        if thread.is_alive():
            log.warning("the queue backend %r did not take back %d abandoned job(s) within "
                        "%g s; they run again when their leases expire", self.queue.name,
                        len(leases), GIVE_BACK_SECS)

    @property
    def busy_slots(self) -> int:
        """Slots running a job now (started, outcome not decided yet)."""
        return sum(1 for running in list(self._running.values()) if not running.decided)

    @property
    def settling(self) -> int:
        """Jobs started here and not settled yet (running, or their outcome on its way to
        the backends). Once it is 0, ``processed`` and ``failed`` count every settled job:
        the queue's counts alone drop a job when its ack commits, just before the worker
        counts it."""
        return len(self._running)

    @property
    def abandoned_threads(self) -> int:
        """Threads still inside a task that timed out (a thread cannot be killed); in the
        asyncio pool, tasks that ignored their timeout's cancellation and sync threads."""
        return self._abandoned_alive + (self.aio.stuck if self.aio is not None else 0)

    def _unfinished(self) -> list[Running]:
        """Jobs whose function has not returned (settling ones finish on their own)."""
        return [r for r in list(self._running.values()) if not r.decided]

    def _release_unstarted(self) -> None:
        for lease in self.slots.unstarted():
            self._put_back(lease)

    # --- executors ----------------------------------------------------------------------

    def _spawn_executor(self, left: int = 1) -> bool:
        """Start an executor thread; ``False`` if the host refused it. ``left``: the
        threads still to start (at start, all of them are owed then, and said once: a
        worker of more threads than the host allows logged one error per thread)."""
        thread = threading.Thread(target=self._executor_loop, name="nuvom-executor",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": keep the slots owed
            with self._cv:
                self._owed += left
            if left > 1:
                log.error("could start only %d of %d executor threads (%s): running with "
                          "%d; lower --workers (NUVOM_MAX_WORKERS) to what this host allows",
                          self.workers - left, self.workers, exc, self.workers - left)
            else:
                log.error("could not start an executor thread (%s); running with one fewer "
                          "until an abandoned thread returns", exc)
            return False
        # Without the ended ones: a thread given up in a timed-out job ends when its task
        # returns, and a timeout-heavy worker kept each Thread (~2 KB) for good (+13-16 MB
        # an hour in a soak with 1.5 timeouts a second). A new list, not an edit in place:
        # a stop may be iterating the old one.
        with self._cv:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        self.slots.freed()
        return True

    def _executor_loop(self) -> None:
        in_a_pool()
        while True:
            item = self.slots.take()
            if item is None:
                return
            lease, claimed = item
            started = time.monotonic()
            if self._stopping.is_set() or started - claimed > self.visibility / 2:
                # Claimed but not started: straight back. One that waited half its lease
                # (the monitor, which gives such leases back sooner, fell behind) is not
                # run on a lease nobody extended; it goes back for a fresh claim.
                self._put_back(lease)
            elif self.runner.run_one(lease):
                self.slots.freed(time.monotonic() - started)
            else:
                return  # abandoned after a timeout, and its slot was filled meanwhile

    async def _serve_async(self, lease: Lease) -> None:
        """One slot of the asyncio pool: run the lease, then give the slot back.

        Until this task starts, the lease waits in ``slots.waiting`` like a lease in the
        thread pool's hand-off: a coroutine blocking the loop delays every task's start,
        and the lease of a job claimed meanwhile was in nobody's hands. It expired, another
        worker ran the job, and this one ran it again once the loop was free. Now the
        monitor gives it back (its slot with it) after ``HOLD_SECS``, a stop releases it,
        and a lease taken too late to trust is released instead of run.
        """
        assert self.aio is not None
        claimed = self.slots.take_held(lease)
        if claimed is None:  # given back meanwhile, and its slot freed then
            return
        running = None
        try:
            if self._stopping.is_set() or time.monotonic() - claimed > self.visibility / 2:
                # Claimed but not started: straight back (one that waited half its lease
                # may have lost it: back for a fresh claim, never run on it).
                self.settler.safely("release it", lease, self.queue.release, lease)
            else:
                running = await self.runner.run_async(lease, self.aio)
        finally:
            if running is None or self._task_slot_back(running):
                self.slots.freed()

    def run_one(self, lease: Lease) -> bool:
        """Run one claimed lease to its outcome and settle it (on the settler thread when
        the pool is started, else right here — how eager/test mode runs a job).

        Returns ``False`` when the calling thread was abandoned after a timeout and must
        leave the pool (another thread holds its slot). Never raises for what a task does.
        """
        return self.runner.run_one(lease)

    def _on_settled(self, settlement: Settlement, landed: bool) -> None:
        lease = settlement.lease
        if landed and settlement.retry_in is None:  # counted before forgotten: see settling
            self.processed += 1
            if settlement.record.status is not JobStatus.SUCCEEDED:
                self.failed += 1
        running = self._running.get(lease.id)
        if running is not None and running.lease.token == lease.token:  # not its next claim
            self._running.pop(lease.id, None)
