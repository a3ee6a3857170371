"""settle_many: records and their leases settled together, in one transaction per batch."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from sqlite_helpers import msg

from nuvom_kernel.models import JobRecord, JobStatus, Lease, Settlement
from nuvom_plugins.memory import MemoryResultBackend
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend
from nuvom_plugins_sqlite import settle as settle_module


def record(lease: Lease, status: JobStatus = JobStatus.SUCCEEDED, **fields: object
           ) -> JobRecord:
    values: dict[str, object] = {"attempts": lease.deliveries, "token": lease.token, **fields}
    return JobRecord(job_id=lease.id, task="add", status=status, **values)  # type: ignore[arg-type]


def forge(lease: Lease) -> Lease:
    return attrs.evolve(lease, token="stale")


@pytest.fixture
def commits(queue: SQLiteJobQueue) -> Iterator[list[str]]:
    """The transaction statements the process's write connection runs."""
    queue.qsize()
    seen: list[str] = []
    queue._db.write(lambda conn: conn.set_trace_callback(
        lambda sql: seen.append(sql) if sql in ("BEGIN IMMEDIATE", "COMMIT") else None))
    yield seen
    queue._db.write(lambda conn: conn.set_trace_callback(None))


def test_other_result_backends_are_declined(queue: SQLiteJobQueue, tmp_path: Path) -> None:
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    elsewhere = SQLiteResultBackend(tmp_path / "other" / "results.db")
    assert queue.settle_many([Settlement(lease, record(lease))], elsewhere) is None
    assert queue.settle_many([Settlement(lease, record(lease))], MemoryResultBackend()) is None
    assert queue.peek_state("a") is JobStatus.RUNNING, "a declined settlement changes nothing"
    elsewhere.close()


