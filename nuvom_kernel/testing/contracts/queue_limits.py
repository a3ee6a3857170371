"""Queue contract tests of concurrency limits (``@task(concurrency=N)``): what
:meth:`~nuvom_kernel.backends.QueueBackend.set_concurrency_limits` promises a backend that
declares the ``concurrency`` capability.

A limit is a promise about every worker on the store, on every host: at most N live leases of
the task at once. So it is checked here across two instances over one store, with threads
claiming at once, and with a backlog of held-back messages large enough that a claim which
reads a window of the queue and stops would miss the message behind it. Backends without the
capability skip these tests (the kernel refuses ``concurrency=`` on them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobStatus, Lease, Message, Settlement
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import (
    make_message,
    make_record,
    requires,
    wait_until,
)

__all__ = ["QueueLimitTests"]

LIMITED = "tasks.crawl"
FREE = "tasks.add"


def _of(leases: list[Lease], task: str) -> list[Lease]:
    return [lease for lease in leases if lease.message.task == task]


def _limited(n: int, **fields: object) -> list[Message]:
    return [make_message(task=LIMITED, **fields) for _ in range(n)]  # type: ignore[arg-type]


class QueueLimitTests(QueueContractBase):
    """Claims under ``set_concurrency_limits``: held back, never lost, never over the limit."""

    @requires("concurrency")
    def test_a_limit_holds_back_the_surplus_and_claims_past_it(
            self, queue_backend: QueueBackend) -> None:
        limited = _limited(4)
        free = [make_message(task=FREE) for _ in range(3)]
        queue_backend.enqueue_many([*limited, *free])  # the limited ones first in claim order
        queue_backend.set_concurrency_limits({LIMITED: 2})
        leases = self._claim_exactly(queue_backend, 5, "2 limited and 3 free messages")
        got = list(leases.values())
        assert sorted(le.id for le in _of(got, LIMITED)) == sorted(m.id for m in limited[:2]), \
            "a limit of 2 must lease the task's first 2 messages in claim order, no more"
        assert sorted(le.id for le in _of(got, FREE)) == sorted(m.id for m in free), \
            "messages of other tasks must be claimed past the held-back ones"
        self._nothing_claimable(queue_backend, "the limited task holds 2 leases of 2")

    @requires("concurrency")
    def test_a_held_back_message_costs_nothing_and_keeps_its_place(
            self, queue_backend: QueueBackend) -> None:
        limited = _limited(3)
        queue_backend.enqueue_many(limited)
        queue_backend.set_concurrency_limits({LIMITED: 1})
        first = self._claim_one(queue_backend)
        assert first.id == limited[0].id
        for _ in range(3):  # claims that meet the held-back messages must not touch them
            self._nothing_claimable(queue_backend, "the limited task holds 1 lease of 1")
        assert queue_backend.ack(first) is True
        second = self._claim_one(queue_backend)
        assert second.id == limited[1].id, "the next message in claim order comes next"
        assert second.deliveries == 1, \
            "claims that held a message back must not count deliveries of it"

    @pytest.mark.parametrize("ending", ["ack", "ack_many", "retry", "release", "settle_many"])
    @requires("concurrency")
    def test_every_way_a_lease_ends_gives_its_room_back(
            self, queue_backend: QueueBackend, ending: str,
            request: pytest.FixtureRequest) -> None:
        results: Any = (request.getfixturevalue("settle_results") if ending == "settle_many"
                        else None)
        if ending == "settle_many" and results is None:
            pytest.skip("settle_many is optional; override settle_results to check it")
        limited = _limited(2)
        queue_backend.enqueue_many(limited)
        queue_backend.set_concurrency_limits({LIMITED: 1})
        lease = self._claim_one(queue_backend)
        self._nothing_claimable(queue_backend, "the limited task holds 1 lease of 1")
        if ending == "ack":
            assert queue_backend.ack(lease) is True
        elif ending == "ack_many":
            assert queue_backend.ack_many([lease]) == [True]
        elif ending == "retry":
            assert queue_backend.retry(lease, delay_secs=60.0) is True
        elif ending == "release":
            assert queue_backend.release(lease, delay_secs=60.0) is True
        else:
            record = make_record(lease.id, status=JobStatus.SUCCEEDED,
                                 attempts=lease.deliveries, token=lease.token)
            assert queue_backend.settle_many([Settlement(lease, record)], results) == [True]
        nxt = wait_until(lambda: queue_backend.claim(5), self.patience_secs,
                         f"after {ending}, the limited task's room never came back")
        assert [le.id for le in nxt] == [limited[1].id], \
            f"after {ending} of the only lease, exactly the next message is claimable"

    @requires("concurrency")
    def test_an_expired_lease_stops_counting_and_extend_keeps_one(
            self, build_queue: Callable[..., QueueBackend]) -> None:
        secs = self.extend_visibility_secs
        backend = build_queue(visibility_timeout_secs=secs)
        backend.clear()
        backend.enqueue_many(_limited(2))
        backend.set_concurrency_limits({LIMITED: 1})
        held = self._claim_one(backend)
        until = time.monotonic() + secs * 3
        while time.monotonic() < until:  # extended past its first deadline, 3 times over
            extended_at = time.monotonic()
            assert backend.extend(held, secs) is True
            self._hidden_until(backend, extended_at + secs, "an extended lease must go on "
                               "counting against the limit")
            time.sleep(secs / 5)
        # no more extends: the lease lapses, its room comes back and one job is claimable
        got = wait_until(lambda: backend.claim(5), self.patience_secs + secs,
                         "an expired lease went on counting against the limit")
        assert len(got) == 1 and got[0].message.task == LIMITED, \
            f"a limit of 1 must hand out one lease after the expiry, got {[g.id for g in got]}"

    @requires("concurrency", "multiprocess_safe")
    def test_a_limit_counts_the_leases_of_every_instance_and_queue(
            self, build_queue: Callable[..., QueueBackend]) -> None:
        one, two = build_queue(), build_queue()
        one.clear()
        one.enqueue_many([*_limited(5, queue="a"), *_limited(5, queue="b")])
        for backend in (one, two):
            backend.set_concurrency_limits({LIMITED: 2})
        assert len(one.claim(5, ["a"])) == 2
        assert one.claim(5) == [] and two.claim(5, ["b"]) == [], \
            "a limit counts the task's leases in every queue, held by every instance"

    @requires("concurrency")
    def test_racing_claims_never_exceed_the_limit(
            self, queue_backend: QueueBackend, build_queue: Callable[..., QueueBackend]) -> None:
        shared = type(queue_backend).capabilities.multiprocess_safe
        backends = [queue_backend, build_queue() if shared else queue_backend]
        queue_backend.enqueue_many(_limited(40))
        for backend in backends:
            backend.set_concurrency_limits({LIMITED: 3})
        leased: list[Lease] = []
        lock = threading.Lock()
        start = threading.Barrier(self.consumer_threads * 2)

        def claim(backend: QueueBackend) -> None:
            start.wait()
            for _ in range(20):
                got = backend.claim(2)
                with lock:
                    leased.extend(got)

        threads = [threading.Thread(target=claim, args=(b,)) for b in backends
                   for _ in range(self.consumer_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.patience_secs * 4)
        assert len({le.id for le in leased}) == len(leased), "a message was leased twice"
        assert len(leased) == 3, \
            f"racing claims leased {len(leased)} messages of a task limited to 3"

    @requires("concurrency")
    def test_a_large_held_back_backlog_does_not_hide_what_is_behind_it(
            self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many(_limited(2000))
        behind = make_message(task=FREE)
        queue_backend.enqueue(behind)
        queue_backend.set_concurrency_limits({LIMITED: 1})
        first = self._claim_exactly(queue_backend, 2, "the first limited message and the free "
                                    "one behind 1,999 held back")
        assert behind.id in first, "a claim must reach past every held-back message"
        self._nothing_claimable(queue_backend, "1,999 held back, the limit used")

    @requires("concurrency")
    def test_lifting_the_limits_releases_what_they_held(self,
                                                        queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many(_limited(3))
        queue_backend.set_concurrency_limits({LIMITED: 1})
        self._claim_exactly(queue_backend, 1, "one limited message")
        self._nothing_claimable(queue_backend, "the limited task holds 1 lease of 1")
        queue_backend.set_concurrency_limits({})
        self._claim_exactly(queue_backend, 2, "the two held back, once no limit holds them")

    @requires("concurrency")
    def test_task_counts_says_running_and_ready_per_limited_task(
            self, queue_backend: QueueBackend) -> None:
        queue_backend.enqueue_many([*_limited(3), make_message(task=FREE),
                                    *_limited(1, available_at=time.time() + 3600)])
        queue_backend.set_concurrency_limits({LIMITED: 1, "tasks.idle": 5})
        self._claim_exactly(queue_backend, 2, "one limited and one free message")
        assert queue_backend.task_counts([LIMITED, "tasks.idle"]) == {
            LIMITED: (1, 2), "tasks.idle": (0, 0)}, \
            "per limited task: (live leases, ready messages, held-back ones included, " \
            "delayed ones not)"
