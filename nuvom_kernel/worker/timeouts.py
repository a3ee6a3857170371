"""Timeouts: a job past its deadline is recorded as timed out and its executor given up.

A thread cannot be killed, so the monitor's call (:meth:`Timeouts._time_out`) abandons the
job's thread (or, in the asyncio pool, its task), keeps the pool's capacity within
``max_abandoned_threads``, and settles the attempt on a thread of its own; the slot comes
back when the abandoned function returns (:meth:`Timeouts._slot_back`,
:meth:`Timeouts._task_slot_back`). Separate from :mod:`.pool`, which builds, starts and
stops the worker, because giving up on a job is a rule of its own that changes on its own:
how many threads may be abandoned, which slot is owed, when a limited task's timed-out
attempt may settle. A mixin of :class:`~nuvom_kernel.worker.pool.Worker`, not an object of
its own: an asyncio job's slot check at its end stays one method call on the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from nuvom_kernel.errors import JobTimeoutError

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.worker.aio import AsyncPool
    from nuvom_kernel.worker.run import JobRunner
    from nuvom_kernel.worker.settle import Running
    from nuvom_kernel.worker.slots import Slots

__all__ = ["Timeouts"]

log = logging.getLogger("nuvom.worker")


class Timeouts:
    """The timeout handling of :class:`~nuvom_kernel.worker.pool.Worker`."""

    # The worker's, set in Worker.__init__ (annotations only: nothing here at runtime).
    kernel: Kernel
    aio: AsyncPool | None
    slots: Slots
    runner: JobRunner
    max_abandoned: int
    _cv: threading.Condition
    _abandoned_alive: int
    _owed: int
    _abandoned: set[threading.Thread]
    #: asyncio pool: set when an abandoned (timed-out) job's task ends
    _task_ended: dict[Running, threading.Event]
    #: timed-out attempts of limited tasks whose outcome waits for their function to
    #: return (see _settle_timed_out); a stop settles what is left
    _timed_out: dict[Running, JobTimeoutError]
    _timed_out_lock: threading.Lock
    _spawn_executor: Callable[[], bool]

    def _time_out(self, running: Running) -> None:
        """Called by the monitor for a job past its deadline: abandon its thread, keep the
        pool's capacity within ``max_abandoned_threads``, and settle the attempt as timed
        out on a thread of its own (settling runs plugin observers: one that blocks must not
        stop the monitor from extending every other job's lease)."""
        if self.aio is not None:
            self._time_out_async(running)
            return
        job = running.job
        if not running.decide():
            return
        with running.lock:
            running.abandoned = True  # its thread exits (or takes its slot back) on return
        error = JobTimeoutError.of(job, (job.deadline or running.deadline or 0.0)
                                   - running.started_mono)
        with self._cv:
            self._abandoned_alive += 1
            self._abandoned.add(running.thread)
            replace = self._abandoned_alive <= self.max_abandoned
            if not replace:
                self._owed += 1
        if replace:
            self._spawn_executor()  # keep capacity: the stuck thread may never return
        else:
            log.warning("%d threads are stuck in timed-out jobs (max_abandoned_threads=%d): "
                        "this worker claims fewer jobs until one returns", self._abandoned_alive,
                        self.max_abandoned)
        threading.Thread(target=self._settle_timed_out, args=(running, error),
                         name="nuvom-timeout", daemon=True).start()

    def _time_out_async(self, running: Running) -> None:
        """The asyncio pool's :meth:`_time_out`: a job still running ``kill_grace_secs``
        after its timeout cancelled it (a coroutine that swallows ``CancelledError``), or
        whose sync task's thread is past its deadline while the loop is blocked. Record the
        attempt as timed out and give the task up, its slot freed for another job while
        fewer than ``max_abandoned_threads`` are given up (the thread pool's rule). Why:
        without this, such a job ran on, RUNNING, its lease extended forever."""
        ended = self._task_ended[running] = threading.Event()  # before it can end
        with running.lock:  # decided and abandoned at once: see _task_slot_back
            claimed = not running.decided
            if claimed:
                running.decided = running.abandoned = True
        if not claimed:
            self._task_ended.pop(running, None)
            return
        job = running.job
        limit = job.options.timeout_secs or self.kernel.settings.job_timeout_secs
        grace = self.kernel.settings.kill_grace_secs
        error = JobTimeoutError.of(job, limit, f"(it had not stopped {grace:g} s later; "
                                              f"given up)")
        with self._cv:
            self._abandoned_alive += 1
            free = self._abandoned_alive <= self.max_abandoned
            if not free:
                self._owed += 1
        if free:
            self.slots.freed()
        else:
            log.warning("%d tasks ignored their timeout (max_abandoned_threads=%d): this "
                        "worker claims fewer jobs until one ends", self._abandoned_alive,
                        self.max_abandoned)
        log.warning("job=%s task=%s had not stopped %g s after its timeout; recorded as "
                    "timed out and left running", job.id, job.task, grace)
        threading.Thread(target=self._settle_timed_out, args=(running, error, ended),
                         name="nuvom-timeout", daemon=True).start()

    def _settle_timed_out(self, running: Running, error: JobTimeoutError,
                          ended: threading.Event | None = None) -> None:
        if running.job.options.concurrency is not None:
            # A limited task's timed-out attempt keeps counting against its limit until its
            # function returns: its lease (extended by the monitor until settled) is what
            # the queue counts, so settle only then (an asyncio job's thread is the loop's:
            # wait for its task instead). A stop that comes first settles it (join).
            with self._timed_out_lock:
                self._timed_out[running] = error
            if ended is not None:
                ended.wait()
            else:
                running.thread.join()
            with self._timed_out_lock:
                if self._timed_out.pop(running, None) is None:
                    return  # settled by the stop
        self.runner.fail(running, error, "", kind="timeout", decided=True)

    def _settle_timed_out_now(self) -> None:
        """At a stop: settle the timed-out attempts still waiting for their function to
        return. Why: the process ends with their threads, so there is no slot left to hold,
        and unsettled, such a job stayed RUNNING, its lease blocking its task's limit for a
        visibility timeout, then ran again though its retries were spent."""
        with self._timed_out_lock:
            waiting, self._timed_out = self._timed_out, {}
        for running, error in waiting.items():
            self.runner.fail(running, error, "", kind="timeout", decided=True)

    def _slot_back(self, running: Running) -> bool:
        """An abandoned thread's task returned: it takes its slot back only if no
        replacement was started for it."""
        with self._cv:
            self._abandoned_alive -= 1
            self._abandoned.discard(running.thread)
            if self._owed > 0:
                self._owed -= 1
                log.info("an abandoned thread returned from job=%s; claiming again",
                         running.job.id)
                return True
        return False

    def _task_slot_back(self, running: Running) -> bool:
        """An asyncio job's task ended; ``True`` if its slot is to be freed now. A task the
        monitor abandoned (:meth:`_time_out_async`) had its slot freed then, unless that
        was past ``max_abandoned_threads``: then it frees the slot owed now."""
        with running.lock:
            if not running.abandoned:
                return True
        ended = self._task_ended.pop(running, None)
        if ended is not None:
            ended.set()
        with self._cv:
            self._abandoned_alive -= 1
            if self._owed <= 0:
                return False
            self._owed -= 1
        log.info("the task of timed-out job=%s ended; claiming again", running.job.id)
        return True