def test_same_file_through_another_path_is_recognised(queue: SQLiteJobQueue,
                                                      tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(queue.path.parent)
    results = SQLiteResultBackend(link / queue.path.name)
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    assert queue.settle_many([Settlement(lease, record(lease))], results) == [True]
    assert queue.peek_state("a") is None
    results.close()


def test_a_big_mixed_batch_is_one_commit(queue: SQLiteJobQueue, results: SQLiteResultBackend,
                                         commits: list[str]) -> None:
    """512 settlements across many statement chunks: acks, retries (at once, delayed, with
    and without a body), stale tokens, and records the stored one supersedes."""
    queue.enqueue_many([msg(f"j{i:03d}") for i in range(512)])
    leases = queue.claim(512)
    assert len(leases) == 512
    newer = {5, 200, 511}  # another worker already stored a later attempt
    results.put_many([record(leases[i], attempts=9) for i in sorted(newer)])
    stale = {1, 64, 301}  # an ack and two retries
    settlements, expected = [], []
    for i, lease in enumerate(leases):
        if i % 4 == 1:
            s = Settlement(forge(lease) if i in stale else lease,
                           record(lease, JobStatus.RETRYING), retry_in=0.0, body=b"v2")
        elif i % 4 == 2:
            s = Settlement(lease, record(lease, JobStatus.RETRYING), retry_in=60.0)
        else:
            s = Settlement(forge(lease) if i in stale else lease, record(lease))
        settlements.append(s)
        expected.append(i not in stale and i not in newer)
    commits.clear()
    assert queue.settle_many(settlements, results) == expected
    assert commits == ["BEGIN IMMEDIATE", "COMMIT"]
    for i, lease in enumerate(leases):
        got = results.get(lease.id)
        state = queue.peek_state(lease.id)
        if i in newer:
            assert got is not None and got.attempts == 9
            assert state is JobStatus.RUNNING, "a refused record leaves its lease alone"
        elif i in stale:
            assert got is None and state is JobStatus.RUNNING
        elif i % 4 == 2:
            assert got is not None and got.status is JobStatus.RETRYING
            assert state is JobStatus.RETRYING
        elif i % 4 == 1:
            assert state is JobStatus.QUEUED
        else:
            assert got is not None and got.status is JobStatus.SUCCEEDED and state is None
    again = {le.id: le for le in queue.claim(512)}
    assert sorted(again) == sorted(leases[i].id for i in range(512)
                                   if i % 4 == 1 and expected[i])
    assert all(le.message.body == b"v2" and le.message.failures == 1
               and le.deliveries == 2 for le in again.values())


def test_a_lease_settled_twice_in_one_batch_lands_once(queue: SQLiteJobQueue,
                                                       results: SQLiteResultBackend) -> None:
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    first = Settlement(lease, record(lease, JobStatus.RETRYING), retry_in=0.0)
    second = Settlement(lease, record(lease))
    assert queue.settle_many([first, second], results) == [True, False]
    got = results.get("a")
    assert got is not None and got.status is JobStatus.RETRYING
    assert queue.peek_state("a") is JobStatus.QUEUED


def test_a_failing_batch_stores_nothing(queue: SQLiteJobQueue, results: SQLiteResultBackend,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    queue.enqueue_many([msg("done"), msg("again")])
    leases = {le.id: le for le in queue.claim(2)}
    batch = [Settlement(leases["done"], record(leases["done"])),
             Settlement(leases["again"], record(leases["again"], JobStatus.RETRYING),
                        retry_in=0.0)]
    broken = {n: sql.replace("failures + 1", "no_such_column") for n, sql in
              settle_module._SETTLE_RETRY.items()}
    monkeypatch.setattr(settle_module, "_SETTLE_RETRY", broken)
    with pytest.raises(sqlite3.OperationalError):
        queue.settle_many(batch, results)
    assert results.get("done") is None and queue.peek_state("done") is JobStatus.RUNNING, \
        "the record and ack written before the failing statement are rolled back"
    monkeypatch.undo()
    assert queue.settle_many(batch, results) == [True, True]


def test_settler_thread_and_claimers_settle_every_job_once(
        queue: SQLiteJobQueue, results: SQLiteResultBackend) -> None:
    """The worker's shape: threads claim while one settler thread settles their batches
    (sharing the process's write connection); every job lands exactly once."""
    total = 600
    queue.enqueue_many([msg(f"j{i:03d}") for i in range(total)])
    pending: list[Settlement] = []
    lock = threading.Condition()
    done = threading.Event()
    landed: list[str] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            while leases := queue.claim(16):
                with lock:
                    pending.extend(Settlement(le, record(le)) for le in leases)
                    lock.notify()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def settler() -> None:
        try:
            while True:
                with lock:
                    lock.wait_for(lambda: pending or done.is_set(), timeout=5)
                    batch = pending[:]
                    pending.clear()
                if not batch:
                    if done.is_set():
                        return
                    continue
                outcome = queue.settle_many(batch, results)
                assert outcome is not None
                landed.extend(s.lease.id for s, ok in zip(batch, outcome, strict=True) if ok)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    settle = threading.Thread(target=settler)
    settle.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with lock:
        done.set()
        lock.notify()
    settle.join(30)
    assert not errors
    assert sorted(landed) == [f"j{i:03d}" for i in range(total)]
    assert queue.qsize() == 0 and queue.stats().queues == {}
    assert results.counts() == {"SUCCEEDED": total}


def test_full_results_settle_at_full(db_path: Path) -> None:
    queue = SQLiteJobQueue(db_path)
    results = SQLiteResultBackend(db_path, synchronous="FULL")
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    levels: list[int] = []
    real = results._db.transaction

    def spy(fn, *args):  # type: ignore[no-untyped-def]
        def wrapped(conn: sqlite3.Connection):  # type: ignore[no-untyped-def]
            levels.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            return fn(conn)
        return real(wrapped, *args)

    results._db.transaction = spy  # type: ignore[method-assign]
    assert queue.settle_many([Settlement(lease, record(lease))], results) == [True]
    assert levels == [2], "records kept at FULL are settled at FULL"
    queue.close()
    results.close()
