"""Queue contract tests of taking messages out other than by an ack: ``clear`` (an
operator's purge, leased messages included), ``cancel`` (one waiting job, never one a
worker holds), and the copy kept aside of a message whose body does not decode
(``copy_to_quarantine``)."""

from __future__ import annotations

import time
import uuid

import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message

__all__ = ["QueueRemovalTests"]


class QueueRemovalTests(QueueContractBase):
    """Clearing queues and cancelling waiting jobs."""

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

    def test_copy_to_quarantine_keeps_the_message_past_its_ack(self, queue_backend: QueueBackend
                                                               ) -> None:
        """A body the kernel cannot decode (edited by hand) is copied aside before its job
        is recorded FAILED and acked: without the copy, the ack lost its bytes for good."""
        message = make_message(body=b"\xff not an envelope \x00")
        queue_backend.enqueue(message)
        lease = self._claim_one(queue_backend)
        try:
            copied = queue_backend.copy_to_quarantine(lease, "its body is not an envelope")
        except NotImplementedError:
            pytest.skip("copy_to_quarantine is not implemented (optional)")
        assert copied is True, "a held lease's message is copied"
        [line] = queue_backend.stats().quarantined
        assert message.id in line and "its body is not an envelope" in line, line
        assert queue_backend.ack(lease) is True, "the lease is left as it was"
        assert len(queue_backend.stats().quarantined) == 1, "the copy outlives the ack"
        assert queue_backend.enqueue(make_message(message.id)) is True, \
            "the copy does not keep the job's id taken: it can be pushed again"
        self._claim_one(queue_backend)
        assert queue_backend.copy_to_quarantine(lease, "again") is False, \
            "a lease that no longer holds its message copies nothing"
        assert len(queue_backend.stats().quarantined) == 1
        self._nothing_claimable(queue_backend, "the copy is not a message to claim")
