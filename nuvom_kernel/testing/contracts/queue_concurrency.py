"""Queue contract tests that need more than one consumer, instance or process."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel.backends import BackendContext, QueueBackend
from nuvom_kernel.models import Lease, Message
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase, QueueFactory
from nuvom_kernel.testing.contracts._support import make_message, requires, wait_until

__all__ = ["QueueConcurrencyTests", "consume_in_child"]


class QueueConcurrencyTests(QueueContractBase):
    """Concurrent producers and consumers (threads, processes), several instances over one
    storage, and durability across a reopen."""

    def test_concurrent_producers_lose_nothing(self, queue_backend: QueueBackend) -> None:
        per_thread = self.concurrency_messages // self.consumer_threads
        batches = [[make_message() for _ in range(per_thread)]
                   for _ in range(self.consumer_threads)]
        barrier = threading.Barrier(len(batches))

        def produce(batch: list[Message]) -> None:
            barrier.wait()
            for message in batch:
                queue_backend.enqueue(message)

        threads = [threading.Thread(target=produce, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.patience_secs)
        assert queue_backend.qsize() == per_thread * len(batches)

    def test_an_extension_racing_the_ack_of_its_lease_never_undoes_it(
            self, queue_backend: QueueBackend) -> None:
        """A worker extends its leases on one thread (the lease monitor) while it acks on
        another (the settler), with no lock between them: the two calls on one lease must
        each see the other whole. The file queue's rename of an extension racing the
        unlink of an ack made the ack report the lease lost and left the message to run
        again."""
        rounds = 60
        queue_backend.enqueue_many([make_message() for _ in range(rounds)])
        for _ in range(rounds):
            [lease] = queue_backend.claim(1)
            stop = threading.Event()

            def extend_until_stopped(lease: Lease, stop: threading.Event,
                                     raised: list[Exception]) -> None:
                try:
                    while not stop.is_set():
                        queue_backend.extend(lease, 30.0)
                except Exception as exc:  # said by the test, not lost with the thread
                    raised.append(exc)

            raised: list[Exception] = []
            extender = threading.Thread(target=extend_until_stopped,
                                        args=(lease, stop, raised), daemon=True)
            extender.start()
            try:
                acked = queue_backend.ack(lease)
            finally:
                stop.set()
                extender.join(self.patience_secs)
            assert not raised, f"extend raised while an ack of its lease ran: {raised[0]!r}"
            assert acked is True, "an ack of a lease only this worker holds was refused " \
                "while the lease was being extended"
            assert queue_backend.peek_state(lease.id) is None, \
                "an extension racing the ack put the acked message back"
        assert queue_backend.qsize() == 0

    def test_concurrent_consumers_threads_never_share_a_message(
        self, queue_backend: QueueBackend
    ) -> None:
        sent = [make_message() for _ in range(self.concurrency_messages)]
        queue_backend.enqueue_many(sent)
        received: list[list[str]] = [[] for _ in range(self.consumer_threads)]
        barrier = threading.Barrier(self.consumer_threads)
        deadline = time.monotonic() + self.patience_secs * 2

        def consume(mine: list[str]) -> None:
            barrier.wait()
            while time.monotonic() < deadline:
                leases = queue_backend.pop_batch(4, timeout=0.05)
                if not leases and queue_backend.qsize() == 0:
                    return
                for lease in leases:
                    mine.append(lease.id)
                    queue_backend.ack(lease)

        threads = [threading.Thread(target=consume, args=(r,)) for r in received]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.patience_secs * 3)
        _assert_each_once([i for r in received for i in r], [m.id for m in sent])

    @requires("multiprocess_safe")
    def test_other_instance_sees_pushes_and_acks(
        self, queue_backend: QueueBackend, build_queue: Callable[..., QueueBackend]
    ) -> None:
        other = build_queue()
        message = make_message()
        queue_backend.enqueue(message)
        lease = wait_until(lambda: other.claim(1), self.patience_secs,
                           "another instance never saw the message")[0]
        assert lease.id == message.id
        self._nothing_claimable(queue_backend, "a message leased elsewhere is invisible")
        assert queue_backend.ack(lease) is True, "any instance can ack with a valid lease"
        assert other.qsize() == 0
        self._dequeue_in_thread(other, queue_backend)

    @requires("multiprocess_safe")
    def test_concurrent_consumers_processes_never_share_a_message(
        self, queue_backend: QueueBackend, make_queue_backend: QueueFactory,
        backend_context: BackendContext, tmp_path: Path
    ) -> None:
        try:
            pickle.dumps(make_queue_backend)
        except Exception as exc:
            pytest.fail(
                f"make_queue_backend returned {make_queue_backend!r}, which child processes "
                f"cannot receive ({exc!r}); return BackendFactory(YourQueue, settings) so "
                "they can rebuild the backend")
        sent = [make_message() for _ in range(self.concurrency_messages)]
        queue_backend.enqueue_many(sent)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(self.consumer_processes)
        outputs = [tmp_path / f"consumer-{i}.txt" for i in range(self.consumer_processes)]
        processes = [
            ctx.Process(target=consume_in_child, daemon=True,
                        args=(make_queue_backend, backend_context, barrier, str(out),
                              self.patience_secs * 3))
            for out in outputs
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(self.patience_secs * 6)
        for process in processes:
            if process.is_alive():
                process.kill()
        assert all(p.exitcode == 0 for p in processes), \
            f"consumer processes failed: exit codes {[p.exitcode for p in processes]}"
        received = [line for out in outputs for line in out.read_text().split()]
        _assert_each_once(received, [m.id for m in sent])

    @requires("persistent")
    def test_messages_and_leases_survive_reopen(
        self, build_queue: Callable[..., QueueBackend]
    ) -> None:
        first = build_queue(visibility_timeout_secs=self.short_visibility_secs)
        first.clear()
        a, b = make_message(body=b"a"), make_message(body=b"b")
        first.enqueue_many([a, b])
        leased = self._claim_one(first)
        first.close()
        reopened = build_queue(visibility_timeout_secs=self.short_visibility_secs)
        assert reopened.qsize() == 1, "the waiting message survives; the leased one is out"
        assert self._claim_one(reopened).message.body == b"b", \
            "a message waiting before close() is claimable after reopening, body intact"
        recovered = wait_until(lambda: reopened.claim(1), self.patience_secs,
                               "a lease held before reopening never expired")[0]
        assert (recovered.id, recovered.deliveries) == (leased.id, 2), \
            "a lease held before close() expires after reopening, delivery count kept (2)"


def consume_in_child(factory: QueueFactory, context: BackendContext, barrier: Any,
                     output: str, budget_secs: float) -> None:
    """Child-process consumer: rebuild the backend, start with the others, claim and ack
    until the queue stays empty, and write every id it was handed (one per line)."""
    backend = factory(context)
    barrier.wait(timeout=budget_secs)
    deadline = time.monotonic() + budget_secs
    seen: list[str] = []
    try:
        while time.monotonic() < deadline:
            leases = backend.pop_batch(4, timeout=0.05)
            if not leases and backend.qsize() == 0:
                break
            for lease in leases:
                seen.append(lease.id)
                backend.ack(lease)
    finally:
        Path(output).write_text("\n".join(seen))
        backend.close()


def _assert_each_once(received: list[str], sent: list[str]) -> None:
    twice = sorted(i for i, n in Counter(received).items() if n > 1)
    assert not twice, f"{len(twice)} message(s) were handed to two consumers: {twice[:5]}"
    missing = set(sent) - set(received)
    assert not missing, f"{len(missing)} message(s) were never delivered"
