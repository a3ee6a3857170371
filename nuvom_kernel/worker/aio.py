"""``async def`` tasks: event loops that outlive one job, and the asyncio pool.

``asyncio.run`` per job closes its loop after every call, so a client bound to a loop (an
``aiohttp`` session, an ``asyncpg`` pool) breaks on the second job with "event loop is
closed". Here a loop belongs to whoever runs jobs: each executor thread keeps one
(:func:`run_on_thread_loop`), and ``--pool asyncio`` runs one loop for the whole worker
(:class:`AsyncPool`) with up to ``workers`` jobs awaiting at once.

A timeout cancels the coroutine at its deadline (:func:`bounded`) and is recorded as a
timeout only when that timeout fired, never when the task raised ``CancelledError`` for its
own reasons. Nothing the pool owes the backend runs on the loop: leases are extended by the
monitor thread and outcomes stored by the settler thread, so a coroutine that blocks the loop
costs time, not leases, and the loop watchdog says so in the log.

What the asyncio pool cannot stop, it gives up as the thread pool gives up a stuck thread:

* a coroutine still running ``grace_secs`` after its timeout cancelled it (it swallowed the
  ``CancelledError``) is recorded as timed out by the lease monitor and left to run;
* a sync task past its timeout keeps its thread (threads cannot be stopped): a new thread
  takes its place while fewer than ``max_abandoned`` threads are stuck, so later sync tasks
  never queue behind a stuck one. Past that the worker claims one job fewer per stuck thread
  until one returns. A sync task's clock starts when a thread takes it, not while it waits
  for one, and a call whose job was given up before a thread took it never runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import queue as stdqueue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from nuvom_kernel.errors import JobTimeoutError
from nuvom_kernel.job import Job

if TYPE_CHECKING:
    from nuvom_kernel.worker.settle import Running
    from nuvom_kernel.worker.slots import Slots

__all__ = ["AsyncPool", "bounded", "run_on_thread_loop"]

log = logging.getLogger("nuvom.worker")
_thread = threading.local()

#: The loop watchdog logs a loop that answered no callback for this long.
LOOP_LAG_WARN_SECS = 1.0
#: The dispatcher claims nothing while the loop has not answered for this long: a job
#: claimed then could not start, and would only wait (read as RUNNING) to be given back.
CLAIM_LAG_SECS = 0.5

# A sync call's states (changed under AsyncPool._lock): waiting for a thread, running on
# one, given up while running (timed out: its thread is stuck), returned, given up before
# a thread took it (never to run).
_QUEUED, _RUNNING, _ABANDONED, _FINISHED, _GIVEN_UP = range(5)


async def bounded(awaitable: Awaitable[Any], job: Job,
                  detail: str = "(it was cancelled)") -> Any:
    """Await ``awaitable`` until the job's deadline; :class:`JobTimeoutError` if it passed,
    saying ``detail`` of what became of the task."""
    remaining = job.time_remaining()
    if remaining is None:
        return await awaitable
    # Said as the thread pool says it: "1 s", not the 0.999 s left when the coroutine
    # started, for a limit of the task's own or NUVOM_JOB_TIMEOUT_SECS alike.
    limit = job.options.timeout_secs or (
        job._kernel.settings.job_timeout_secs if job._kernel is not None else None
    ) or remaining
    if sys.version_info >= (3, 11):
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise JobTimeoutError.of(job, limit, detail) from None
            raise
    future = asyncio.ensure_future(awaitable)  # 3.10: wait, then cancel what is left
    done, _ = await asyncio.wait({future}, timeout=remaining)
    if future in done:
        return future.result()
    future.cancel()
    await asyncio.wait({future})
    raise JobTimeoutError.of(job, limit, detail)


def run_on_thread_loop(coroutine: Coroutine[Any, Any, Any], job: Job) -> Any:
    """Run a coroutine on the calling thread's own loop, created once and kept.

    On a thread whose loop is running already — a job run inline from inside a coroutine:
    eager mode, where an async task's (or an async test's) ``.delay()`` runs the child at
    once — it runs on a loop of its own on a thread of its own, in a copy of the caller's
    context, while the caller waits: ``run_until_complete`` of a running loop raised, and
    the child was recorded FAILED where a real worker runs it.
    """
    if asyncio._get_running_loop() is not None:
        with concurrent.futures.ThreadPoolExecutor(1, "nuvom-inline-loop") as inline:
            return inline.submit(contextvars.copy_context().run, asyncio.run,
                                 bounded(coroutine, job)).result()
    loop = getattr(_thread, "loop", None)
    if loop is None or loop.is_closed():
        loop = _thread.loop = asyncio.new_event_loop()
    return loop.run_until_complete(bounded(coroutine, job))


class _SyncCall:
    """A sync task's call, handed to the pool's threads. ``state`` says who owns it."""

    __slots__ = ("budget", "call", "done", "running", "started", "state")

    def __init__(self, call: Callable[[], Any], running: Running, budget: float | None,
                 started: asyncio.Future[None], done: asyncio.Future[Any]) -> None:
        self.call = call
        self.running = running
        self.budget = budget  # seconds of its timeout left when it was queued
        self.started = started  # resolved when a thread takes it
        self.done = done  # resolved with its outcome
        self.state = _QUEUED


class AsyncPool:
    """One event loop on a thread of its own, running the worker's jobs as asyncio tasks.

    :param sync_threads: size of the thread pool that runs plain (sync) tasks, so a sync
        task never blocks the loop.
    :param slots: the worker's capacity: a stuck sync thread past ``max_abandoned`` holds
        one slot back until it returns (as a stuck executor does in the thread pool).
    :param max_abandoned: most sync threads stuck in timed-out tasks that are replaced.
    :param grace_secs: how long a timed-out job may take to stop before the lease monitor
        records it as timed out and gives it up (``kill_grace_secs``).
    :param wake_monitor: tells the lease monitor that a job's monitor deadline was set.
    """

    def __init__(self, sync_threads: int, slots: Slots, max_abandoned: int,
                 grace_secs: float, wake_monitor: Callable[[], None]) -> None:
        #: Made by :meth:`start`, after the plugins prepared the worker: a plugin's
        #: ``nuvom_worker_prepare`` may set the event loop policy (uvloop).
        self.loop: asyncio.AbstractEventLoop
        self.slots = slots
        self.max_abandoned = max_abandoned
        self.grace_secs = grace_secs
        self._wake_monitor = wake_monitor
        self._sync_threads = sync_threads
        self._calls: stdqueue.SimpleQueue[_SyncCall | None] = stdqueue.SimpleQueue()
        self._lock = threading.Lock()  # sync calls' states and the counts below
        self._serving = 0  # sync threads taking calls (not stuck in a timed-out one)
        self.stuck = 0  # sync threads still inside a timed-out call
        self._owed = 0  # stuck threads past max_abandoned that were not replaced
        self.lag_secs = 0.0  # the longest the loop went without answering, lately
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drainer: asyncio.Task[None] | None = None  # the stop's: see _drain
        self._beat = time.monotonic()
        #: set while the loop answers (the dispatcher claims only then)
        self.answering = threading.Event()
        self.answering.set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nuvom-loop", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="nuvom-loop-watchdog",
                                          daemon=True)

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread.start()
        self._watchdog.start()
        for _ in range(self._sync_threads):
            self._start_sync_thread()

    def _start_sync_thread(self) -> bool:
        """A daemon (unlike ThreadPoolExecutor's): a forced stop must not wait at exit for
        a sync task that never returns. ``False`` if no thread could be started."""
        with self._lock:
            self._serving += 1
        try:
            threading.Thread(target=self._sync_loop, name="nuvom-sync", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread"
            with self._lock:
                self._serving -= 1
            log.error("could not start a thread for sync tasks (%s)", exc)
            return False
        return True

    def _sync_loop(self) -> None:
        while (item := self._calls.get()) is not None:
            with self._lock:
                if item.state != _QUEUED:  # its job was given up before a thread took it
                    continue
                item.state = _RUNNING
            if item.budget is not None:  # the clock starts now: a wait for a thread is
                running = item.running  # not run time
                job = running.job
                job.deadline = time.monotonic() + item.budget
                running.deadline = job.deadline + self.grace_secs  # the monitor's backstop
            self.loop.call_soon_threadsafe(_resolve, item.started, None, None)
            try:
                result, error = item.call(), None
            except BaseException as exc:  # the task's failure, handed to its coroutine
                result, error = None, exc
            with self._lock:
                abandoned = item.state == _ABANDONED
                item.state = _FINISHED
            if not abandoned:
                self.loop.call_soon_threadsafe(_resolve, item.done, result, error)
            elif not self._returned(item):
                return  # a replacement took this thread's place

    def _abandon(self, item: _SyncCall) -> None:
        """A sync call timed out while running: its thread is stuck until the function
        returns. Replace it while fewer than ``max_abandoned`` are stuck; past that hold
        one of the worker's slots back until a stuck one returns (:meth:`_returned`)."""
        with self._lock:
            if item.state != _RUNNING:  # it returned meanwhile
                return
            item.state = _ABANDONED
            self._serving -= 1
            self.stuck += 1
            replace = self.stuck <= self.max_abandoned
            if not replace:
                self._owed += 1
        if replace and self._start_sync_thread():
            return
        if replace:  # no thread could be started: count it as owed all the same
            with self._lock:
                self._owed += 1
        self.slots.withhold()
        log.warning("%d threads are stuck in timed-out sync tasks (max_abandoned_threads=%d):"
                    " this worker claims fewer jobs until one returns", self.stuck,
                    self.max_abandoned)

    def _returned(self, item: _SyncCall) -> bool:
        """A stuck thread's call returned (its result is ignored); ``True`` if the thread
        goes on serving, in the place of one that was not replaced."""
        with self._lock:
            self.stuck -= 1
            if self._owed <= 0 or self._stopped.is_set():
                return False
            self._owed -= 1
            self._serving += 1
        self.slots.freed()  # the slot held back for it
        log.info("a thread stuck in a timed-out sync task returned (job=%s); claiming again",
                 item.running.job.id)
        return True

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._heartbeat)
        self.loop.run_forever()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        if not self.answering.is_set():
            self.answering.set()
        if not self._stopped.is_set():
            self.loop.call_later(0.1, self._heartbeat)

    def _watch(self) -> None:
        """Notice a blocked loop while it is blocked (a check on the loop would only run
        after it came back)."""
        warned = False
        while not self._stopped.wait(0.25):
            lag = time.monotonic() - self._beat
            if lag >= CLAIM_LAG_SECS:
                self.answering.clear()
            if lag >= LOOP_LAG_WARN_SECS and not warned:
                log.warning("the asyncio pool's event loop has not answered for %.1f s: a "
                            "coroutine is blocking it (a sync call without await?); leases "
                            "are still extended, and jobs claimed meanwhile are given back",
                            lag)
            warned = lag >= LOOP_LAG_WARN_SECS
            self.lag_secs = lag if warned else max(0.0, lag - 0.1)

    def wait_answering(self, stopping: threading.Event) -> None:
        """Block while the loop does not answer (a coroutine blocks it), or until
        ``stopping``: what the dispatcher claimed meanwhile could not start."""
        while not self.answering.wait(0.25) and not stopping.is_set():
            pass

    def submit(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``make()`` as a task on the loop (callable from any thread)."""
        def start() -> None:
            task = self.loop.create_task(make())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self.loop.call_soon_threadsafe(start)

    async def call(self, func: Callable[..., Any], running: Running,
                   is_coroutine: bool) -> Any:
        """Run the job's function: a coroutine on the loop, a sync function on a thread."""
        job = running.job
        if not is_coroutine:
            return await self._call_sync(func, running)
        if job.deadline is None:
            return await func(*job.args, **job.kwargs)
        # Once the deadline has cancelled the coroutine, the monitor waits grace_secs for it
        # to stop. Not before: a coroutine that never awaits blocks the loop, so it is never
        # cancelled, and it ends with its own outcome (what the docs promise).
        armed = self.loop.call_at(job.deadline, self._cancelled, running)
        try:
            return await bounded(func(*job.args, **job.kwargs), job)
        finally:
            armed.cancel()

    def _cancelled(self, running: Running) -> None:
        running.deadline = time.monotonic() + self.grace_secs
        self._wake_monitor()

    async def _call_sync(self, func: Callable[..., Any], running: Running) -> Any:
        job = running.job
        context = contextvars.copy_context()  # current_job() works in the sync task too
        item = _SyncCall(functools.partial(context.run, func, *job.args, **job.kwargs),
                         running, job.time_remaining(), self.loop.create_future(),
                         self.loop.create_future())
        job.deadline = None  # no clock while it waits for a thread: see _sync_loop
        self._calls.put(item)
        try:
            await item.started
        except BaseException:  # cancelled (a forced stop) before a thread took it
            with self._lock:
                if item.state == _QUEUED:
                    item.state = _GIVEN_UP  # so no thread ever runs it
            item.done.cancel()  # nobody awaits its outcome now
            raise
        try:
            # a thread cannot be cancelled: it runs on, abandoned (see _abandon)
            return await bounded(item.done, job, "(its thread could not be stopped and is "
                                                 "abandoned: its result will be ignored)")
        except JobTimeoutError:
            self._abandon(item)
            raise

    def stop(self, timeout: float = 1.0) -> None:
        """Cancel every task still on the loop (its outcome was given up already), wait up
        to ``timeout`` for them to end, and end the loop once they have.

        A task that ignores cancellation (it swallows ``CancelledError``, or blocks the
        loop) keeps the loop running on its daemon thread, and is logged. Why not stop the
        loop under it: a coroutine left pending is finalized when the interpreter exits,
        and one that swallows the ``GeneratorExit`` of that finalization runs on outside any
        loop, so the process never ended after a forced stop. A live loop's tasks are never
        finalized: the process exits with them as with a stuck daemon thread.
        """
        self._stopped.set()
        self.answering.set()
        if self._thread.ident is None:  # never started
            return
        with self._lock:
            serving = self._serving
        for _ in range(serving):
            self._calls.put(None)
        self.loop.call_soon_threadsafe(self._start_drain)  # runs once the loop does
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%d asyncio task(s) did not end when cancelled (a coroutine that "
                        "swallows CancelledError or blocks the loop); left running until "
                        "they end or the process exits", len(self._tasks))

    def _start_drain(self) -> None:
        self._drainer = self.loop.create_task(self._drain())  # referenced while it runs

    async def _drain(self) -> None:
        """Cancel every other task (user tasks a job started too) once, wait for all of them
        to end, then stop the loop."""
        me = asyncio.current_task()
        cancelled: set[asyncio.Task[Any]] = set()
        while tasks := asyncio.all_tasks() - {me}:
            for task in tasks - cancelled:
                task.cancel()
            cancelled |= tasks
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        self.loop.stop()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # given up at its timeout
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
