"""``stats``' oldest ready age past the contract: a row put back with a delay keeps its due
time once the tick promotes it (the tick clears ``due_at``; every put-back moves
``available_at``), on each path that puts one back: ``retry``, ``release`` and both
``settle_many`` statements. Real server, one schema per test."""

from __future__ import annotations

import time

import pytest

from nuvom_kernel.models import JobStatus, Lease, Settlement
from nuvom_kernel.testing.contracts import make_message, make_record, wait_until
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend

DELAY = 0.2


def _retrying(lease: Lease) -> Settlement:
    record = make_record(lease.id, status=JobStatus.RETRYING, token=lease.token,
                         attempts=lease.deliveries)
    return Settlement(lease, record, retry_in=DELAY, body=b"v2")


@pytest.mark.parametrize("path", ["retry", "release", "settle", "settle_in_order"])
def test_a_promoted_put_back_waits_from_its_due_time(
        queue: PostgresQueue, results: PostgresResultBackend, path: str) -> None:
    queue.enqueue(make_message(created_at=time.time() - 40))
    [lease] = queue.claim(1)
    put_back_at = time.time()
    if path == "retry":
        assert queue.retry(lease, delay_secs=DELAY, body=b"v2") is True
    elif path == "release":
        assert queue.release(lease, delay_secs=DELAY) is True
    else:  # a batch naming the job twice takes the statement-by-statement path
        batch = [_retrying(lease)] * (2 if path == "settle_in_order" else 1)
        assert queue.settle_many(batch, results) == [True] * len(batch)
    assert wait_until(queue.tick, 5.0, "the tick never promoted the row") == 1
    counts = queue.stats().queues["default"]
    assert counts.ready == 1 and counts.oldest_ready_age_secs is not None
    assert 0 <= counts.oldest_ready_age_secs < 10, \
        f"a promoted {path} waits from its due time, not its enqueue 40 s ago: {counts}"
    [again] = queue.claim(1)
    assert put_back_at + DELAY - 1 <= again.message.available_at <= time.time() + 1, \
        "the message comes back with the put-back's due time as its available_at"


def test_quarantined_copies_are_listed_oldest_first_then_counted(
        queue: PostgresQueue) -> None:
    """``nuvom status`` shows the first 100 copies, then how many more the table holds,
    each line naming the row to read (``<schema>.quarantine.seq=N``)."""
    messages = [make_message(f"kept-{i:03d}") for i in range(102)]
    queue.enqueue_many(messages)
    leases = []
    while len(leases) < len(messages):
        leases += queue.claim(50)
    for lease in sorted(leases, key=lambda le: le.id):
        assert queue.copy_to_quarantine(lease, f"reason of {lease.id}") is True
    lines = queue.stats().quarantined
    assert len(lines) == 101
    assert "'kept-000'" in lines[0] and "reason of kept-000" in lines[0]
    assert f"{queue.schema}.quarantine.seq=" in lines[0]
    assert "'kept-099'" in lines[99]
    assert lines[100] == f"... and 2 more rows in {queue.schema}.quarantine"
