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
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import queue as stdqueue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nuvom_kernel.errors import JobTimeoutError
from nuvom_kernel.job import Job

__all__ = ["AsyncPool", "bounded", "run_on_thread_loop"]

log = logging.getLogger("nuvom.worker")
_thread = threading.local()

#: The loop watchdog logs a loop that answered no callback for this long.
LOOP_LAG_WARN_SECS = 1.0


async def bounded(awaitable: Awaitable[Any], job: Job) -> Any:
    """Await ``awaitable`` until the job's deadline; :class:`JobTimeoutError` if it passed."""
    remaining = job.time_remaining()
    if remaining is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise JobTimeoutError.of(job, remaining, "(it was cancelled)") from None
            raise
    future = asyncio.ensure_future(awaitable)  # 3.10: wait, then cancel what is left
    done, _ = await asyncio.wait({future}, timeout=remaining)
    if future in done:
        return future.result()
    future.cancel()
    await asyncio.wait({future})
    raise JobTimeoutError.of(job, remaining, "(it was cancelled)")


def run_on_thread_loop(coroutine: Coroutine[Any, Any, Any], job: Job) -> Any:
    """Run a coroutine on the calling thread's own loop, created once and kept."""
    loop = getattr(_thread, "loop", None)
    if loop is None or loop.is_closed():
        loop = _thread.loop = asyncio.new_event_loop()
    return loop.run_until_complete(bounded(coroutine, job))


class AsyncPool:
    """One event loop on a thread of its own, running the worker's jobs as asyncio tasks.

    :param sync_threads: size of the thread pool that runs plain (sync) tasks, so a sync
        task never blocks the loop.
    """

    def __init__(self, sync_threads: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._sync_threads = sync_threads
        self._calls: stdqueue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None
                                          ] = stdqueue.SimpleQueue()
        self.lag_secs = 0.0  # the longest the loop went without answering, lately
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nuvom-loop", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="nuvom-loop-watchdog",
                                          daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()
        for _ in range(self._sync_threads):  # daemons (unlike ThreadPoolExecutor's): a
            # forced stop must not wait at exit for a sync task that never returns
            threading.Thread(target=self._sync_loop, name="nuvom-sync", daemon=True).start()

    def _sync_loop(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            try:
                result, error = call(), None
            except BaseException as exc:  # the task's failure, handed to its coroutine
                result, error = None, exc
            self.loop.call_soon_threadsafe(_resolve, future, result, error)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._heartbeat)
        self.loop.run_forever()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        if not self._stopped.is_set():
            self.loop.call_later(0.1, self._heartbeat)

    def _watch(self) -> None:
        """Notice a blocked loop while it is blocked (a check on the loop would only run
        after it came back)."""
        warned = False
        while not self._stopped.wait(0.25):
            lag = time.monotonic() - self._beat
            if lag >= LOOP_LAG_WARN_SECS and not warned:
                log.warning("the asyncio pool's event loop has not answered for %.1f s: a "
                            "coroutine is blocking it (a sync call without await?); leases "
                            "are still extended", lag)
            warned = lag >= LOOP_LAG_WARN_SECS
            self.lag_secs = lag if warned else max(0.0, lag - 0.1)

    def submit(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``make()`` as a task on the loop (callable from any thread)."""
        def start() -> None:
            task = self.loop.create_task(make())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self.loop.call_soon_threadsafe(start)

    async def call(self, func: Callable[..., Any], job: Job) -> Any:
        if inspect.iscoroutinefunction(func):
            return await bounded(func(*job.args, **job.kwargs), job)
        context = contextvars.copy_context()  # current_job() works in the sync task too
        call = functools.partial(context.run, func, *job.args, **job.kwargs)
        # A sync task that times out keeps its pool thread until it returns: threads
        # cannot be stopped (the process pool can).
        future: asyncio.Future[Any] = self.loop.create_future()
        self._calls.put((call, future))
        return await bounded(future, job)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs (its outcome was given up already) and end the loop."""
        def cancel_all() -> None:
            for task in list(self._tasks):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        self._stopped.set()
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(cancel_all)
        self._thread.join(timeout)
        for _ in range(self._sync_threads):
            self._calls.put(None)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # given up at its timeout
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
