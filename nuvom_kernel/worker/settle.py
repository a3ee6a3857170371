"""Settling: deciding a job's outcome, then storing it and acking or retrying its lease.

Every outcome — success, a failure to retry, a final failure, a message that cannot even be
decoded — becomes one :class:`~nuvom_kernel.models.Settlement` and goes the same way: into
a batch that is stored first and acked or retried after, never the other way round. Two
rules hold everywhere here:

* nothing is acked before its outcome is stored: a store that fails leaves the lease to
  expire, so the job runs again (at least once);
* a worker that lost its lease changes nothing: its record is fenced out by the result
  backend (``supersedes``: an earlier run or attempt never replaces a later one) and its ack
  or retry by the queue's token. Where the queue and the results share one store
  (``settle_many``: SQLite in one file), both happen in one transaction.

Batching (group commit) is why a lone job is written at once but a busy worker writes
hundreds of outcomes per commit: two commits per job were most of a job's cost on SQLite.
In a drain of short jobs the settler also waits :data:`LINGER_SECS` for more outcomes
before it settles a small batch (see :class:`Settler`).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel import events
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
from nuvom_kernel.job import Job
from nuvom_kernel.models import (
    TERMINAL_STATES,
    Backoff,
    JobRecord,
    JobStatus,
    Lease,
    Settlement,
)
from nuvom_kernel.outcome import Outcome
from nuvom_kernel.serialization import from_wire, to_wire
from nuvom_kernel.workflow.graph import WF_HEADER
from nuvom_kernel.workflow.settle import advance_steps, final_steps

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.kernel import Kernel

__all__ = ["Running", "Settler", "outcomes_soon", "qualname"]

log = logging.getLogger("nuvom.worker")

#: History kinds of a message failed without running (``without_envelope``).
NEVER_RAN = ("dead", "undecodable")
#: Most outcomes settled in one batch (one or two commits).
BATCH = 512
#: How long the settler waits for more outcomes before settling a small batch, while more
#: are due soon (``outcomes_soon``; PostgreSQL's ``commit_delay`` idea).
LINGER_SECS = 0.002
#: A batch at least this big is settled at once.
LINGER_BATCH = 128
_linger = time.sleep  # the linger's wait (tests record it instead)
#: A batch the store failed to take is tried again after these pauses (doubling up to the
#: last), for as long as this worker holds its leases: see :meth:`Settler._land_patiently`.
RETRY_PAUSES = (0.05, 0.1, 0.2, 0.5, 1.0)
#: This long before the batch's first lease expires, the settler extends the leases itself
#: (or learns they are lost: a try that lands later is refused by fencing anyway, and the
#: job is another worker's to run).
RETRY_MARGIN_SECS = 0.5


#: Errors of a store that cannot encode a record (not of a store that is down): JSON's
#: refusals (``ValueError``, ``TypeError``, ``RecursionError``), text that is not UTF-8
#: (``UnicodeError``, a ``ValueError``), an integer too large (``OverflowError``).
UNSTORABLE: tuple[type[Exception], ...] = (ValueError, TypeError, RecursionError,
                                           OverflowError, SerializationError)


class _NotStored(Exception):
    """The store failed a whole batch (it is down or refused the call), not one outcome it
    cannot encode: the batch may be tried again as it is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _storable(text: str) -> str:
    """``text`` as UTF-8 can hold it: an exception's message may carry lone surrogates (a
    file name decoded with ``surrogateescape``), which no store's UTF-8 encoder takes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


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


class Settler:
    """Builds settlements and settles them in batches on a thread of its own.

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
        #: Held while a batch is stored and acked, and by the monitor while it extends
        #: leases: an extension racing an ack of the same lease (a rename racing a delete,
        #: on the file backend) could otherwise undo the ack and run a finished job again.
        self.lease_lock = threading.Lock()
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
        #: Outcomes given up unrecorded so far (their jobs run again).
        self.unrecorded = 0

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

    # --- settling ---------------------------------------------------------------------------

    def settle(self, batch: Sequence[Settlement], patiently: bool = False) -> list[bool]:
        """Store every record, then ack or retry what was stored; per settlement, whether
        it landed (``False``: the lease was lost or the store failed). ``patiently``: a
        store that fails the whole batch is tried again while the leases last (the
        settler's thread; a caller settling inline does not wait)."""
        batch, landed = self._land_patiently(batch, patiently)
        if not all(landed) or log.isEnabledFor(logging.INFO):  # else nothing to log
            for item, ok in zip(batch, landed, strict=True):
                self._log(item, ok)
        pm = self.kernel.pm
        if pm.hook.nuvom_after_settle.get_hookimpls():  # metrics: nothing built without one
            for item, ok in zip(batch, landed, strict=True):
                events.emit(pm, "nuvom_after_settle", outcome=Outcome(item, ok))
        return landed

    def _land_patiently(self, batch: Sequence[Settlement], patiently: bool
                        ) -> tuple[Sequence[Settlement], list[bool]]:
        """``_land(batch)``, tried again after a pause while the store fails the whole
        batch and the batch's leases last; each settlement forgotten by the worker once
        settled or given up.

        Why: a store that is away for a moment (a Redis or PostgreSQL restart, a
        failover, a dropped connection its client does not retry) failed every outcome
        that finished meanwhile, and each of those jobs ran again once its lease expired
        (1 to 4 of 300 in a drain across a 2 s Redis restart). The leases are still this
        worker's, so the same batch may simply be settled later: fencing refuses it if
        they were lost meanwhile. The lease lock is not held between tries, so the lease
        monitor goes on extending them.
        """
        try:
            return self._land_holding(batch, patiently)
        finally:  # landed, given up, or a bug: claims may go on either way
            self.storing.set()

    def _land_holding(self, batch: Sequence[Settlement], patiently: bool
                      ) -> tuple[Sequence[Settlement], list[bool]]:
        pauses = iter(RETRY_PAUSES)
        deadline: float | None = None
        lost: list[Settlement] = []  # leases found lost while trying: never landed
        while True:
            with self.lease_lock:
                again = False
                try:
                    settled, landed = self._land(batch)
                except _NotStored as exc:
                    self.storing.clear()
                    if deadline is None:  # the first lease to expire, less a margin
                        deadline = min(item.lease.expires_at for item in batch)
                        deadline -= RETRY_MARGIN_SECS
                    pause = next(pauses, RETRY_PAUSES[-1])
                    again = patiently and not self._give_up.is_set()
                    if again and time.time() + pause >= deadline:
                        batch, gone, deadline = self._hold(batch)
                        lost += gone
                        again = bool(batch)
                    if not again:
                        if batch:
                            self._unrecorded(batch, exc.error)
                        settled, landed = batch, [False] * len(batch)
                    elif pause == RETRY_PAUSES[0]:
                        log.warning("storing %d job outcome(s) failed (%r); trying again "
                                    "while this worker holds their leases (it claims no new "
                                    "job meanwhile)", len(batch), exc.error)
                if not again:
                    settled, landed = [*settled, *lost], [*landed, *([False] * len(lost))]
                    for item, ok in zip(settled, landed, strict=True):
                        self.on_settled(item, ok)  # forgotten before the monitor looks again
                    return settled, landed
            time.sleep(pause)

    def _hold(self, batch: Sequence[Settlement]
              ) -> tuple[list[Settlement], list[Settlement], float]:
        """Extend the leases of a batch still waiting for its store: the settlements whose
        leases this worker still holds, those it lost, and when to extend again.

        Why not give up at the first lease's expiry: a store that takes small writes but
        not a batch of records (a full disk takes a lease extension in place, not 64 results
        of 100 KB) left every such job to run again at each lease, until the delivery limit
        recorded it FAILED as if its worker had crashed, though each run had succeeded.
        A queue that cannot extend them either (the same full disk) loses none of them by
        that: a lease that expired is still this worker's until another claims it, and the
        outcome lands once the store takes it (fencing refuses it if another worker took
        the job meanwhile). So only leases the queue says are gone are given up."""
        leases = [item.lease for item in batch]
        secs = self.queue.visibility_timeout_secs
        expires_at = time.time() + secs  # taken before the call: never later than the queue's
        try:
            held = self.queue.extend_many(leases, secs)
        except Exception as exc:  # kept as they were: a later try asks the queue again
            log.warning("could not extend %d lease(s) whose outcomes wait for the store "
                        "(%r); their outcomes are still tried: each lands unless another "
                        "worker claimed its job meanwhile", len(leases), exc)
            return list(batch), [], expires_at - RETRY_MARGIN_SECS
        # each kept lease as now extended, so a later try does not take it for lapsed
        kept = [attrs.evolve(item, lease=attrs.evolve(item.lease, expires_at=expires_at))
                for item, ok in zip(batch, held, strict=True) if ok]
        gone = [item for item, ok in zip(batch, held, strict=True) if not ok]
        if gone:
            self._unrecorded(gone, RuntimeError("their leases were lost while the store "
                                                "refused their outcomes"))
        return kept, gone, expires_at - RETRY_MARGIN_SECS

    def _land(self, batch: Sequence[Settlement], substitute: bool = False,
              rebase: bool = True) -> tuple[Sequence[Settlement], list[bool]]:
        """Settle ``batch``; the settlements as settled (one whose record cannot be stored
        is replaced by its failure) and whether each landed.

        A backend stores a batch all or nothing, so one record it cannot encode (a result
        or an error text its store refuses) refused the whole batch, and every job in it
        ran again with the bad one, over and over. A batch refused for such an error
        (:data:`UNSTORABLE`: encoding, not storage) is settled one by one instead, and the
        record that still fails alone is stored as a failure that says why (see
        :meth:`_land_failure`). Any other error
        (a store that is down) raises :class:`_NotStored` for the whole batch, without a
        retry per job that would each wait out the same outage.
        """
        try:
            landed = self.queue.settle_many(batch, self.results)
            if landed is None:
                landed = self._store_then_settle(batch)
        except Exception as exc:
            if not isinstance(exc, UNSTORABLE):
                raise _NotStored(exc) from exc
            if substitute:  # the failure that says why cannot be stored either
                raise
            if len(batch) > 1:
                log.warning("storing %d outcomes at once failed (%r); storing them one by "
                            "one, so only the outcome that cannot be stored fails", len(batch),
                            exc)
                settled: list[Settlement] = []
                landed = []
                for item in batch:
                    [done], [ok] = self._land_or_give_up([item], rebase=rebase)
                    settled.append(done)
                    landed.append(ok)
                return settled, landed
            return self._land_failure(batch[0], exc)
        if rebase and not all(landed):
            return self._rebased(batch, landed)
        return batch, landed

    def _rebased(self, batch: Sequence[Settlement], landed: list[bool]
                 ) -> tuple[Sequence[Settlement], list[bool]]:
        """Settle again, as the job's current run, outcomes refused because another run's
        record is stored while this lease is still the job's own.

        Why: an id can be pushed again after its record was read (a ``unique=True`` task
        called while its job finished; a record written by a producer whose push was
        rolled back), so a message can carry an out-of-date run. Its outcome was refused
        and not acked; it ran again at every visibility timeout, and the delivery limit
        finally recorded FAILED over the newer run's outcome. A lease the queue still holds
        proves no other worker has the job, and the message's arguments are the id's own:
        its outcome is the current run's, or the next one's after a finished run. A message
        that never ran (it does not decode, or hit the delivery limit) has no outcome to
        add: it is acked, and the newer run's record stands. A lease lost to another
        worker, or a refusal within one run, is left as before. One queue call asks for all
        the refused leases at once: a worker that stalled past its leases may find a whole
        batch refused, and the lease monitor waits while this runs.
        """
        refused = [i for i, ok in enumerate(landed) if not ok and not batch[i].workflow]
        if not refused:
            return batch, landed
        leases = [batch[i].lease for i in refused]
        held = self.safely(f"hold {len(leases)} lease(s)", leases[0], self.queue.extend_many,
                           leases, self.queue.visibility_timeout_secs) or [False] * len(leases)
        redo: list[tuple[int, Settlement]] = []
        for i in (i for i, ok in zip(refused, held, strict=True) if ok):
            item, record = batch[i], batch[i].record
            stored = self._stored(record.job_id)
            if (stored is None or stored.token == record.token or stored.run < record.run
                    or (stored.run == record.run and stored.status not in TERMINAL_STATES)):
                continue
            if record.history and record.history[-1].get("kind") in NEVER_RAN:
                if self.safely("drop it", item.lease, self.queue.ack, item.lease):
                    log.warning("job=%s task=%s: a message of run %d that never ran was "
                                "dropped; run %d's record (%s) stands", record.job_id,
                                record.task, record.run, stored.run, stored.status.value)
                continue
            run = stored.run + (stored.status in TERMINAL_STATES)
            log.warning("job=%s task=%s: its message carried run %d while run %d is %s; its "
                        "outcome (%s) is stored as run %d", record.job_id, record.task,
                        record.run, stored.run, stored.status.value, record.status.value, run)
            redo.append((i, attrs.evolve(item, record=attrs.evolve(record, run=run))))
        if not redo:
            return batch, landed
        settled, again = self._land_or_give_up([item for _, item in redo], rebase=False)
        batch, landed = list(batch), list(landed)
        for (i, _), item, ok in zip(redo, settled, again, strict=True):
            batch[i], landed[i] = item, ok
        return batch, landed

    def _land_or_give_up(self, batch: Sequence[Settlement], rebase: bool
                         ) -> tuple[Sequence[Settlement], list[bool]]:
        """``_land`` for part of a batch whose other parts may have landed already (the
        batch cannot be tried again whole): what the store fails is left to run again."""
        try:
            return self._land(batch, rebase=rebase)
        except _NotStored as exc:
            self._unrecorded(batch, exc.error)
            return batch, [False] * len(batch)

    def _land_failure(self, item: Settlement, exc: Exception
                      ) -> tuple[Sequence[Settlement], list[bool]]:
        """``item``'s record cannot be stored: store a FAILED record that says why instead.

        If the store refuses that too, what it refuses is not the outcome but what every
        record of the job carries (its arguments, options or an earlier error: a string
        the store cannot hold), so the job ran again at every visibility timeout, for
        ever; the last try keeps only the job's identity and the error. Only if even that
        fails is the job left to run again, like any outcome not recorded.
        """
        for bare in (False, True):
            try:
                return self._land([self._unstorable(item, exc, bare)], substitute=True)
            except UNSTORABLE as again:
                last = again
        self._unrecorded([item], last)
        return [item], [False]

    def _unstorable(self, item: Settlement, exc: Exception, bare: bool = False) -> Settlement:
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

    def _store_then_settle(self, batch: Sequence[Settlement]) -> list[bool]:
        keep = self._still_held(batch)
        if keep is None:  # as almost always: no lease looks lapsed
            stored = self.results.put_many([item.record for item in batch])  # raises: _land
        else:
            kept = self.results.put_many([batch[i].record for i in keep])
            stored = [False] * len(batch)
            for i, ok in zip(keep, kept, strict=True):
                stored[i] = ok
        landed = list(stored)
        steps = final_steps([item for i, item in enumerate(batch) if stored[i]])
        if steps and not advance_steps(self.queue, self.results, steps):
            unsettled = {id(item) for item in steps}
            stored = [ok and id(item) not in unsettled
                      for ok, item in zip(stored, batch, strict=True)]
            landed = list(stored)
        acks = [i for i, item in enumerate(batch) if stored[i] and item.retry_in is None]
        if acks:
            leases = [batch[i].lease for i in acks]
            try:
                acked = self.queue.ack_many(leases)
            except Exception as exc:  # one bad ack must not re-run the whole batch
                log.warning("queue backend %r failed to ack a batch of %d (%r); acking one by "
                            "one", self.queue.name, len(leases), exc)
                acked = [bool(self.safely("ack it", lease, self.queue.ack, lease))
                         for lease in leases]
            for i, ok in zip(acks, acked, strict=True):
                landed[i] = ok
        for i, item in enumerate(batch):
            if stored[i] and item.retry_in is not None:
                landed[i] = bool(self.safely("queue its retry", item.lease, self.queue.retry,
                                              item.lease, delay_secs=item.retry_in,
                                              body=item.body))
        return landed

    def _still_held(self, batch: Sequence[Settlement]) -> list[int] | None:
        """The indices of ``batch`` whose outcome may be stored (``None``: all): a lease
        past its expiry (as far as this worker knows) only if the queue still holds it.

        Why: here the records live apart from the queue (no ``settle_many``), and a record
        is fenced by run and attempt only. A worker cut off past its lease, whose job another
        worker took over and runs now, stored its older attempt as the job's outcome until
        the new one landed: ``get()`` could return a result the job then replaced. Asking
        costs one call, and only for leases that look lapsed.
        """
        now = time.time()
        lapsed = [i for i, item in enumerate(batch) if item.lease.expires_at <= now]
        if not lapsed:
            return None
        leases = [batch[i].lease for i in lapsed]
        try:
            held = self.queue.extend_many(leases, self.queue.visibility_timeout_secs)
        except Exception as exc:  # the queue's store is down too: not a lease lost, and
            # nothing is written yet, so the batch may be tried again whole (_hold)
            raise _NotStored(exc) from exc
        lost = {i for i, ok in zip(lapsed, held, strict=True) if not ok}
        return [i for i in range(len(batch)) if i not in lost]

    def _unrecorded(self, batch: Sequence[Settlement], exc: Exception) -> None:
        self.unrecorded += len(batch)
        log.error("%d job outcome(s) could not be recorded (%r); not acked, they will run "
                  "again after the visibility timeout: %s", len(batch), exc,
                  " ".join(f"job={item.lease.id}" for item in batch))

    def safely(self, what: str, lease: Lease, call: Any, *args: Any, **kwargs: Any) -> Any:
        """A queue call whose exception is logged, not raised: every caller is safe with a
        lost call (the lease expires and the job runs again)."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            log.error("job=%s: queue backend %r failed to %s (%r); its lease will expire and "
                      "the job run again", lease.id, self.queue.name, what, exc)
            return None

    def _log(self, item: Settlement, ok: bool) -> None:
        record = item.record
        if not ok:
            log.warning("job=%s task=%s attempt=%d lost its lease before its outcome (%s) was "
                        "recorded (the worker was paused or stalled past the visibility "
                        "timeout, or the store failed); the worker that holds it now decides",
                        record.job_id, record.task, record.attempts, record.status)
        elif not log.isEnabledFor(logging.INFO):
            return
        elif record.status is JobStatus.SUCCEEDED:
            log.info("job=%s task=%s status=SUCCEEDED attempt=%d duration_ms=%.1f",
                     record.job_id, record.task, record.attempts,
                     ((record.finished_at or 0.0) - (record.started_at or 0.0)) * 1000)
        elif record.status is JobStatus.RETRYING:
            log.info("job=%s task=%s status=RETRYING attempt=%d error=%s retry_in_s=%.2f",
                     record.job_id, record.task, record.attempts, record.error_type,
                     item.retry_in or 0.0)
        else:
            log.info("job=%s task=%s status=%s attempt=%d error=%s: %s", record.job_id,
                     record.task, record.status, record.attempts, record.error_type,
                     record.error_message)

    # --- outcomes ---------------------------------------------------------------------------

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
        return Settlement(lease, record, workflow=None if envelope is None
                          else envelope.headers.get(WF_HEADER))  # a dead step ends its node

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

