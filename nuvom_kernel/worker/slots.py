"""The worker's capacity: how many jobs the dispatcher may claim now, and the hand-off of
claimed leases to the executors.

``free`` counts idle executors minus the leases waiting in the hand-off. The dispatcher
claims for the idle executors at once and, while jobs are short, a few more
(:meth:`Slots.ahead`) once half of that window is free (:meth:`Slots._room`). Why claim
ahead at all: a claim and a settle cost a transaction or a round trip each, more than a
short job, so claiming one job per idle executor spends most of a drain on them (SQLite:
~160 µs of CPU per job in batches of one, ~50 in batches of 16,
``benchmarks/bench_sqlite_raw.py``; Redis and PostgreSQL alike). Why only while jobs are
short: a claimed job waits for an executor, reads as RUNNING and is out of other workers'
reach. When the pace was wrong (every executor got stuck in long jobs), a lease that waited
:data:`HOLD_SECS` is given back (:meth:`Slots.overdue`) for any worker to claim.
"""

from __future__ import annotations

import queue as stdqueue
import threading
import time

from nuvom_kernel.models import Lease

__all__ = ["AHEAD_SECS", "HOLD_SECS", "Slots"]

#: Claiming ahead holds about this much work (seconds) per executor at most.
AHEAD_SECS = 0.05
#: A claimed lease waits at most about this long (seconds) for an executor of this worker
#: (20 times what claiming ahead expects) before it is given back; at most half the lease.
HOLD_SECS = 1.0


