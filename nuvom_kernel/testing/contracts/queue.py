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

The promises are split by module, each a mixin of this class: storage, order and waiting
here; the lease protocol in :mod:`.queue_leases`; putting messages back in
:mod:`.queue_retries`; counts and peeks in :mod:`.queue_state`; clear and cancel in
:mod:`.queue_removal`; and browsing, concurrency limits, workflows and several consumers in
their own modules. Subclass this class, never a mixin: it is the whole contract.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import Lease
from nuvom_kernel.testing.contracts._support import SlowlyRead, make_message, requires
from nuvom_kernel.testing.contracts.queue_browse import QueueBrowseTests
from nuvom_kernel.testing.contracts.queue_concurrency import QueueConcurrencyTests
from nuvom_kernel.testing.contracts.queue_leases import QueueLeaseTests
from nuvom_kernel.testing.contracts.queue_limits import QueueLimitTests
from nuvom_kernel.testing.contracts.queue_removal import QueueRemovalTests
from nuvom_kernel.testing.contracts.queue_retries import QueueRetryTests
from nuvom_kernel.testing.contracts.queue_state import QueueStateTests
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


class QueueBackendContract(QueueLeaseTests, QueueRetryTests, QueueStateTests,
                           QueueRemovalTests, QueueConcurrencyTests, QueueWorkflowTests,
                           QueueBrowseTests, QueueLimitTests):
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

    def test_push_refuses_a_malformed_message_storing_none(self, queue_backend: QueueBackend
                                                           ) -> None:
        """What ``Message.checked_body`` refuses fails the whole push, naming the message,
        before anything is stored: an empty id had read as "queued already" (``False``) on
        one backend and been stored on another."""
        good = make_message()
        no_id: Any = None  # (what the types allow no caller to pass: a plugin may get it)
        text: Any = "text"
        for bad, error in ((attrs.evolve(good, id=""), ValueError),
                           (attrs.evolve(good, id=no_id), ValueError),
                           (attrs.evolve(good, body=text), TypeError)):
            with pytest.raises(error):
                queue_backend.push([make_message(), bad])
        assert queue_backend.qsize() == 0, "a refused push stores none of its messages"

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
