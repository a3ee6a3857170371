"""Landing: storing a batch of settlements, then acking or retrying their leases.

Two rules hold everywhere here:

* nothing is acked before its outcome is stored: a store that fails leaves the lease to
  expire, so the job runs again (at least once);
* a worker that lost its lease changes nothing: its record is fenced out by the result
  backend (``supersedes``: an earlier run or attempt never replaces a later one) and its ack
  or retry by the queue's token. Where the queue and the results share one store
  (``settle_many``: SQLite in one file), both happen in one transaction.

What makes it long is what a store does wrong: a store that is away for a moment (tried
again while the leases last, :meth:`Landing._land_patiently`), one that cannot hold one
record of a batch (settled one by one, the bad one failed: :meth:`Landing._land`), a message
carrying an out-of-date run (:meth:`Landing._rebased`). Separate from :mod:`.settle`, whose
thread collects the batches, and from :mod:`.outcomes`, which builds what is landed. A mixin
of :class:`~nuvom_kernel.worker.settle.Settler`, not an object of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel import events
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, Lease, Settlement
from nuvom_kernel.outcome import Outcome
from nuvom_kernel.worker.outcomes import NEVER_RAN
from nuvom_kernel.workflow.settle import advance_steps, final_steps

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.kernel import Kernel

__all__ = ["RETRY_PAUSES", "UNSTORABLE", "Landing"]

log = logging.getLogger("nuvom.worker")

#: A batch the store failed to take is tried again after these pauses (doubling up to the
#: last), for as long as this worker holds its leases: see :meth:`Landing._land_patiently`.
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


class Landing:
    """The landing half of :class:`~nuvom_kernel.worker.settle.Settler`: :meth:`settle`."""

    # The settler's, set in Settler.__init__ (annotations only: nothing here at runtime).
    kernel: Kernel
    queue: QueueBackend
    results: ResultBackend
    on_settled: Callable[[Settlement, bool], None]
    settling: set[str]
    storing: threading.Event
    _give_up: threading.Event
    unrecorded: int
    _tally: threading.Lock
    # ... and its outcome building (:class:`~nuvom_kernel.worker.outcomes.Outcomes`)
    _stored: Callable[[str], JobRecord | None]
    _unstorable: Callable[[Settlement, Exception, bool], Settlement]

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
        they were lost meanwhile. The lease monitor goes on extending their leases
        meanwhile (while a try runs, once it is slow: see :attr:`settling`).
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
            ids = [item.lease.id for item in batch]
            self.settling.update(ids)  # (see Settler.settling)
            try:
                again = False
                try:
                    settled, landed = self._land(batch)
                    if deadline is not None and not all(landed):  # after a failed try
                        landed = self._landed_before(settled, landed)
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
            finally:
                self.settling.difference_update(ids)
            time.sleep(pause)

    def _landed_before(self, batch: Sequence[Settlement], landed: list[bool]) -> list[bool]:
        """``landed``, with ``True`` for each refused settlement whose record is stored as
        this worker sent it (its lease's token, attempt and status): a try that timed out
        had landed (the store ran it, its reply was lost), and the next try, refused for
        the lease that try acked, was logged as a lease lost and not counted as done."""
        out = list(landed)
        for i, (item, ok) in enumerate(zip(batch, landed, strict=True)):
            if ok:
                continue
            stored, record = self._stored(item.record.job_id), item.record
            out[i] = stored is not None and (stored.token, stored.attempts, stored.run,
                                             stored.status) == (record.token, record.attempts,
                                                                record.run, record.status)
        return out

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
        batch refused.
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
        with self._tally:
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

    def _what_next(self, job_id: str) -> str:
        """What becomes of a job whose outcome was refused, by where the queue has it now:
        "it runs again" was said too of a job an operator had cancelled meanwhile, whose
        message is gone (one question to the queue, on this rare path only)."""
        try:
            gone = self.queue.peek_state(job_id) is None
        except Exception:  # (the store that failed the settle may fail this too)
            gone = False
        if gone:
            return ("the queue no longer holds it (it was cancelled, or another worker "
                    "finished it meanwhile), so it does not run again")
        return ("it runs again where it is claimed next (the job's current lease holder, if "
                "any, records its outcome)")

    def _log(self, item: Settlement, ok: bool) -> None:
        record = item.record
        if not ok:
            log.warning("job=%s task=%s attempt=%d lost its lease before its outcome (%s) was "
                        "recorded (the worker was paused or stalled past the visibility "
                        "timeout, or the store failed); %s", record.job_id, record.task,
                        record.attempts, record.status, self._what_next(record.job_id))
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
