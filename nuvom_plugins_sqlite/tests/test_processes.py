"""Real processes and real lock contention on one SQLite file."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlite_procs
from sqlite_helpers import msg

from nuvom_kernel.models import Message
from nuvom_plugins_sqlite import DatabaseBusyError, SQLiteJobQueue

ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate workers


def test_two_processes_never_claim_the_same_job(db_path: Path) -> None:
    total = 2000
    start, pushed = ctx.Event(), ctx.Event()
    ready = [ctx.Event() for _ in range(2)]
    out = ctx.Queue()
    procs = [ctx.Process(target=sqlite_procs.claim_loop,
                         args=(db_path, start, ready[i], pushed, out, i))
             for i in range(2)]
    for p in procs:
        p.start()
    start.set()  # the file does not exist yet: the children create and migrate it together
    assert all(r.wait(60) for r in ready)
    producer = SQLiteJobQueue(db_path)
    for first in range(0, total, 100):  # pushed while the children are already claiming
        producer.enqueue_many([msg(f"j{i}") for i in range(first, first + 100)])
    pushed.set()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    claimed = [job for ids, _ in reports for job in ids]
    assert sorted(claimed) == sorted(f"j{i}" for i in range(total))  # each exactly once
    assert all(ids for ids, _ in reports), "both processes should have claimed some"
    assert [bad for _, bad in reports] == [[], []]
    assert producer.qsize() == 0
    producer.close()


def test_lease_of_a_killed_process_is_recovered_with_its_count(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.5)
    q.enqueue_many([msg("victim"), msg("other", created_at=time.time() + 1)])
    claimed = ctx.Event()
    child = ctx.Process(target=sqlite_procs.claim_and_hang, args=(db_path, claimed, 0.5))
    child.start()
    assert claimed.wait(30)
    child.kill()  # SIGKILL: no cleanup, the lease is simply abandoned
    child.join(10)
    first = q.dequeue(timeout=5)
    assert first is not None and first.id == "other"  # not blocked by the dead lease
    recovered = q.dequeue(timeout=10)
    assert recovered is not None and recovered.id == "victim"
    assert recovered.deliveries == 2
    assert q.ack(recovered) and q.ack(first)
    q.close()


def test_idle_process_picks_up_jobs_quickly(db_path: Path) -> None:
    """Jobs pushed at varied moments to an idle worker process start within a few ms: the
    waiter notices other connections' commits (``PRAGMA data_version``). With plain polling
    up to 0.1 s, latencies spread over 0-100 ms and the median check fails."""
    SQLiteJobQueue(db_path).qsize()
    n = 8
    ready, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=sqlite_procs.pickup_latencies, args=(db_path, ready, out, n))
    child.start()
    assert ready.wait(30)
    producer = SQLiteJobQueue(db_path)
    for i in range(n):
        time.sleep(0.12 + 0.017 * i)  # idle long enough to reach the longest poll interval
        producer.enqueue(Message(id=f"j{i}", body=repr(time.time()).encode()))
    latencies = sorted(out.get(timeout=30))
    child.join(10)
    assert latencies[n // 2] < 0.025, latencies
    producer.close()


def _hold_write_lock(path: Path, secs: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(secs)
    conn.execute("COMMIT")
    conn.close()


def test_writer_waits_out_another_writers_lock_with_a_warning(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = SQLiteJobQueue(db_path)
    q.enqueue(msg("before"))
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, 1.6, locked))
    holder.start()
    assert locked.wait(5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nuvom.sqlite"):
        q.enqueue(msg("during"))
        leases = q.claim(5)
    holder.join()
    assert time.monotonic() - started >= 1.0
    assert sorted(lease.id for lease in leases) == ["before", "during"]
    assert any("locked by another writer" in r.getMessage() for r in caplog.records)
    q.close()


def test_lock_held_past_busy_timeout_raises_a_clear_error(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, busy_timeout_secs=0.3)
    q.qsize()
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, 1.2, locked))
    holder.start()
    assert locked.wait(5)
    with pytest.raises(DatabaseBusyError, match="busy_timeout_secs"):
        q.enqueue(msg("x"))
    holder.join()
    q.enqueue(msg("x"))  # and it works again once the lock is gone
    assert q.qsize() == 1
    q.close()
