"""Queue contract tests of the lease protocol: ack, fencing tokens, expiry and extension.

A lease is what lets a worker end or keep its job, and its token is the fence that stops a
worker which lost it (expired, released, taken over) from touching the job its new holder
runs. The worker's settler calls only ``ack_many`` / ``settle_many`` and its lease monitor
only ``extend_many``, so the batch calls are held to the single calls' fence, lease by
lease, here rather than trusted to share their code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobRecord, JobStatus, Settlement
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message, make_record, wait_until

__all__ = ["QueueLeaseTests"]


class QueueLeaseTests(QueueContractBase):
    """Ack, fencing, lease expiry and extension, one call and a batch at a time."""

    def test_ack_removes(self, queue_backend: QueueBackend) -> None:
        message = make_message()
        queue_backend.enqueue(message)
        lease = self._claim_one(queue_backend)
        assert queue_backend.ack(lease) is True, "ack with the current lease succeeds"
        assert queue_backend.qsize() == 0, "an acked message is gone"
        self._nothing_claimable(queue_backend, "an acked message is gone")
        assert queue_backend.ack(lease) is False, "a second ack must report the lease is gone"
        assert queue_backend.peek_state(message.id) is None

    def test_ack_many_acks_held_leases_and_reports_lost_ones(
            self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many([make_message() for _ in range(3)])
        leases = wait_until(lambda: queue_backend.claim(3), self.patience_secs,
                            "three messages were never claimable")
        while len(leases) < 3:
            leases += queue_backend.claim(3 - len(leases))
        assert queue_backend.ack(leases[0]) is True
        assert queue_backend.ack_many(leases) == [False, True, True], \
            "ack_many acks what the caller holds and reports the stale lease as lost"
        assert queue_backend.qsize() == 0
        self._nothing_claimable(queue_backend, "acked messages are gone")

    def test_ack_many_is_fenced_per_lease(self, queue_backend: QueueBackend) -> None:
        """``ack_many`` is what the worker's settler calls, so it must keep ``ack``'s fence
        lease by lease: a stale lease (its job given up and claimed again — here by a
        release, as after an expiry) and a forged one delete nothing and are reported lost,
        while the held leases of the same batch are acked. Results are per lease, in order:
        keyed by job id, a stale lease batched with its job's current holder (one worker
        can hold both: its first run lost the lease and it claimed the job again) would
        read as acked too."""
        stale_msg, forged_msg, done_msg, kept_msg = (make_message() for _ in range(4))
        queue_backend.enqueue_many([stale_msg, forged_msg, done_msg, kept_msg])
        leases = self._claim_exactly(queue_backend, 4, "four messages were never claimable")
        stale, current = self._stale_beside_current(queue_backend, leases[stale_msg.id])
        forged = attrs.evolve(leases[forged_msg.id], token=uuid.uuid4().hex)
        got = queue_backend.ack_many([stale, forged, leases[done_msg.id]])
        assert got == [False, False, True], \
            "ack_many must check every lease's token, as ack does: a stale and a forged " \
            "lease are refused (False, nothing deleted) while the held lease of the same " \
            f"batch is acked; got {got} for [stale, forged, held]. Fix: delete only rows " \
            "whose id and token both match"
        got = queue_backend.ack_many([stale, current])
        assert got == [False, True], \
            "ack_many must report each lease by its own token: for [stale lease, current " \
            f"lease] of one job it returned {got}. Fix: match the deleted rows back to the " \
            "leases by (id, token), not by job id"
        assert queue_backend.ack_many([leases[forged_msg.id], leases[kept_msg.id]]) == \
            [True, True], "a refused ack_many must leave the jobs to their real holders"
        assert queue_backend.ack_many([]) == [], "an empty batch acks nothing"
        assert queue_backend.qsize() == 0
        self._nothing_claimable(queue_backend, "acked messages are gone")

    def test_unacked_lease_becomes_visible_after_visibility_timeout(
        self, build_queue: Callable[..., QueueBackend]
    ) -> None:
        backend = build_queue(visibility_timeout_secs=self.short_visibility_secs)
        backend.enqueue(make_message(body=b"payload"))
        start = time.monotonic()
        first = self._claim_one(backend)
        self._hidden_until(backend, start + self.short_visibility_secs,
                           "a leased message is invisible")
        second = wait_until(lambda: backend.claim(1), self.patience_secs,
                            "an un-acked lease never became visible again")[0]
        assert time.monotonic() - start >= self.short_visibility_secs * 0.8
        assert second.id == first.id and second.message.body == b"payload"
        assert second.deliveries == 2, "recovered leases keep counting deliveries"
        assert second.token != first.token, "a new claim needs a new fencing token"

    def test_stale_lease_is_fenced(self, build_queue: Callable[..., QueueBackend]) -> None:
        backend = build_queue(visibility_timeout_secs=self.short_visibility_secs)
        backend.enqueue(make_message(body=b"v1"))
        stale = self._claim_one(backend)
        current = wait_until(lambda: backend.claim(1), self.patience_secs,
                             "the lease never expired")[0]
        assert backend.extend(current, 30) is True, "the new holder can extend its lease"
        assert backend.ack(stale) is False, "ack with a stale token must be refused"
        assert backend.extend(stale, 30) is False, "extend with a stale token must be refused"
        assert backend.retry(stale, delay_secs=0, body=b"stale") is False, \
            "retry with a stale token must be refused"
        assert backend.release(stale) is False, "release with a stale token must be refused"
        self._nothing_claimable(backend, "stale calls must leave the current lease alone")
        assert backend.qsize() == 0
        assert backend.ack(current) is True, "the current holder still owns the message"

    def test_forged_token_changes_nothing(self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue(make_message())
        real = self._claim_one(queue_backend)
        forged = attrs.evolve(real, token=uuid.uuid4().hex)
        assert queue_backend.ack(forged) is False, "ack checks the fencing token"
        assert queue_backend.release(forged) is False, "release checks the fencing token"
        assert queue_backend.retry(forged, delay_secs=0) is False, "retry checks the token"
        assert queue_backend.extend(forged, 30) is False, "extend checks the fencing token"
        self._nothing_claimable(queue_backend, "a forged token must not free the message")
        assert queue_backend.ack(real) is True

    def test_extend_keeps_lease_alive(self, build_queue: Callable[..., QueueBackend]) -> None:
        vis = self.extend_visibility_secs
        backend = build_queue(visibility_timeout_secs=vis)
        backend.enqueue(make_message())
        lease = self._claim_one(backend)
        until = time.monotonic() + 2 * vis
        while time.monotonic() < until:
            extended_at = time.monotonic()
            assert backend.extend(lease, vis) is True
            self._hidden_until(backend, extended_at + vis, "an extended lease stays invisible")
            time.sleep(vis / 5)
        assert backend.ack(lease) is True, "the lease outlived its original timeout"

    def test_extend_many_keeps_every_lease_alive(self, build_queue: Callable[..., QueueBackend]
                                                 ) -> None:
        """``extend_many`` is what the worker's lease monitor calls for every running job at
        once (``extend`` alone is never called for them): a backend that overrides it must
        move every lease's expiry, as ``extend`` does, or a job running longer than the
        visibility timeout is claimed again while it runs ("lost its lease")."""
        vis = self.extend_visibility_secs
        backend = build_queue(visibility_timeout_secs=vis)
        backend.enqueue_many([make_message() for _ in range(3)])
        leases = list(self._claim_exactly(backend, 3, "three messages were never claimable")
                      .values())
        assert backend.extend_many([], vis) == [], "an empty batch extends nothing"
        until = time.monotonic() + 2 * vis
        while time.monotonic() < until:
            extended_at = time.monotonic()
            got = backend.extend_many(leases, vis)
            assert got == [True, True, True], \
                f"extend_many must return, per lease and in order, whether it held: got {got}" \
                " for three held leases"
            self._hidden_until(
                backend, extended_at + vis,
                "extend_many must push every lease's expiry to now + secs, as extend does "
                "(the worker's monitor extends running jobs only through extend_many, so "
                "without it a long job is claimed again while it runs. Fix: set each held "
                "lease's expiry, not just report it held)")
            time.sleep(vis / 5)
        assert backend.ack_many(leases) == [True, True, True], \
            "the leases extended by extend_many outlived their original timeout"

    def test_extend_many_is_fenced_per_lease(self, queue_backend: QueueBackend) -> None:
        """``extend_many`` must keep ``extend``'s fence lease by lease: a stale lease (its
        job given up and claimed again) or a forged one is refused (``False``) and extends
        nothing, while the held leases of the same batch are extended. The worker's monitor
        learns that a job was taken over only from that ``False``; a stale lease batched
        with its job's current one (one worker can hold both) must read as lost too."""
        stale_msg, forged_msg, held_msg = (make_message() for _ in range(3))
        queue_backend.enqueue_many([stale_msg, forged_msg, held_msg])
        leases = self._claim_exactly(queue_backend, 3, "three messages were never claimable")
        stale, current = self._stale_beside_current(queue_backend, leases[stale_msg.id])
        forged = attrs.evolve(leases[forged_msg.id], token=uuid.uuid4().hex)
        got = queue_backend.extend_many([stale, leases[held_msg.id], forged], 30)
        assert got == [False, True, False], \
            "extend_many must check every lease's token, as extend does: a stale and a " \
            "forged lease are refused (False) while the held lease of the same batch is " \
            f"extended; got {got} for [stale, held, forged]. Fix: extend only rows whose id " \
            "and token both match"
        got = queue_backend.extend_many([stale, current, forged, leases[forged_msg.id]], 30)
        assert got == [False, True, False, True], \
            "extend_many must report each lease by its own token: for [stale, current] " \
            f"leases of one job and [forged, real] leases of another it returned {got}. " \
            "Fix: match the extended rows back to the leases by (id, token), not by job id"
        # Expire the jobs through their holders, as a worker that gives them up does; a
        # stale or forged extend_many must not revive those leases (read by peek_state, not
        # by claiming, so nothing but the refused calls can have changed them).
        for lease in (current, leases[forged_msg.id]):
            assert queue_backend.extend(lease, 0) is True
            assert queue_backend.peek_state(lease.id) is JobStatus.QUEUED, \
                "extend(lease, 0) must expire the lease at once (its job reads QUEUED)"
        assert queue_backend.extend_many([stale, forged], 30) == [False, False], \
            "extend_many must refuse a stale and a forged lease"
        revived = [m.id for m in (stale_msg, forged_msg)
                   if queue_backend.peek_state(m.id) is not JobStatus.QUEUED]
        assert revived == [], \
            "a refused extend_many must change nothing, but it extended the expired " \
            f"leases of {revived} again. Fix: extend only rows whose id and token both match"
        assert queue_backend.extend_many([leases[held_msg.id]], 30) == [True], \
            "a refused batch must leave the other leases held"

    @pytest.fixture
    def settle_results(self, queue_backend: QueueBackend) -> Any:
        """Override with a result backend that shares ``queue_backend``'s store, to run the
        ``settle_many`` contract (an optional call; the default skips it)."""
        return None

    def test_settle_many_is_fenced_and_atomic(self, queue_backend: QueueBackend,
                                              settle_results: Any) -> None:
        if settle_results is None:
            pytest.skip("settle_many is optional; override settle_results to check it")
        done, again, stale = make_message(), make_message(), make_message()
        queue_backend.enqueue_many([done, again, stale])
        leases = {le.id: le for le in queue_backend.claim(3)}
        forged = attrs.evolve(leases[stale.id], token=uuid.uuid4().hex)

        def record(lease: Any, status: JobStatus) -> JobRecord:
            return make_record(lease.id, status=status, attempts=lease.deliveries,
                               token=lease.token)

        outcome = queue_backend.settle_many([
            Settlement(leases[done.id], record(leases[done.id], JobStatus.SUCCEEDED)),
            Settlement(leases[again.id], record(leases[again.id], JobStatus.RETRYING),
                       retry_in=0.0, body=b"v2"),
            Settlement(forged, record(forged, JobStatus.SUCCEEDED)),
        ], settle_results)
        assert outcome == [True, True, False], \
            "settle_many must land held leases and refuse a stale token"
        assert settle_results.get(stale.id) is None, \
            "a refused settlement must not store its record"
        assert queue_backend.peek_state(stale.id) is JobStatus.RUNNING
        assert queue_backend.peek_state(done.id) is None, "a settled success is acked"
        got = settle_results.get(done.id)
        assert got is not None and got.status is JobStatus.SUCCEEDED
        retried = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                             "a settled retry never came back")[0]
        assert (retried.id, retried.message.body, retried.message.failures) == \
            (again.id, b"v2", 1)

    def test_settle_many_lands_only_records_the_fence_takes(
            self, queue_backend: QueueBackend, settle_results: Any) -> None:
        # A held lease whose job's record its store keeps over the outcome (here: the
        # CANCELLED record of the same run, as when a cancelled unique job's id is pushed
        # again): nothing of that settlement lands, the rest of the batch does.
        if settle_results is None:
            pytest.skip("settle_many is optional; override settle_results to check it")
        kept, done = make_message(), make_message()
        queue_backend.enqueue_many([kept, done])
        leases = {le.id: le for le in queue_backend.claim(2)}
        cancelled = make_record(kept.id, status=JobStatus.CANCELLED, attempts=0)
        assert settle_results.put(cancelled)
        outcome = queue_backend.settle_many([
            Settlement(leases[kept.id], make_record(kept.id, status=JobStatus.SUCCEEDED,
                                                    attempts=leases[kept.id].deliveries,
                                                    token=leases[kept.id].token)),
            Settlement(leases[done.id], make_record(done.id, status=JobStatus.SUCCEEDED,
                                                    attempts=leases[done.id].deliveries,
                                                    token=leases[done.id].token)),
        ], settle_results)
        assert outcome == [False, True], \
            "settle_many must say a settlement whose record the fence refused did not land"
        got = settle_results.get(kept.id)
        assert got is not None and got.status is JobStatus.CANCELLED, \
            "the refused record must not be stored"
        assert queue_backend.peek_state(kept.id) is JobStatus.RUNNING, \
            "a settlement whose record was refused must not be acked (its outcome is lost)"
        assert queue_backend.peek_state(done.id) is None
