"""Settling: deciding a job's outcome, then storing it and acking or retrying its lease.

Every outcome — success, a failure to retry, a final failure, a message that cannot even be
decoded — becomes one :class:`~nuvom_kernel.models.Settlement` and goes the same way: into
a batch that is stored first and acked or retried after, never the other way round. The
:class:`Settler` does both halves: :mod:`.outcomes` builds the settlements, :mod:`.landing`
stores and acks them under its rules (nothing acked before it is stored; a worker that lost
its lease changes nothing). This module is the settler itself: its thread, which gathers
the outcomes into batches, and the worker's view of a running job (:class:`Running`).

Batching (group commit) is why a lone job is written at once but a busy worker writes
hundreds of outcomes per commit: two commits per job were most of a job's cost on SQLite.
In a drain of short jobs the settler also waits :data:`LINGER_SECS` for more outcomes
before it settles a small batch (see :class:`Settler`).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import qualname
from nuvom_kernel.job import Job
from nuvom_kernel.models import Lease, Settlement
from nuvom_kernel.worker.landing import RETRY_PAUSES, Landing
from nuvom_kernel.worker.outcomes import Outcomes

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.kernel import Kernel

__all__ = ["Running", "Settler", "outcomes_soon", "qualname"]

log = logging.getLogger("nuvom.worker")

#: Most outcomes settled in one batch (one or two commits).
BATCH = 512
#: How long the settler waits for more outcomes before settling a small batch, while more
#: are due soon (``outcomes_soon``; PostgreSQL's ``commit_delay`` idea).
LINGER_SECS = 0.002
#: A batch at least this big is settled at once.
LINGER_BATCH = 128
_linger = time.sleep  # the linger's wait (tests record it instead)


def outcomes_soon(pace: float | None, backlog: bool, running: Mapping[str, Running]) -> bool:
    """Whether more outcomes are due within :data:`LINGER_SECS` (the worker's answer to
    :class:`Settler`'s question): recent jobs took less than that (``pace``), and the last
    claim got all it asked for (``backlog``) or a job that started within it is running
    (``running``, the worker's jobs by id: read only when the other two do not decide).
    Not for a job of seconds running beside a finished one (it would only hold that outcome
    back), nor in a trickle of lone jobs (each is stored at once)."""
    if pace is None or pace >= LINGER_SECS:
        return False
    if backlog:
        return True
    since = time.monotonic() - LINGER_SECS
    return any(not job.decided and job.started_mono > since
               for job in list(running.values()))  # a copy: executors change the dict


@attrs.define(eq=False)
class Running:
    """One job from its start to its settlement. The monitor keeps its lease alive until
    ``done`` (settled), so a slow settle never lets the lease expire under a finished job."""

    job: Job
    lease: Lease
    envelope: Envelope
    thread: threading.Thread
    started_at: float
    started_mono: float
    deadline: float | None
    extended_at: float
    decided: bool = False  # an outcome was chosen (by the executor or the timeout)
    abandoned: bool = False  # timed out: its thread is left to finish on its own
    lease_lost: bool = False  # another worker took the lease over (said once, not extended)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def decide(self) -> bool:
        """Claim the right to choose the outcome; ``False`` if someone else already did."""
        with self.lock:
            if self.decided:
                return False
            self.decided = True
            return True


class Settler(Landing, Outcomes):
    """Builds settlements (:class:`.Outcomes`) and settles them in batches
    (:class:`.Landing`) on a thread of its own.

    :param on_settled: called with each settlement and whether it landed, after its batch.
    :param outcomes_soon: whether more outcomes are due within :data:`LINGER_SECS`; while
        it says so, a batch smaller than :data:`LINGER_BATCH` waits that long for them.
        Why: a commit's cost hardly depends on its size (SQLite, claimed and settled in
        batches of 4, 16 and 64: ~46, ~29 and ~20 µs per job), and without the wait a busy
        worker's batches follow its claims (2 or 16 outcomes) instead of growing.
    """

    def __init__(self, kernel: Kernel, queue: QueueBackend, results: ResultBackend,
                 origin: str, on_settled: Callable[[Settlement, bool], None],
                 outcomes_soon: Callable[[], bool] | None = None) -> None:
        self.kernel = kernel
        self.queue = queue
        self.results = results
        self.serializer = kernel.serializer
        self.origin = origin
        self.on_settled = on_settled
        self.outcomes_soon = outcomes_soon
        #: The job ids of the batch being stored and acked now: the lease monitor extends
        #: their leases only once the settle is slow, aside (``LeaseMonitor._keep_running``).
        #: Why not a lock the two share, as before: a settle held up by its store (a table
        #: lock on PostgreSQL's results, a record of hundreds of MB) stopped every
        #: extension of the worker, and its jobs' leases lapsed: run again by other
        #: workers, or by this one, while still running or waiting to be recorded here.
        #: An extension racing an ack of the same lease is the queue's to order (the file
        #: queue's lease operations take one lock; the others are single statements), and
        #: the contract suite checks that it is.
        self.settling: set[str] = set()
        self._inbox: stdqueue.SimpleQueue[Settlement | None] = stdqueue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Outcomes go to the thread: set once it started, until stop() or its end (a flag,
        #: not ``Thread.is_alive()``: two Python calls and a lock per job).
        self._threaded = False
        self._late_lock = threading.Lock()
        #: Cleared while the store refuses whole batches of outcomes (it is down, or its
        #: disk is full); set again once one lands. The dispatcher claims nothing while it
        #: is clear: a job run then only adds an outcome that cannot be kept.
        self.storing = threading.Event()
        self.storing.set()
        #: Set by :meth:`stop` when the thread outlived its time: stop trying the batch.
        self._give_up = threading.Event()
        #: Outcomes given up unrecorded so far (their jobs run again), counted under
        #: ``_tally``: inline settles (a job ending as the worker stops) run on several
        #: threads at once, and ``+=`` is not atomic between them.
        self.unrecorded = 0
        self._tally = threading.Lock()

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nuvom-settler", daemon=True)
        self._thread.start()
        self._threaded = True

    def stop(self, timeout: float) -> bool:
        """Settle what was submitted, then end the thread; what reached the inbox behind its
        end marker is settled here, once the thread is gone. ``False`` if an outcome was
        left unrecorded meanwhile (logged, with its job's id: it runs again).

        Why it can give up: a store that refuses outcomes (down, a full disk) kept the
        thread trying past ``timeout``, and the process exited under it with status 0,
        saying nothing of the finished jobs whose outcomes were lost."""
        before = self.unrecorded
        thread = self._thread
        if thread is not None:
            self._threaded = False  # from now on, submit() settles in its caller
            self._inbox.put(None)
            thread.join(timeout)
            if thread.is_alive():  # still retrying a batch: its next pause ends the tries
                self._give_up.set()
                thread.join(max(RETRY_PAUSES) + 5.0)
            if thread.is_alive():  # a store call that does not return (a host cut off)
                self._name_stuck()
            self._settle_late()
        return self.unrecorded == before and not (thread is not None and thread.is_alive())

    def submit(self, settlement: Settlement) -> None:
        """Settle soon on the settler thread — or right here when it is not running (one job
        run on its own: ``Worker.run_one``; a job that ends as the worker stops)."""
        if self._threaded:
            self._inbox.put(settlement)
            if not self._threaded:  # stop() began meanwhile: it may have drained already
                self._settle_late()
        else:
            self.settle([settlement])

    def backlog(self) -> int:
        """Outcomes submitted and not yet taken into a batch (about: read without a lock);
        0 once the thread ended (what it left is settled by its callers, not awaited)."""
        return self._inbox.qsize() if self._threaded else 0

    def _name_stuck(self) -> None:
        """Log the jobs whose outcomes the stuck thread holds (its batch, and what waits
        behind it): the worker exits without them. Why: the stop said "outcomes not
        recorded" and named no job, though the docs say each is named. Counted as
        unrecorded; the store may still take the batch if its call returns in time."""
        stuck = sorted(self.settling)
        waiting: list[Settlement] = []
        self._take_waiting(waiting)
        with self._tally:
            self.unrecorded += len(stuck) + len(waiting)
        if stuck or waiting:
            log.error("%d job outcome(s) could not be recorded before the worker stopped: "
                      "the store did not answer; they run again after the visibility timeout "
                      "(unless the store still takes the one being written): %s",
                      len(stuck) + len(waiting),
                      " ".join(f"job={job_id}" for job_id in
                               [*stuck, *(item.lease.id for item in waiting)]))

    def _settle_late(self) -> None:
        """Settle what waits in the inbox once the thread has ended (else it still will):
        outcomes submitted as it stopped. Whoever takes an outcome settles it, once."""
        with self._late_lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return
            while True:
                late: list[Settlement] = []
                ended = self._take_waiting(late)  # (end markers of earlier stops skipped)
                if late:
                    self._settle_logged(late)
                elif not ended:
                    return

    def _settle_logged(self, batch: list[Settlement], patiently: bool = False) -> None:
        try:
            self.settle(batch, patiently=patiently)
        except Exception:  # never lose the thread: those leases expire, jobs re-run
            log.exception("settling a batch of %d failed; its jobs will run again after the "
                          "visibility timeout", len(batch))

    def _loop(self) -> None:
        try:
            done = False
            while not done:
                first = self._inbox.get()
                batch = [] if first is None else [first]
                done = first is None or self._take_waiting(batch)
                if not done and len(batch) < LINGER_BATCH and self._outcomes_soon():
                    _linger(LINGER_SECS)  # a fixed wait: one wake-up, not one per outcome
                    done = self._take_waiting(batch)
                if batch:
                    self._settle_logged(batch, patiently=True)
        finally:  # ended, or killed by a BaseException from a hook: callers settle inline
            self._threaded = False

    def _outcomes_soon(self) -> bool:
        """``outcomes_soon()``, ``False`` without one or if it raises (this thread must
        not die holding a batch it took)."""
        if self.outcomes_soon is None:
            return False
        try:
            return self.outcomes_soon()
        except Exception:
            log.exception("deciding whether to wait for more outcomes failed; not waiting")
            return False

    def _take_waiting(self, batch: list[Settlement]) -> bool:
        """Move what waits in the inbox into ``batch`` (up to :data:`BATCH`) without
        blocking; whether the end was among it."""
        while len(batch) < BATCH:
            try:
                item = self._inbox.get_nowait()
            except stdqueue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False
