"""Queue contract tests of putting a message back: ``retry`` (a failed attempt, counted),
``release`` (neither a failure nor a delivery), the delays both can carry, and the place in
the claim order a put-back message keeps.

Apart from the lease tests, which check who may touch a message, these check what comes back:
its body, its counts, its due time and its priority.
"""

from __future__ import annotations

import time

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import Lease
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message, requires, wait_until

__all__ = ["QueueRetryTests"]


class QueueRetryTests(QueueContractBase):
    """Retry, release and delayed messages."""

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

    def test_retry_makes_visible_again_with_count_kept(self, queue_backend: QueueBackend
                                                       ) -> None:
        queue_backend.enqueue(make_message(body=b"v1"))
        first = self._claim_one(queue_backend)
        assert queue_backend.retry(first, delay_secs=0, body=b"v2") is True
        # within half the patience: a retry that hid the message for seconds more than
        # asked passed when any wait up to the patience was accepted
        second = wait_until(lambda: queue_backend.claim(1), self.patience_secs / 2,
                            "a retry with delay_secs=0 must be claimable at once; it was "
                            "not within half of patience_secs")[0]
        assert second.id == first.id, "the retried message is the one claimed again"
        assert second.message.body == b"v2", \
            f"retry(body=...) replaces the body: got {second.message.body[:20]!r}"
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
        assert (second.id, second.message.body, second.deliveries) == (first.id, b"v2", 2), \
            f"a retried message comes back with its id, the new body and its deliveries " \
            f"counted: got {(second.id, second.message.body[:20], second.deliveries)}"

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
