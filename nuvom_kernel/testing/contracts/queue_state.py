"""Queue contract tests of what a queue reports about its messages without changing them:
``qsize``, ``peek``, ``peek_state`` and ``stats``.

``nuvom status``, ``nuvom cancel job`` and the metrics plugins read these, so each must tell a
waiting message (one whose lease expired included) from a leased or a delayed one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message, wait_until

__all__ = ["QueueStateTests"]


class QueueStateTests(QueueContractBase):
    """Counts, peeks and per-queue statistics."""

    def test_an_expired_lease_counts_as_waiting(self, queue_backend: QueueBackend) -> None:
        message = make_message(queue="a")
        queue_backend.enqueue(message)
        lease = self._claim_one(queue_backend)
        assert queue_backend.peek_state(message.id) is JobStatus.RUNNING
        assert queue_backend.qsize() == 0, "a live lease is not waiting: qsize must not " \
            "count it"
        assert queue_backend.extend(lease, 0) is True
        assert queue_backend.peek_state(message.id) is JobStatus.QUEUED, \
            "a lease past its expiry is a waiting job (QUEUED), not a running one: with no " \
            "worker left to claim it, RUNNING would be a lie"
        assert queue_backend.qsize() == 1, "an expired lease counts as waiting"
        if type(queue_backend).stats is not QueueBackend.stats:
            counts = queue_backend.stats().queues.get("a")
            assert counts is not None and (counts.ready, counts.running) == (1, 0), \
                f"stats() must count an expired lease as ready, not running: {counts}"

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

    def test_a_queue_named_by_a_string_is_that_queue(self, queue_backend: QueueBackend
                                                     ) -> None:
        """``qsize("emails")`` is ``qsize(["emails"])`` (see ``queue_names``): a string
        read as a list of its letters counted nothing, and a name tested with ``in`` also
        matched ``mail``, whose jobs ``clear("emails")`` then deleted."""
        queue_backend.enqueue_many([make_message(queue="emails") for _ in range(2)]
                                   + [make_message(queue=q) for q in ("mail", "e", "s")])
        assert queue_backend.qsize("emails") == 2, "a string names one queue"
        try:
            listed = queue_backend.browse("emails")
        except NotImplementedError:
            pass
        else:
            assert {m.queue for m in listed} == {"emails"} and len(listed) == 2
        leases = queue_backend.pop_batch(5, queues="emails")
        assert sorted(lease.message.queue for lease in leases) == ["emails", "emails"]
        assert queue_backend.clear("mail") == 1
        assert queue_backend.clear("emails") == 2, "clear counts leased messages too"
        assert queue_backend.qsize() == 2, "only queues 'e' and 's' are left"

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
