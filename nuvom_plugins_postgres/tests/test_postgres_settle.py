"""``settle_many`` beyond the contract: a record the fence refuses leaves its job leased
(the one-statement settle must not ack what it did not store), a batch naming one job twice
takes the in-order path, and lease bookkeeping commits asynchronously only when asked.
Real server, one schema per test."""

from __future__ import annotations

from typing import Any

import pytest

from nuvom_kernel.models import JobStatus, Settlement
from nuvom_kernel.testing.contracts import make_message, make_record
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend
from nuvom_plugins_postgres.queries import Queries


def _record(lease: Any, status: JobStatus, **fields: Any) -> Any:
    fields.setdefault("attempts", lease.deliveries)
    return make_record(lease.id, status=status, token=lease.token, **fields)


def test_a_refused_record_is_not_acked(queue: PostgresQueue,
                                       results: PostgresResultBackend) -> None:
    kept, done = make_message(), make_message()
    queue.enqueue_many([kept, done])
    leases = {le.id: le for le in queue.claim(2)}
    # A newer run's record is already stored for ``kept``: this settle's record loses.
    assert results.put(_record(leases[kept.id], JobStatus.SUCCEEDED, run=5))
    landed = queue.settle_many([
        Settlement(leases[kept.id], _record(leases[kept.id], JobStatus.SUCCEEDED, run=1)),
        Settlement(leases[done.id], _record(leases[done.id], JobStatus.SUCCEEDED)),
    ], results)
    assert landed == [False, True]
    assert queue.peek_state(kept.id) is JobStatus.RUNNING, \
        "a settlement whose record was refused must leave its lease alone"
    assert results.get(kept.id).run == 5  # type: ignore[union-attr]
    assert queue.peek_state(done.id) is None


def test_a_batch_naming_a_job_twice_settles_in_order(queue: PostgresQueue,
                                                     results: PostgresResultBackend) -> None:
    msg = make_message()
    queue.enqueue(msg)
    [lease] = queue.claim(1)
    landed = queue.settle_many([
        Settlement(lease, _record(lease, JobStatus.RUNNING)),
        Settlement(lease, _record(lease, JobStatus.SUCCEEDED)),
    ], results)
    assert landed == [True, True]
    assert results.get(msg.id).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert queue.peek_state(msg.id) is None


@pytest.mark.parametrize("sync", [False, True])
def test_lease_statements_set_synchronous_commit_only_when_asked(
        queue: PostgresQueue, sync: bool) -> None:
    """The claim runs in a transaction here so the setting it makes can be read back: off
    for the default, untouched (the server's ``on``) with ``sync_lease_commits``."""
    q = Queries(queue.schema, sync_lease_commits=sync)
    queue.enqueue(make_message())
    with queue._store.connection() as conn, conn.transaction():
        assert conn.execute(q.claim_all, [1, 30.0]).fetchall()
        inside = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    with queue._store.connection() as conn:
        after = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    assert inside == ("on" if sync else "off")
    assert after == "on", "the setting must end with its transaction"
