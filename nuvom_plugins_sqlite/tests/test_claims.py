"""The claim path's layout: ready and waiting rows, promotion of due rows, batched fencing,
the process's one write connection and its background checkpoints."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from sqlite_helpers import msg, wait_until

from nuvom_kernel.models import Message
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend, writer


def ids(leases: list) -> list[str]:
    return [lease.id for lease in leases]


def _claim_steps(q: SQLiteJobQueue, n: int = 1) -> tuple[int, list[str]]:
    """SQLite VM steps the claim statement takes (counted by a progress handler on the
    process's write connection): a deterministic measure of how many rows it visits."""
    conn = q._lease_db._writer.conn
    assert conn is not None
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        got = ids(q.claim(n))
    finally:
        conn.set_progress_handler(None, 1)
    return steps, got


def test_claims_never_step_over_delayed_or_leased_rows(queue: SQLiteJobQueue) -> None:
    """3,000 delayed jobs and 300 leased ones all ahead of the ready job in claim order
    (higher priority, older): the claim's work is the same as with none of them."""
    queue.enqueue_many([msg("warm-up"), msg("first-ready")])
    queue.claim(1)  # the write connection exists, the statement is prepared
    alone, got = _claim_steps(queue)
    assert got == ["first-ready"]
    now = time.time()
    queue.enqueue_many([msg(f"later-{i}", priority=9, created_at=now - 100,
                            available_at=now + 3600) for i in range(3000)])
    queue.enqueue_many([msg(f"busy-{i}", priority=8, created_at=now - 50) for i in range(300)])
    assert len(queue.claim(300)) == 300
    queue.enqueue(msg("ready", created_at=now))
    crowded, got = _claim_steps(queue)
    assert got == ["ready"]
    assert crowded <= alone * 1.5, (alone, crowded)


def test_due_rows_are_promoted_in_priority_order(queue: SQLiteJobQueue) -> None:
    now = time.time()
    queue.enqueue_many([msg("low-ready", created_at=now - 10),
                        msg("high-later", priority=5, available_at=now + 0.3)])
    assert queue.peek_state("high-later").value == "QUEUED"
    delayed = queue.stats().delayed
    assert delayed == 1 or time.time() >= now + 0.3, "waiting until due, it counts as delayed"
    wait_until(lambda: time.time() > now + 0.3, timeout=5.0)
    assert ids(queue.claim(2)) == ["high-later", "low-ready"]


def test_a_burst_of_due_rows_is_promoted_in_bounded_steps(queue: SQLiteJobQueue,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from nuvom_plugins_sqlite import queue as queue_module

    monkeypatch.setattr(queue_module, "_PROMOTE",
                        queue_module._PROMOTE.replace("LIMIT 1000", "LIMIT 7"))
    soon = time.time() + 0.2
    queue.enqueue_many([msg(f"d{i:02d}", available_at=soon) for i in range(30)])
    time.sleep(0.25)
    got: list[str] = []
    while batch := queue.claim(5):
        got += ids(batch)
    assert sorted(got) == [f"d{i:02d}" for i in range(30)]


def test_a_delayed_push_from_another_process_is_seen_while_busy(db_path: Path) -> None:
    """The claimer learns when the next waiting row is due from its own claims; a row that
    another process makes wait meanwhile is still claimed soon after it is due."""
    worker = SQLiteJobQueue(db_path)
    other = SQLiteJobQueue(db_path)  # its own instance, as in another process
    worker.enqueue_many([msg(f"r{i}") for i in range(50)])
    assert len(worker.claim(1)) == 1  # learns: nothing waits but this lease (30 s)
    other.enqueue(msg("urgent", priority=9, available_at=time.time() + 0.2))
    time.sleep(0.25)
    seen = [lease.id for _ in range(3) for lease in worker.claim(1)]
    assert "urgent" in seen[:2], seen
    worker.close()
    other.close()


def test_expired_lease_is_reclaimed_and_the_late_holder_can_still_renew_first(
        db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.2)
    q.enqueue(msg("a"))
    [lease] = q.claim(1)
    time.sleep(0.25)
    assert q.extend(lease, 30)  # expired but not yet taken: the holder renews it
    assert q.claim(1) == []
    time.sleep(0.05)
    assert q.extend_many([lease], 0.05) == [True]
    again = wait_until(lambda: q.claim(1))
    assert again[0].deliveries == 2
    assert q.ack(lease) is False and q.ack(again[0]) is True
    q.close()


def test_batched_acks_and_extends_report_each_lease(queue: SQLiteJobQueue) -> None:
    """Batches over the per-statement chunk, lost leases mixed in, a lease listed twice."""
    queue.enqueue_many([msg(f"j{i:03d}") for i in range(150)])
    leases = queue.claim(150)
    assert len(leases) == 150
    lost = {3, 70, 149}
    forged = [type(lease)(lease.message, "forged", lease.deliveries, lease.expires_at)
              if i in lost else lease for i, lease in enumerate(leases)]
    expected = [i not in lost for i in range(150)]
    assert queue.extend_many(forged, 60) == expected
    assert queue.ack_many([*forged[:2], forged[0]]) == [True, True, True]
    assert queue.ack_many(forged[:2]) == [False, False]  # already acked
    assert queue.ack_many(forged[2:]) == expected[2:]
    assert queue.stats().in_flight == len(lost)


def test_one_write_connection_per_file_and_process(db_path: Path) -> None:
    q1, q2 = SQLiteJobQueue(db_path), SQLiteJobQueue(db_path)
    results = SQLiteResultBackend(db_path)
    q1.enqueue(msg("a"))
    q2.enqueue(msg("b"))
    assert q1._db._writer is q2._db._writer is results._db._writer
    shared = q1._db._writer.conn
    assert shared is not None
    q1.close()
    assert q2._db._writer.conn is shared  # still used by q2 and the result backend
    q2.close()
    results.close()
    assert shared is not None and q1._db._writer.conn is None
    reopened = SQLiteJobQueue(db_path)
    assert reopened.qsize() == 2
    reopened.close()


def test_background_checkpoints_copy_the_wal_into_the_database(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 8)
    q = SQLiteJobQueue(db_path)
    q.qsize()
    before = db_path.stat()
    for i in range(40):  # far below the commit-time backstop: only the thread copies
        q.enqueue(Message(id=f"j{i}", body=b"x" * 3000))
    # Commits only append to the -wal file; the database file changes when pages are copied.
    wait_until(lambda: db_path.stat().st_size > before.st_size, timeout=10)
    q.close()


def test_results_can_live_in_their_own_file(tmp_path: Path) -> None:
    from nuvom_kernel.backends import BackendContext

    context = BackendContext(data_dir=tmp_path)
    results = SQLiteResultBackend.from_settings({"results_path": str(tmp_path / "r.db")},
                                                context)
    queue = SQLiteJobQueue.from_settings({"results_path": str(tmp_path / "r.db")}, context)
    assert results.path == tmp_path / "r.db" and queue.path == tmp_path / "nuvom.db"
    shared = SQLiteResultBackend.from_settings({}, context)
    assert shared.path == tmp_path / "nuvom.db"
    for backend in (results, queue, shared):
        backend.close()


def _child_work(path: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q = SQLiteJobQueue(path)
    q.enqueue(msg("from-child"))
    out.put(sorted(lease.id for lease in q.claim(10)))
    q.close()


def test_a_forked_child_opens_its_own_write_connection(db_path: Path) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork() here")
    q = SQLiteJobQueue(db_path)
    q.enqueue(msg("from-parent"))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_work, args=(str(db_path), out))
    child.start()
    got = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert got == ["from-child", "from-parent"]
    q.enqueue(msg("after"))  # the parent's connection still works
    assert ids(q.claim(5)) == ["after"]
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    q.close()


def test_a_lease_expired_by_another_instance_is_claimed_in_one_call(db_path: Path) -> None:
    """A claim that caches when the next waiting row is due must still look before it
    returns short: another process may have made a row due earlier (here a lease given
    back with ``extend(lease, 0)`` by a worker stopping at once)."""
    a, b = SQLiteJobQueue(db_path), SQLiteJobQueue(db_path)
    try:
        a.enqueue_many([msg("x"), msg("y")])
        [x] = b.claim(1)
        assert ids(a.claim(1)) == ["y"]  # a now caches x's expiry, 30 s away
        assert b.extend(x, 0)
        assert ids(a.claim(5)) == ["x"], "claim(n) returned fewer than are available"
    finally:
        a.close()
        b.close()
