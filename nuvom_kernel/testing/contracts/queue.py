"""``QueueBackendContract``: the semantics every queue backend must have, as pytest tests.

Subclass it in a module whose name pytest collects, and give it the one fixture it lacks::

    from nuvom_kernel.testing.contracts import BackendFactory, QueueBackendContract

    class TestMyQueue(QueueBackendContract):
        @pytest.fixture
        def make_queue_backend(self):
            return BackendFactory(MyQueue, {"url": "..."})

``make_queue_backend`` returns a callable ``(BackendContext) -> QueueBackend``. The contract
calls it with the context it needs (a short visibility timeout for the lease tests, the same
``data_dir`` every time so two instances share storage), and child processes call it again
to rebuild the backend — which is why :class:`BackendFactory` (picklable) is the usual answer.
Tests of promises a backend does not declare in ``capabilities`` are skipped, with the reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobRecord, JobStatus, Lease, Settlement
from nuvom_kernel.testing.contracts._support import (
    SlowlyRead,
    make_message,
    make_record,
    requires,
    wait_until,
)
from nuvom_kernel.testing.contracts.queue_browse import QueueBrowseTests
from nuvom_kernel.testing.contracts.queue_concurrency import QueueConcurrencyTests
from nuvom_kernel.testing.contracts.queue_limits import QueueLimitTests
from nuvom_kernel.testing.contracts.queue_workflows import QueueWorkflowTests

__all__ = ["QueueBackendContract"]

_ROUND_TRIP: dict[str, dict[str, Any]] = {
    "plain": {},
    "empty-body": {"body": b""},
    "binary-body": {"body": bytes(range(256)) * 4},
    "large-body": {"body": b"x" * (256 * 1024)},
    "unicode-id": {"job_id": "jöb id/with:odd chars ✓"},
    "named-queue": {"queue": "emails.high-volume"},
    "past-available-at": {"available_at": 1_600_000_000.0},
    "priority": {"priority": 7},
    "negative-priority": {"priority": -3},
    "task-name": {"task": "reports.daily_summary"},
}


class QueueBackendContract(QueueConcurrencyTests, QueueWorkflowTests, QueueBrowseTests,
                           QueueLimitTests):
    """Contract tests for :class:`~nuvom_kernel.backends.QueueBackend` implementations.

    Timing knobs (``short_visibility_secs``, ``delay_secs``, ``patience_secs`` …) are class
    attributes so a backend with coarse timers can widen them in its subclass.
    """

    # --- storage and order ----------------------------------------------------------------

    @pytest.mark.parametrize("case", list(_ROUND_TRIP))
    def test_round_trip_preserves_every_field(self, queue_backend: QueueBackend,
                                              case: str) -> None:
        if "priority" in case and not type(queue_backend).capabilities.priorities:
            pytest.skip("backend does not declare priorities")
        sent = make_message(**_ROUND_TRIP[case])
        queue_backend.enqueue(sent)
        got = self._claim_one(queue_backend).message
        assert got.id == sent.id
        assert got.body == sent.body, "the body must come back byte for byte"
        assert isinstance(got.body, bytes)
        assert (got.queue, got.priority) == (sent.queue, sent.priority)
        assert got.task == sent.task, "the task name must come back with the message"
        assert got.failures == 0, "a pushed message has no failed attempts yet"
        assert got.created_at == pytest.approx(sent.created_at, abs=1e-3)
        assert got.available_at <= time.time()

    def test_lease_fields(self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many([make_message(), make_message()])
        before = time.time()
        leases = queue_backend.claim(2)
        after = time.time()
        vis = queue_backend.visibility_timeout_secs
        assert isinstance(leases, list) and all(isinstance(le, Lease) for le in leases), (
            f"claim() must return a list of nuvom_kernel.models.Lease (the message, its "
            f"fencing token, deliveries, expires_at); it returned {leases!r:.200}")
        assert len(leases) == 2
        assert all(isinstance(le.token, str) and le.token for le in leases)
        assert leases[0].token != leases[1].token, "every claim needs its own fencing token"
        assert all(le.deliveries == 1 for le in leases), "first delivery counts as 1"
        for lease in leases:
            assert before + vis - 1 <= lease.expires_at <= after + vis + 1

    def test_claim_filters_by_queue(self, queue_backend: QueueBackend) -> None:
        a, b = make_message(queue="a"), make_message(queue="b")
        queue_backend.enqueue_many([a, b])
        assert queue_backend.claim(10, []) == [], "queues=[] means no queue"
        assert [le.id for le in queue_backend.claim(10, ["b"])] == [b.id], \
            "claim(n, queues) leases messages of the named queues only"
        assert queue_backend.claim(10, ["b", "c"]) == [], \
            "a leased message is not claimable again, and an unknown queue has no messages"
        assert [le.id for le in queue_backend.claim(10, None)] == [a.id], \
            "queues=None means every queue"

    def test_fifo_within_a_priority(self, queue_backend: QueueBackend) -> None:
        sent = [make_message() for _ in range(12)]
        queue_backend.enqueue_many(sent[:6])
        for message in sent[6:]:
            queue_backend.enqueue(message)
        got = [le.id for le in queue_backend.claim(5)]
        got += [self._claim_one(queue_backend).id for _ in range(3)]
        got += [le.id for le in queue_backend.pop_batch(10)]
        assert got == [m.id for m in sent], "messages of one priority come out oldest first"

    @requires("priorities")
    def test_higher_priority_first(self, queue_backend: QueueBackend) -> None:
        low = [make_message(priority=0) for _ in range(3)]
        high = [make_message(priority=5) for _ in range(3)]
        queue_backend.enqueue_many([low[0], high[0], low[1], high[1], low[2], high[2]])
        got = [le.id for le in queue_backend.claim(6)]
        assert got == [m.id for m in high + low], \
            "higher priority comes first, and FIFO within each priority"

    def test_claim_order_survives_retry_release_and_expiry(self, queue_backend: QueueBackend
                                                           ) -> None:
        """A message put back — retried, released (at once or after a delay) or recovered
        from an expired lease — keeps its priority and its place: claim order stays highest
        priority first, FIFO (by ``created_at``) within a priority. A backend that re-queues
        it at the default priority makes a failing urgent job wait behind the backlog (or a
        retried background job jump it); one that re-queues it at the back of its priority
        reorders the queue on every crash."""
        caps = type(queue_backend).capabilities
        high = 5 if caps.priorities else 0
        paths = ["retried", "released", "expired (extend 0)", "timed out"]
        if caps.delayed:
            paths[2:2] = ["retried after a delay", "released after a delay"]
        # Created in this order, so FIFO interleaves the priorities; an untouched pair first
        # and last, so a put-back message moved to the front or the back of its priority
        # shows up too (they are enqueued after the claim below, so never claimed).
        ranks = ("low", "high") if caps.priorities else ("1st", "2nd")
        created = {f"{rank}/{path}": make_message(priority=high if rank == "high" else 0)
                   for path in ["untouched", *paths, "untouched last"]
                   for rank in ranks}
        label = {m.id: name for name, m in created.items()}
        untouched = [m for name, m in created.items() if "/untouched" in name]
        queue_backend.enqueue_many([m for m in created.values() if m not in untouched])
        leases = self._claim_exactly(queue_backend, len(created) - len(untouched),
                                     "the messages were never claimable")
        queue_backend.enqueue_many(untouched)
        for name, message in created.items():
            path = name.split("/", 1)[1]
            if path.startswith("untouched"):
                continue
            lease = leases[message.id]
            if path == "retried":
                assert queue_backend.retry(lease, delay_secs=0) is True
            elif path == "retried after a delay":
                assert queue_backend.retry(lease, delay_secs=self.delay_secs) is True
            elif path == "released":
                assert queue_backend.release(lease) is True
            elif path == "released after a delay":
                assert queue_backend.release(lease, delay_secs=self.delay_secs) is True
            elif path == "expired (extend 0)":
                assert queue_backend.extend(lease, 0) is True
            else:  # "timed out": left to expire by its deadline, as a dead worker's lease
                assert queue_backend.extend(lease, self.short_visibility_secs) is True
        everyone = len(created)

        def claim_all() -> list[Lease]:
            # Only a claim that sees every message shows the order: give back a partial one
            # (a delay or a lease not yet over) and look again.
            got = queue_backend.claim(everyone)
            if len(got) == everyone:
                return got
            for lease in got:
                queue_backend.release(lease)
            return []

        got = wait_until(claim_all, self.patience_secs,
                         "retried, released and expired messages never all became claimable")
        want = sorted(created.values(), key=lambda m: (-m.priority, m.created_at))
        assert [label[le.id] for le in got] == [label[m.id] for m in want], \
            "claim order after retry, release and lease expiry must stay highest priority " \
            "first, FIFO (by created_at) within a priority; expected " \
            f"{[label[m.id] for m in want]}, got {[label[le.id] for le in got]}. Fix: put a " \
            "message back under its stored priority and created_at (not the default " \
            "priority, not a new enqueue time or the back of the queue)"

    def test_pop_batch_bounds(self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many([make_message() for _ in range(5)])
        assert queue_backend.pop_batch(0) == []
        first = queue_backend.pop_batch(3)
        assert len(first) == 3, f"pop_batch(3) of 5 returned {len(first)}"
        rest = queue_backend.pop_batch(10)
        assert len(rest) == 2, f"pop_batch(10) of the remaining 2 returned {len(rest)}"
        assert len({le.id for le in first + rest}) == 5
        assert queue_backend.pop_batch(10) == []

    def test_enqueue_many_stores_all(self, queue_backend: QueueBackend) -> None:
        assert queue_backend.enqueue_many([]) == []
        assert queue_backend.qsize() == 0
        sent = [make_message() for _ in range(50)]
        assert queue_backend.enqueue_many(sent) == [True] * 50, \
            "push reports every new message as stored"
        assert queue_backend.qsize() == 50
        assert sorted(le.id for le in queue_backend.claim(100)) == sorted(m.id for m in sent)

    def test_a_slowly_read_push_keeps_every_created_at(self,
                                                       queue_backend: QueueBackend) -> None:
        """The kernel encodes a long ``.map()`` as the backend reads it, so a push may take
        seconds: its last chunk must keep the times its producer stamped, not be stamped
        younger (behind jobs pushed after it). Redis and PostgreSQL did, past 1 s."""
        queue_backend.enqueue(make_message())  # a backend that learns a clock has learned it
        self._claim_exactly(queue_backend, 1, "the first message")
        start = time.time()
        sent = [make_message(created_at=start + i * 1e-6) for i in range(2010)]
        assert queue_backend.push(SlowlyRead(sent, 1.3)) == [True] * len(sent)
        later = make_message(created_at=time.time())
        queue_backend.enqueue(later)
        got = {le.id: le.message.created_at
               for le in self._claim_exactly(queue_backend, len(sent) + 1,
                                             "every message").values()}
        assert [got[m.id] for m in sent] == [pytest.approx(m.created_at, abs=1e-3)
                                             for m in sent]
        assert max(got.values()) == got[later.id], "the message pushed last comes last"

    def test_push_is_idempotent_per_job_id(self, queue_backend: QueueBackend) -> None:
        first = make_message(body=b"original")
        assert queue_backend.push([first]) == [True]
        again = attrs.evolve(first, body=b"impostor")
        other = make_message()
        assert queue_backend.push([again, other, attrs.evolve(other, body=b"twin")]) == \
            [False, True, False], \
            "a pushed id that is already queued (or earlier in the batch) stores nothing"
        assert queue_backend.qsize() == 2, "a repeated id must not add a second message"
        leases = {le.id: le for le in queue_backend.claim(10)}
        assert leases[first.id].message.body == b"original", \
            "a repeated push must leave the existing message untouched"
        assert queue_backend.push([again]) == [False], "a leased id is still in the queue"
        assert queue_backend.ack(leases[first.id]) is True
        assert queue_backend.push([again]) == [True], \
            "once acked, the id is free for the next run of the job"

    # --- waiting --------------------------------------------------------------------------

    def test_dequeue_without_timeout_returns_at_once(self, queue_backend: QueueBackend) -> None:
        start = time.monotonic()
        assert queue_backend.dequeue() is None
        assert queue_backend.dequeue(timeout=0) is None
        assert time.monotonic() - start < 1.0, "dequeue() on an empty queue must not wait"

    def test_dequeue_timeout_really_waits(self, queue_backend: QueueBackend) -> None:
        wait = self.delay_secs
        start = time.monotonic()
        assert queue_backend.dequeue(timeout=wait) is None
        elapsed = time.monotonic() - start
        assert elapsed >= wait * 0.9, \
            f"dequeue(timeout={wait}) on an empty queue returned after {elapsed:.3f} s"
        assert elapsed < wait + self.patience_secs

    def test_dequeue_returns_early_when_a_job_arrives(self, queue_backend: QueueBackend
                                                      ) -> None:
        _, pushed_at, picked_at = self._dequeue_in_thread(queue_backend, queue_backend)
        assert picked_at >= pushed_at

    @requires("blocking_dequeue")
    def test_blocking_dequeue_wakes_without_polling(self, queue_backend: QueueBackend) -> None:
        # With polling stretched to 30 s, only a real wake-up can deliver in time.
        queue_backend.poll_interval_min = queue_backend.poll_interval_max = 30.0  # type: ignore[misc]
        _, pushed_at, picked_at = self._dequeue_in_thread(queue_backend, queue_backend)
        assert picked_at - pushed_at < 1.0, "a blocking dequeue must wake when a job arrives"

    # --- the lease protocol ---------------------------------------------------------------

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

    def test_retry_makes_visible_again_with_count_kept(self, queue_backend: QueueBackend
                                                       ) -> None:
        queue_backend.enqueue(make_message(body=b"v1"))
        first = self._claim_one(queue_backend)
        assert queue_backend.retry(first, delay_secs=0, body=b"v2") is True
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                            "a retry without delay never became visible again")[0]
        assert second.id == first.id and second.message.body == b"v2"
        assert second.deliveries == 2, "retry keeps counting deliveries"
        assert queue_backend.retry(second, delay_secs=0) is True
        third = wait_until(lambda: queue_backend.claim(1), self.patience_secs, "lost")[0]
        assert third.message.body == b"v2", "retry without a body keeps the current body"
        assert third.deliveries == 3

    @requires("delayed")
    def test_retry_with_delay_hides_until_due(self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue(make_message(body=b"v1"))
        first = self._claim_one(queue_backend)
        start = time.monotonic()
        assert queue_backend.retry(first, delay_secs=self.delay_secs, body=b"v2") is True
        self._hidden_until(queue_backend, start + self.delay_secs,
                           "a retried message waits out its delay")
        assert queue_backend.qsize() == 1, "a delayed message still counts as waiting"
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                            "a delayed retry never became visible")[0]
        assert time.monotonic() - start >= self.delay_secs * 0.9
        assert (second.id, second.message.body, second.deliveries) == (first.id, b"v2", 2)

    @requires("delayed")
    def test_delayed_message_waits_for_available_at(self, queue_backend: QueueBackend) -> None:
        start = time.monotonic()
        queue_backend.enqueue(make_message(available_at=time.time() + self.delay_secs))
        self._hidden_until(queue_backend, start + self.delay_secs,
                           "a message is hidden until its available_at")
        assert queue_backend.qsize() == 1
        wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                   "a delayed message never became available")
        assert time.monotonic() - start >= self.delay_secs * 0.9

    @requires("delayed")
    def test_delayed_message_does_not_block_others(self, queue_backend: QueueBackend) -> None:
        later = make_message(available_at=time.time() + 60)
        now = make_message()
        queue_backend.enqueue_many([later, now])
        assert [le.id for le in queue_backend.claim(10)] == [now.id]

    def test_retry_counts_failures_release_does_not(self, queue_backend: QueueBackend
                                                     ) -> None:
        queue_backend.enqueue(make_message())
        first = self._claim_one(queue_backend)
        assert first.message.failures == 0
        assert queue_backend.retry(first, delay_secs=0) is True
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs, "lost")[0]
        assert second.message.failures == 1, "every retry records one failed attempt"
        assert queue_backend.release(second) is True
        third = self._claim_one(queue_backend)
        assert (third.deliveries, third.message.failures) == (2, 1), \
            "a release is neither a delivery nor a failure"
        assert queue_backend.extend(third, 0) is True
        fourth = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                            "extend(lease, 0) must make the message claimable at once")[0]
        assert (fourth.deliveries, fourth.message.failures) == (3, 1), \
            "an expired delivery counts, but is no failure"

    def test_an_expired_lease_counts_as_waiting(self, queue_backend: QueueBackend) -> None:
        message = make_message(queue="a")
        queue_backend.enqueue(message)
        lease = self._claim_one(queue_backend)
        assert queue_backend.peek_state(message.id) is JobStatus.RUNNING
        assert queue_backend.qsize() == 0
        assert queue_backend.extend(lease, 0) is True
        assert queue_backend.peek_state(message.id) is JobStatus.QUEUED, \
            "a lease past its expiry is a waiting job (QUEUED), not a running one: with no " \
            "worker left to claim it, RUNNING would be a lie"
        assert queue_backend.qsize() == 1, "an expired lease counts as waiting"
        if type(queue_backend).stats is not QueueBackend.stats:
            counts = queue_backend.stats().queues.get("a")
            assert counts is not None and (counts.ready, counts.running) == (1, 0), \
                f"stats() must count an expired lease as ready, not running: {counts}"

    @requires("delayed")
    def test_release_with_delay_hides_until_due(self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue(make_message())
        first = self._claim_one(queue_backend)
        start = time.monotonic()
        assert queue_backend.release(first, delay_secs=self.delay_secs) is True
        self._hidden_until(queue_backend, start + self.delay_secs,
                           "a message released with a delay waits it out")
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                            "a message released with a delay never came back")[0]
        assert time.monotonic() - start >= self.delay_secs * 0.9
        assert second.deliveries == 1, "a released claim does not count as a delivery"

    def test_release_returns_at_once_with_count_restored(self, queue_backend: QueueBackend
                                                         ) -> None:
        queue_backend.enqueue(make_message())
        first = self._claim_one(queue_backend)
        assert queue_backend.release(first) is True
        second = self._claim_one(queue_backend)  # no waiting: release is immediate
        assert second.id == first.id
        assert second.deliveries == 1, "a released claim does not count as a delivery"
        assert queue_backend.release(first) is False, "the first lease is stale"
        assert queue_backend.retry(second, delay_secs=0) is True
        third = wait_until(lambda: queue_backend.claim(1), self.patience_secs, "lost")[0]
        assert third.deliveries == 2
        assert queue_backend.release(third) is True
        assert self._claim_one(queue_backend).deliveries == 2

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

    # --- counting and clearing ------------------------------------------------------------

    def test_qsize_counts_waiting_not_leased(self, queue_backend: QueueBackend) -> None:
        delayed = type(queue_backend).capabilities.delayed
        queue_backend.enqueue_many([make_message(queue="a") for _ in range(3)]
                                   + [make_message(queue="b") for _ in range(2)])
        if delayed:
            queue_backend.enqueue(make_message(queue="a", available_at=time.time() + 60))
        extra = 1 if delayed else 0
        assert queue_backend.qsize() == 5 + extra
        assert queue_backend.qsize(["a"]) == 3 + extra
        assert queue_backend.qsize(["b"]) == 2
        lease = self._claim_one(queue_backend, ["b"])
        assert queue_backend.qsize() == 4 + extra, "a leased message is not waiting"
        assert queue_backend.qsize(["b"]) == 1
        assert queue_backend.ack(lease)
        assert queue_backend.qsize(["b"]) == 1

    def test_clear_removes_everything_including_leased(self, queue_backend: QueueBackend
                                                       ) -> None:
        queue_backend.enqueue_many([make_message(queue="a") for _ in range(3)]
                                   + [make_message(queue="b") for _ in range(2)])
        leased = self._claim_one(queue_backend, ["a"])
        assert queue_backend.clear(["a"]) == 3, "clear counts leased messages too"
        assert queue_backend.qsize(["a"]) == 0 and queue_backend.qsize(["b"]) == 2
        assert queue_backend.ack(leased) is False, "a cleared lease is gone"
        assert queue_backend.claim(10, ["a"]) == []
        assert queue_backend.clear() == 2
        assert queue_backend.qsize() == 0 and queue_backend.claim(10) == []
        assert queue_backend.clear() == 0

    def test_cancel_removes_only_waiting_messages(self, queue_backend: QueueBackend) -> None:
        first, second = make_message(), make_message()
        queue_backend.enqueue_many([first, second])
        lease = self._claim_one(queue_backend)
        waiting = second if lease.id == first.id else first
        try:
            cancelled = queue_backend.cancel(waiting.id)
        except NotImplementedError:
            pytest.skip("cancel is not implemented (optional)")
        assert cancelled is True, "cancel removes a waiting message"
        assert queue_backend.cancel(waiting.id) is False, "a second cancel finds nothing"
        assert queue_backend.cancel(lease.id) is False, "a leased job belongs to its worker"
        assert queue_backend.ack(lease) is True, "cancel must not touch a leased message"
        self._nothing_claimable(queue_backend, "a cancelled message is gone")
        assert queue_backend.cancel("never-seen-" + uuid.uuid4().hex) is False
        if type(queue_backend).capabilities.delayed:
            later = make_message(available_at=time.time() + 60)
            queue_backend.enqueue(later)
            assert queue_backend.cancel(later.id) is True, "a delayed message is waiting too"
        assert queue_backend.clear() == 0, "cancelled messages must not linger"

    def test_cancel_removes_a_message_whose_lease_expired(self, queue_backend: QueueBackend
                                                          ) -> None:
        """A message whose lease expired (its worker was killed, or gave it up at a forced
        stop) waits like any other until a worker claims it again: no worker holds it, so
        ``cancel`` removes it, and the old lease can no longer ack it. Why: an operator
        could not stop a job that OOM-killed its worker; it ran again up to the delivery
        limit, each time killing the next worker."""
        message = make_message()
        queue_backend.enqueue(message)
        lease = self._claim_one(queue_backend)
        assert queue_backend.extend(lease, 0) is True  # expired now, as a dead worker's
        try:
            cancelled = queue_backend.cancel(message.id)
        except NotImplementedError:
            pytest.skip("cancel is not implemented (optional)")
        assert cancelled is True, "a message whose lease expired is waiting: cancel removes it"
        assert queue_backend.ack(lease) is False, "the expired lease must not ack it now"
        assert queue_backend.extend(lease, 30) is False, "nor extend it"
        self._nothing_claimable(queue_backend, "a cancelled message is gone")
        again = make_message()
        queue_backend.enqueue(again)
        current = self._claim_one(queue_backend)
        assert queue_backend.cancel(again.id) is False, "a lease not expired is its worker's"
        assert queue_backend.ack(current) is True

    def test_peek_reads_a_message_without_claiming_it(self, queue_backend: QueueBackend
                                                      ) -> None:
        """``peek`` (optional) returns what a claim would, waiting, leased or retried, and
        changes nothing: ``nuvom cancel job`` records a never-run job from it."""
        message = make_message(body=b"v1", task="tasks.peeked")
        queue_backend.enqueue(message)
        try:
            waiting = queue_backend.peek(message.id)
        except NotImplementedError:
            pytest.skip("peek is not implemented (optional)")
        assert queue_backend.peek("never-seen-" + uuid.uuid4().hex) is None
        first = self._claim_one(queue_backend)
        assert waiting == first.message, "peek returns the message a claim returns"
        assert queue_backend.peek(first.id) == first.message, "a leased message peeks too"
        assert queue_backend.retry(first, delay_secs=0, body=b"v2") is True
        retried = queue_backend.peek(first.id)
        assert retried is not None and (retried.body, retried.failures) == (b"v2", 1), \
            "peek shows the retry's body and its failure count"
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs,
                            "a retry without delay never became visible again")[0]
        assert second.deliveries == 2, "peeking counts no delivery"
        assert queue_backend.ack(second) is True
        assert queue_backend.peek(first.id) is None, "an acked message is gone"

    def test_peek_state(self, queue_backend: QueueBackend) -> None:
        message = make_message()
        queue_backend.enqueue(message)
        assert queue_backend.peek_state(message.id) is JobStatus.QUEUED, \
            "peek_state must report a waiting message as QUEUED"
        lease = self._claim_one(queue_backend)
        assert queue_backend.peek_state(message.id) is JobStatus.RUNNING, \
            "peek_state must report a leased message as RUNNING"
        if type(queue_backend).capabilities.delayed:
            assert queue_backend.retry(lease, delay_secs=60)
            assert queue_backend.peek_state(message.id) is JobStatus.RETRYING, \
                "a message waiting out its retry delay is RETRYING"
            later = make_message(available_at=time.time() + 60)
            queue_backend.enqueue(later)
            assert queue_backend.peek_state(later.id) is JobStatus.QUEUED, \
                "a first run waiting for its available_at is QUEUED, not RETRYING"
            queue_backend.clear()
        else:
            assert queue_backend.ack(lease)
        assert queue_backend.peek_state(message.id) is None, "a finished message is gone"
        assert queue_backend.peek_state("never-seen-" + uuid.uuid4().hex) is None

    def test_stats_per_queue(self, queue_backend: QueueBackend) -> None:
        if type(queue_backend).stats is QueueBackend.stats:
            pytest.skip("stats() is optional and not overridden (nuvom status shows totals)")
        delayed = type(queue_backend).capabilities.delayed
        queue_backend.enqueue_many([make_message(queue="a") for _ in range(3)]
                                   + [make_message(queue="b") for _ in range(2)])
        if delayed:
            queue_backend.enqueue(make_message(queue="b", available_at=time.time() + 60))
        self._claim_one(queue_backend, ["a"])
        stats = queue_backend.stats()
        a, b = stats.queues.get("a"), stats.queues.get("b")
        assert a is not None and b is not None, \
            f"stats() must report each named queue, got {sorted(stats.queues)}"
        assert (a.ready, a.delayed, a.running) == (2, 0, 1), \
            f"queue 'a' holds 2 ready and 1 leased message, stats() said {a}"
        assert (b.ready, b.delayed, b.running) == (2, 1 if delayed else 0, 0), \
            f"queue 'b' holds 2 ready{' and 1 delayed' if delayed else ''}, stats() said {b}"
        assert a.oldest_ready_age_secs is not None and a.oldest_ready_age_secs > 0, \
            "the oldest ready message's age is reported"

    def test_stats_oldest_ready_age_counts_from_due_time(self, queue_backend: QueueBackend
                                                        ) -> None:
        """``oldest_ready_age_secs`` is how long the ready message due first has waited
        since it became due: from ``max(created_at, available_at)`` (its enqueue, or the end
        of its delay or retry delay), as the worker's wait time counts. From the enqueue, a
        job delayed for a day would read a day old, and alert, the moment it is due. The
        oldest is the earliest due time, not the head of the claim order (by enqueue)."""
        if type(queue_backend).stats is QueueBackend.stats:
            pytest.skip("stats() is optional and not overridden (nuvom status shows totals)")
        now = time.time()
        queue_backend.enqueue_many([
            # enqueued 40 s ago with a 38 s delay: due, and waiting, for 2 s
            make_message(queue="a", created_at=now - 40, available_at=now - 2),
            # the same at the head of "c", and behind it one waiting since its enqueue 20 s
            # ago: the oldest ready message is the second in claim order
            make_message(queue="c", created_at=now - 40, available_at=now - 2),
            make_message(queue="c", created_at=now - 20),
            # due by a producer's clock ahead of this one: no wait yet, never a negative one
            make_message(queue="d", created_at=now + 30),
        ])
        stats = queue_backend.stats().queues
        ages = {q: stats[q].oldest_ready_age_secs if q in stats else None for q in "acd"}
        assert ages["a"] is not None and 1.5 <= ages["a"] < 10, \
            f"a message due 2 s ago (enqueued 40 s ago) has waited about 2 s, got {ages['a']}"
        assert ages["c"] is not None and 19.5 <= ages["c"] < 28, \
            "the oldest ready message is the one due first (20 s ago), not the one enqueued " \
            f"first (40 s ago, due 2 s ago), got {ages['c']}"
        assert ages["d"] == 0.0, f"a due time ahead of the clock reads 0, got {ages['d']}"
        # retried as a worker retries (a new body), at once and after a delay: each waits
        # from its retry's due time, and comes back with that as its available_at (what the
        # worker's wait time counts from)
        queue_backend.enqueue_many([make_message(queue="e", created_at=now - 40),
                                    make_message(queue="b", created_at=now - 40)])
        retried_at = time.time()
        assert queue_backend.retry(self._claim_one(queue_backend, ["e"]), delay_secs=0,
                                   body=b"v2") is True
        e = queue_backend.stats().queues["e"]
        assert e.ready == 1 and e.oldest_ready_age_secs is not None \
            and 0 <= e.oldest_ready_age_secs < 10, \
            "a message retried without delay has waited since its retry, not since its " \
            f"first enqueue 40 s ago, got {e}"
        again = self._claim_one(queue_backend, ["e"])
        assert retried_at - 1 <= again.message.available_at <= time.time() + 1, \
            "a retried message's available_at is when its retry was due, got " \
            f"{again.message.available_at} for a retry at {retried_at}"
        if not type(queue_backend).capabilities.delayed:
            return
        lease = self._claim_one(queue_backend, ["b"])
        assert queue_backend.retry(lease, delay_secs=self.delay_secs, body=b"v2") is True

        def ready() -> Any:
            counts = queue_backend.stats().queues.get("b")
            return counts if counts is not None and counts.ready == 1 else None

        b = wait_until(ready, self.patience_secs,
                       "a retried message never counted ready after its retry delay")
        assert b.oldest_ready_age_secs is not None and 0 <= b.oldest_ready_age_secs < 10, \
            "a retried message has waited since its retry delay ended, not since its first " \
            f"enqueue 40 s ago, got {b.oldest_ready_age_secs}"

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
