"""The lease monitor: keeps every held lease alive and notices deadlines.

Why a thread of its own: leases are extended by time, not by progress, so a job stuck in a
long call (or a finished job waiting for its batch to settle) keeps its lease; and a
deadline is noticed even while every executor is busy, or the settler waits on its store.
All due leases are extended in one ``extend_many`` call (one round trip, one commit on
SQLite). A round that fails is logged and
retried: the monitor never stops, or leases would expire under running jobs. It also gives
back leases claimed ahead that waited too long for an executor (:meth:`.Slots.overdue`), so a
job is never held back by a worker whose threads all got stuck in long jobs (or, in the
asyncio pool, whose event loop a coroutine blocks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

import attrs

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import Lease
from nuvom_kernel.worker.settle import Running
from nuvom_kernel.worker.slots import HOLD_SECS, Slots

__all__ = ["LeaseMonitor"]

log = logging.getLogger("nuvom.worker")


class LeaseMonitor:
    """Watches ``running`` (the pool's table of started, not yet settled jobs).

    :param on_deadline: called (on the monitor thread, so it must not block) for a job
        whose deadline passed and whose outcome is not decided yet.
    :param settling: the settler's ids of the jobs it stores and acks now: extended only
        once their settle is slow, aside (see :meth:`_keep_running`).
    :param give_back: the pool's hand-off and what gives one of its leases back: overdue
        leases claimed ahead go there.
    """

    def __init__(self, queue: QueueBackend, running: dict[str, Running],
                 on_deadline: Callable[[Running], None], settling: Collection[str],
                 give_back: tuple[Slots, Callable[[Lease], None]] | None = None) -> None:
        self.queue = queue
        self.give_back = give_back
        self.settling = settling
        self.running = running
        self.on_deadline = on_deadline
        self.visibility = queue.visibility_timeout_secs
        self._cv = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._failed_rounds = 0  # extension rounds failed in a row
        self._failure_logged_at = float("-inf")
        self._aside: threading.Thread | None = None  # extending a slow settle's batch

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nuvom-monitor", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look again now (a job with a deadline started)."""
        with self._cv:
            self._cv.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            wake = time.monotonic() + min(self.visibility / 3, 1.0)
            try:
                wake = min(wake, self.tick())
            except Exception:
                log.exception("the lease monitor failed a round; trying again")
            with self._cv:
                if self._stopped:
                    return
                self._cv.wait(max(0.0, wake - time.monotonic()))
                if self._stopped:
                    return

    def tick(self) -> float:
        """Act on due deadlines, extend every lease due for it, then give back overdue
        leases claimed ahead (after: releasing them is a backend call per lease, and the
        running jobs' leases must not wait behind them); returns the monotonic time of the
        next deadline or give-back (``inf`` if none)."""
        wake = self._keep_running(time.monotonic())
        return min(wake, self._give_back_overdue())

    def _keep_running(self, now: float) -> float:
        """The deadlines and lease extensions of running jobs; when to look again."""
        wake = float("inf")
        extend_every = self.visibility / 3
        due: list[Running] = []
        for running in list(self.running.values()):
            if running.deadline is not None and not running.decided:
                if now >= running.deadline:
                    self.on_deadline(running)
                else:
                    wake = min(wake, running.deadline)
            if now - running.extended_at >= extend_every and not running.lease_lost:
                due.append(running)
        settling, still = self.settling, self.running
        due = [r for r in due if r.lease.id in still]
        mine = [r for r in due if r.lease.id not in settling]
        if mine and not self._extend(mine, now):
            return min(wake, now + 0.5)
        # The batch the settler is storing: extended once its settle has taken half a
        # lease, on a thread of its own. Why at all: a settle waiting on a locked table
        # let its jobs' leases lapse, and they were claimed and run again (one job three
        # times). Why aside: such a settle may hold the jobs' rows (PostgreSQL), and an
        # extension waiting on them here stopped every other lease's extension, every
        # deadline and every give-back; why only then: in a settle of milliseconds the
        # two would lock the same rows in two orders (a deadlock, rarely).
        late = time.time() + self.visibility / 2
        slow = [r for r in due if r.lease.id in settling and r.lease.expires_at < late]
        if slow and (self._aside is None or not self._aside.is_alive()):
            self._aside = threading.Thread(target=self._extend_settling, args=(slow, now),
                                           name="nuvom-monitor-settling", daemon=True)
            self._aside.start()
        return wake

    def _extend(self, due: list[Running], now: float) -> bool:
        """Extend ``due``'s leases; ``False`` if the queue failed the call (said)."""
        expiry = time.time() + self.visibility  # taken before the call: an underestimate
        try:
            held = self.queue.extend_many([r.lease for r in due], self.visibility)
        except Exception as exc:  # retried next round, well before the leases expire
            # said at once, then once a minute: a disk full for an hour logged it twice
            # a second
            self._failed_rounds += 1
            if now - self._failure_logged_at >= 60.0:
                self._failure_logged_at = now
                log.error("queue backend %r failed to extend %d lease(s) (%r; %d failed "
                          "round(s) in a row); retrying 0.5 s after each failed round",
                          self.queue.name, len(due), exc, self._failed_rounds)
            return False
        if self._failed_rounds:
            log.warning("queue backend %r extends leases again, after %d failed "
                        "round(s)", self.queue.name, self._failed_rounds)
            self._failed_rounds, self._failure_logged_at = 0, float("-inf")
        self._extended(due, held, now, expiry)
        return True

    def _extend_settling(self, due: list[Running], now: float) -> None:
        """:meth:`_extend` of a batch being settled, on its own thread: a failure is said
        (a store that fails it fails the settle too, which says more) and tried again at
        the next round."""
        expiry = time.time() + self.visibility
        try:
            held = self.queue.extend_many([r.lease for r in due], self.visibility)
        except Exception as exc:
            log.warning("queue backend %r failed to extend the leases of %d job(s) whose "
                        "outcomes are being stored (%r); tried again in the next round",
                        self.queue.name, len(due), exc)
            return
        self._extended(due, held, now, expiry)

    @staticmethod
    def _extended(due: list[Running], held: list[bool], now: float, expiry: float) -> None:
        for running, ok in zip(due, held, strict=True):
            running.extended_at = now
            if ok:
                running.lease = attrs.evolve(running.lease, expires_at=expiry)
            else:  # said once: it was said every round (each second) until the job ended
                running.lease_lost = True
                if not running.decided:  # a decided job's settle reports its own loss
                    log.warning("job=%s lost its lease while running (another worker "
                                "may run it now)", running.job.id)

    def _give_back_overdue(self) -> float:
        """Release the leases claimed ahead that waited too long; when the next one will."""
        if self.give_back is None:
            return float("inf")
        slots, put_back = self.give_back
        hold = min(HOLD_SECS, self.visibility / 2)
        leases, nxt = slots.overdue(hold)
        for lease in leases:
            put_back(lease)
        if leases:
            log.info("gave back %d claimed job(s) that waited over %.1f s for a busy "
                     "executor (or a blocked event loop)", len(leases), hold)
        return nxt