class Slots:
    """Free executors, claiming ahead, and the hand-off queue.

    :param prefetch: most leases claimed ahead of idle executors (0: none).
    :param ahead_ok: ``False`` where claimed jobs start at once (the asyncio pool's slots
        are not threads: a lease handed over is a task about to start, :meth:`hold`).
    """

    def __init__(self, workers: int, batch_size: int, prefetch: int, ahead_ok: bool) -> None:
        self.cv = threading.Condition()  # also guards the pool's abandoned-thread counts
        self.free = 0
        self.workers = workers
        self.batch_size = batch_size
        self.prefetch = prefetch if ahead_ok else 0
        self.pace: float | None = None  # recent seconds per job (moving average)
        #: claimed leases in hand-off order; ``None`` tells an executor to end
        self.handoff: stdqueue.SimpleQueue[Lease | None] = stdqueue.SimpleQueue()
        #: the leases in the hand-off not taken yet, with when they were claimed (monotonic).
        #: Whoever pops a lease from it (an executor, :meth:`overdue`, :meth:`unstarted`)
        #: owns it: ``dict.pop`` is atomic, so a lease is never both run and given back.
        self.waiting: dict[tuple[str, str], tuple[Lease, float]] = {}
        #: the last claim got all it asked for (the settler's ``outcomes_soon`` reads it)
        self.backlog = False

    def ahead(self) -> int:
        """Jobs to claim beyond the idle executors: at most ``prefetch``, and at most
        :data:`AHEAD_SECS` of work per executor at the recent pace (with 4 executors: 16
        for 10 ms jobs, 2 for 100 ms jobs, none over 200 ms), none before a job ran."""
        if not self.prefetch or self.pace is None:
            return 0
        return min(self.prefetch, int(self.workers * AHEAD_SECS / max(self.pace, 1e-6)))

    def wait_for_room(self, stopping: threading.Event) -> int:
        """Block until a claim may be made (or ``stopping`` is set); how many to claim."""
        with self.cv:
            while not self._room() and not stopping.is_set():
                self.cv.wait()
            return min(self.free + self.ahead(), self.batch_size)

    def _room(self) -> bool:
        """Claim now for an idle executor with nothing waiting for it (``free > 0`` is
        always enough); ahead of busy ones only once half the window is free. Why: topping
        the window up as each job ended made every other claim one of 1-2 jobs (SQLite
        drain, 2 threads, 20,000 jobs: 2,151 claims of 9.3 on average; with the half
        window, 1,268 of 15.8)."""
        ahead = self.ahead()
        return self.free + ahead >= max(1, ahead // 2)

    def claimed(self, leases: list[Lease], wanted: int = 0) -> int:
        """``leases`` were claimed of ``wanted``: all of more than one is a backlog. Returns
        how many of them (the last) to give back at once: those beyond the idle slots
        where nothing may be claimed ahead now. Why: a claim waits for work with the room
        it was asked for, and a give-back of overdue leases meanwhile (or the asyncio pool's
        ``withhold``) leaves none; it took the job just given back, which waited its second
        again to be given back once more. Not where some may still be claimed ahead: the
        pace moves with every job that ends during a claim, and a slower one shrinking the
        window by a few is no reason to release what runs within milliseconds."""
        with self.cv:
            self.free -= len(leases)
            self.backlog = len(leases) == wanted > 1
            if self.free >= 0 or self.ahead():
                return 0
            return min(len(leases), -self.free)

    def hand_over(self, lease: Lease, claimed_at: float) -> None:
        self.waiting[lease.id, lease.token] = (lease, claimed_at)
        self.handoff.put(lease)

    def hold(self, lease: Lease, claimed_at: float) -> None:
        """The asyncio pool's hand-off: ``lease`` was submitted to the loop as a task that
        has not started. Held here, the monitor gives it back if the loop does not start it
        in time (a coroutine blocks it) and a stop releases it, as a lease in the hand-off
        queue; :meth:`take_held` is how its task takes it."""
        self.waiting[lease.id, lease.token] = (lease, claimed_at)

    def take_held(self, lease: Lease) -> float | None:
        """Take a lease :meth:`hold` kept: when it was claimed, or ``None`` if it was given
        back meanwhile (whoever gave it back freed its slot)."""
        item = self.waiting.pop((lease.id, lease.token), None)
        return None if item is None else item[1]

    def withhold(self) -> None:
        """One slot fewer until :meth:`freed` gives it back: the asyncio pool's sync thread
        stuck in a timed-out task past ``max_abandoned_threads`` (whose job's slot is
        freed as the job ends), so the worker claims fewer jobs, as the thread pool does
        when it cannot replace a stuck executor."""
        with self.cv:
            self.free -= 1

    def take(self) -> tuple[Lease, float] | None:
        """The next lease to run and when it was claimed, waiting for one; ``None``: end."""
        while True:
            lease = self.handoff.get()
            if lease is None:
                return None
            item = self.waiting.pop((lease.id, lease.token), None)
            if item is not None:  # else given back meanwhile: its slot was freed then
                return item

    def overdue(self, hold_secs: float) -> tuple[list[Lease], float]:
        """Take the leases that waited over ``hold_secs`` (to give back: the pace that let
        them be claimed was wrong); returns them and the monotonic time the next one will
        be overdue (``inf``: none waiting). The caller frees their slots."""
        now = time.monotonic()
        taken: list[Lease] = []
        nxt = float("inf")
        for key, (lease, claimed_at) in list(self.waiting.items()):
            if now - claimed_at < hold_secs:
                nxt = min(nxt, claimed_at + hold_secs)
            elif self.waiting.pop(key, None) is not None:
                taken.append(lease)
        if taken:  # they waited 20x what claiming ahead expects: stop it until jobs finish
            with self.cv:  # (a pace at which ahead() is 0, whatever the thread count)
                self.pace = max(self.pace or 0.0, hold_secs,
                                2 * self.workers * AHEAD_SECS)
        return taken, nxt

    def freed(self, took: float | None = None) -> None:
        """A slot is free again; ``took``: the seconds its job ran (sets the pace)."""
        with self.cv:
            if took is not None:
                pace = self.pace
                self.pace = took if pace is None else pace + (took - pace) / 8
            self.free += 1
            if self._room():  # else the dispatcher would wake only to wait again
                self.cv.notify()

    def wake_all(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def unstarted(self) -> list[Lease]:
        """Take every lease still waiting in the hand-off (at a stop, to release them)."""
        leases: list[Lease] = []
        for key in list(self.waiting):
            item = self.waiting.pop(key, None)
            if item is not None:
                leases.append(item[0])
        return leases

    def close(self, threads: int) -> None:
        """Wake ``threads`` executors waiting for a lease, to end."""
        for _ in range(threads):
            self.handoff.put(None)
