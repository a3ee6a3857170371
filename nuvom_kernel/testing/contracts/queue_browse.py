"""Queue contract tests of :meth:`~nuvom_kernel.backends.QueueBackend.browse`: an operator's
view of a queue (``nuvom list jobs``, ``nuvom purge queue``), which must list every message
once, in one order on every backend, and change nothing.

``browse`` is optional: a backend without it skips these tests (``NotImplementedError``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message
from nuvom_kernel.views import QueuedJob

__all__ = ["QueueBrowseTests"]


def _every_page(backend: QueueBackend, limit: int, queues: Sequence[str] | None = None,
                states: Collection[JobStatus] | None = None) -> list[QueuedJob]:
    """Every page, each asked for after the last one's last job, until a short page."""
    jobs: list[QueuedJob] = []
    after: str | None = None
    for _ in range(1000):
        page = backend.browse(queues, states=states, after=after, limit=limit)
        assert len(page) <= limit, f"browse(limit={limit}) returned {len(page)} jobs"
        jobs += page
        if len(page) < limit:
            return jobs
        after = page[-1].cursor
    raise AssertionError("browse never returned a short page: it does not page on")


class QueueBrowseTests(QueueContractBase):
    """Listing messages without claiming them."""

    def _browsable(self, backend: QueueBackend) -> None:
        try:
            backend.browse(limit=1)
        except NotImplementedError:
            pytest.skip("browse is not implemented (optional)")

    def test_browse_lists_every_message_once_oldest_first(self,
                                                         queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        base = time.time() - 100.0
        # created out of push order, two with one created_at (the id breaks the tie)
        sent = [make_message(f"browse-{name}", queue=queue, created_at=base + at)
                for name, queue, at in [("e", "a", 5.0), ("b", "b", 1.0), ("d2", "a", 3.0),
                                        ("a", "a", 0.5), ("d1", "b", 3.0), ("f", "b", 6.0),
                                        ("c", "a", 2.0)]]
        queue_backend.enqueue_many(sent)
        want = sorted(sent, key=lambda m: (m.created_at, m.id))
        for limit in (1, 2, 3, 7, 100):
            got = _every_page(queue_backend, limit)
            assert [j.id for j in got] == [m.id for m in want], \
                f"pages of {limit}: every message once, by created_at then id"
        for job, message in zip(_every_page(queue_backend, 100), want, strict=True):
            assert (job.task, job.queue, job.priority) == (message.task, message.queue,
                                                           message.priority)
            assert job.created_at == pytest.approx(message.created_at, abs=1e-3)
            assert (job.state, job.failures, job.deliveries, job.lease_expires_at) == \
                (JobStatus.QUEUED, 0, 0, None), "a pushed message waits, never claimed"

    def test_browse_reads_each_state_and_changes_nothing(self,
                                                         queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        base = time.time() - 100.0
        running, failed, ready = (make_message(created_at=base + i) for i in range(3))
        queue_backend.enqueue_many([running, failed])
        leases = self._claim_exactly(queue_backend, 2, "two ready")
        assert queue_backend.retry(leases[failed.id], delay_secs=60.0)
        queue_backend.enqueue(ready)
        jobs = {j.id: j for j in _every_page(queue_backend, 100)}
        assert sorted(jobs) == sorted([running.id, failed.id, ready.id])
        held = jobs[running.id]
        assert (held.state, held.deliveries, held.failures) == (JobStatus.RUNNING, 1, 0)
        assert held.lease_expires_at == pytest.approx(leases[running.id].expires_at, abs=1.0)
        waiting = jobs[failed.id]
        assert (waiting.state, waiting.failures, waiting.lease_expires_at) == \
            (JobStatus.RETRYING, 1, None), "a failed attempt waiting for its retry delay"
        assert waiting.available_at == pytest.approx(time.time() + 60.0, abs=5.0)
        assert (jobs[ready.id].state, jobs[ready.id].deliveries) == (JobStatus.QUEUED, 0)
        lease = self._claim_one(queue_backend)
        assert (lease.id, lease.deliveries) == (ready.id, 1), \
            "browsing claims nothing: the ready message is still the next one, unclaimed"

    def test_browse_filters_by_queue_and_state(self, queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        base = time.time() - 100.0
        sent = [make_message(queue=q, created_at=base + i)
                for i, q in enumerate(["a", "b", "a", "c", "b"])]
        queue_backend.enqueue_many(sent)
        lease = self._claim_one(queue_backend, ["b"])
        assert lease.id == sent[1].id

        def ids(queues: Sequence[str] | None, states: Collection[JobStatus] | None = None,
                ) -> list[str]:
            return [j.id for j in _every_page(queue_backend, 2, queues, states)]

        assert ids(["a"]) == [sent[0].id, sent[2].id]
        assert ids(["b", "c"]) == [sent[1].id, sent[3].id, sent[4].id]
        assert ids([]) == [], "queues=[] means no queue"
        assert ids(["nowhere"]) == []
        assert ids(None, {JobStatus.RUNNING}) == [sent[1].id]
        assert ids(["b"], {JobStatus.QUEUED}) == [sent[4].id]
        assert ids(None, {JobStatus.QUEUED, JobStatus.RETRYING}) == \
            [m.id for i, m in enumerate(sent) if i != 1]

    def test_browse_lists_a_delayed_message_with_its_due_time(
            self, queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        due = time.time() + 120.0
        later = make_message(available_at=due)
        queue_backend.enqueue(later)
        [job] = _every_page(queue_backend, 10)
        assert (job.id, job.state) == (later.id, JobStatus.QUEUED), \
            "a first run waiting for its time is QUEUED (RETRYING is after a failure)"
        assert job.available_at == pytest.approx(due, abs=1.0)

    def test_browse_reads_an_expired_lease_as_queued(self,
                                                     queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        queue_backend.enqueue(make_message())
        lease = self._claim_one(queue_backend)
        assert queue_backend.extend(lease, 0) is True  # expired now, as a dead worker's
        [job] = _every_page(queue_backend, 10)
        assert (job.id, job.state, job.deliveries, job.lease_expires_at) == \
            (lease.id, JobStatus.QUEUED, 1, None), \
            "no worker holds an expired lease: it waits again, its delivery counted"

    def test_browse_refuses_a_malformed_cursor(self, queue_backend: QueueBackend) -> None:
        self._browsable(queue_backend)
        with pytest.raises(ValueError, match="cursor"):
            queue_backend.browse(after="not a cursor")

    def test_browse_after_a_cursor_past_every_time(self, queue_backend: QueueBackend) -> None:
        """A cursor parses as a float, so ``inf``, ``-inf`` and ``nan`` reach the backend
        (typed by hand, or a damaged row's own cursor): no traceback, and the order's own
        answer: nothing is after ``inf`` or ``nan``, everything after ``-inf``."""
        self._browsable(queue_backend)
        sent = make_message()
        queue_backend.enqueue(sent)
        assert queue_backend.browse(after="inf|x") == []
        assert queue_backend.browse(after="nan|x") == []
        assert [j.id for j in queue_backend.browse(after="-inf|")] == [sent.id]
