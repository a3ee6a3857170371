"""SQLiteResultBackend: full records, filters, paging, purge, counts, sharing the file."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import attrs
import pytest
from sqlite_helpers import msg

from nuvom_kernel.backends import BackendContext, page_cursor
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend


def record(job_id: str, status: JobStatus = JobStatus.SUCCEEDED, func: str = "add",
           updated_at: float | None = None) -> JobRecord:
    return JobRecord(job_id=job_id, task=func, status=status,
                     updated_at=time.time() if updated_at is None else updated_at)


def test_round_trip_keeps_every_field(results: SQLiteResultBackend) -> None:
    full = JobRecord(
        job_id="j1", task="pkg.add", status=JobStatus.FAILED, queue="mail",
        args=[1, "two", [3.5, None]], kwargs={"k": {"nested": True}}, module="pkg",
        options={"retries": 2, "tags": ["a"]}, result={"partial": [1, 2]},
        error_type="ValueError", error_message="bad ünïcode", traceback="Traceback...\n",
        attempts=3, max_retries=2,
        history=[{"attempt": 1, "error_type": "ValueError", "started_at": 1.5}],
        created_at=10.0, started_at=11.0, finished_at=12.0, updated_at=12.5,
        worker="host:123", trace_id="abc",
    )
    results.put(full)
    assert results.get("j1") == full
    assert results.get("missing") is None


def test_put_replaces(results: SQLiteResultBackend) -> None:
    results.put(record("j", JobStatus.RUNNING))
    results.put(record("j", JobStatus.SUCCEEDED))
    got = results.get("j")
    assert got is not None and got.status is JobStatus.SUCCEEDED
    assert len(results.query()) == 1


def test_conveniences_work_on_top(results: SQLiteResultBackend) -> None:
    results.set_result("ok", 42, task="add")
    results.set_error("bad", "ValueError", "boom", "tb", task="add")
    assert results.get_result("ok") == 42
    assert results.get_error("bad") == {"type": "ValueError", "message": "boom",
                                        "traceback": "tb"}
    assert [d["job_id"] for d in results.list_jobs(status="FAILED")] == ["bad"]


def test_query_filters_and_pages_newest_first(results: SQLiteResultBackend) -> None:
    t = 1000.0
    for i in range(30):
        status = JobStatus.SUCCEEDED if i % 3 else JobStatus.FAILED
        results.put(record(f"j{i:02d}", status, "add" if i % 2 else "mul", t + i))
    newest = results.query(limit=5)
    assert [r.job_id for r in newest] == ["j29", "j28", "j27", "j26", "j25"]
    page2 = results.query(limit=5, after=page_cursor(newest[-1]))
    assert [r.job_id for r in page2] == ["j24", "j23", "j22", "j21", "j20"]
    failed = results.query(status=JobStatus.FAILED, limit=100)
    assert [r.job_id for r in failed] == [f"j{i:02d}" for i in range(27, -1, -3)]
    failed_mul = results.query(status=JobStatus.FAILED, task="mul", limit=100)
    assert [r.job_id for r in failed_mul] == ["j24", "j18", "j12", "j06", "j00"]
    assert results.query(task="nope") == []
    failed_page = results.query(status=JobStatus.FAILED, limit=3,
                                after=page_cursor(failed[1]))
    assert [r.job_id for r in failed_page] == ["j21", "j18", "j15"]
    assert [r.job_id for r in results.query(limit=100, after="1005.0|j05")] == \
        ["j04", "j03", "j02", "j01", "j00"]
    with pytest.raises(ValueError, match="malformed page cursor"):
        results.query(after="yesterday")
    assert results.counts() == {"SUCCEEDED": 20, "FAILED": 10}


def test_purge_deletes_only_old_terminal_records(results: SQLiteResultBackend) -> None:
    old, new = 1000.0, time.time()
    for status in JobStatus:
        if status is JobStatus.UNKNOWN:
            continue
        results.put(record(f"old-{status.value}", status, updated_at=old))
        results.put(record(f"new-{status.value}", status, updated_at=new))
    assert results.purge(older_than=new - 60) == 3
    left = {r.job_id for r in results.query(limit=100)}
    assert left == {"old-QUEUED", "old-RUNNING", "old-RETRYING", "new-QUEUED", "new-RUNNING",
                    "new-RETRYING", "new-SUCCEEDED", "new-FAILED", "new-CANCELLED"}
    assert results.purge(older_than=new - 60) == 0


def test_non_json_value_is_refused_clearly(results: SQLiteResultBackend) -> None:
    bad = record("j")
    bad.result = object()
    with pytest.raises(SerializationError, match="job j: result is not JSON-native"):
        results.put(bad)
    assert results.get("j") is None


def test_put_many_big_batches_last_record_of_a_job_wins(results: SQLiteResultBackend
                                                        ) -> None:
    """Batches span several multi-row statements in one transaction; a job listed twice
    keeps the later record; one record that cannot be encoded stores none of the batch."""
    batch = [record(f"j{i:03d}", updated_at=1000.0 + i) for i in range(100)]
    batch.append(record("j005", JobStatus.FAILED, updated_at=5000.0))
    assert results.put_many(batch) == [True] * 101
    assert results.counts() == {"SUCCEEDED": 99, "FAILED": 1}
    got = results.get("j005")
    assert got is not None and got.status is JobStatus.FAILED and got.updated_at == 5000.0
    bad = record("x-bad")
    bad.result = object()
    with pytest.raises(SerializationError):
        results.put_many([record("x-good"), bad])
    assert results.get("x-good") is None
    assert results.put_many([]) == []
    assert len(results.query(limit=1000)) == 100


def test_put_many_fences_a_job_listed_twice_against_its_earlier_record(
        results: SQLiteResultBackend) -> None:
    """As if put one after the other: a later attempt lands, then an earlier one of the
    same batch is refused; a non-terminal record never undoes a terminal one."""
    first = attrs.evolve(record("j", JobStatus.RUNNING), attempts=1)
    done = attrs.evolve(first, status=JobStatus.SUCCEEDED)
    late = attrs.evolve(first, status=JobStatus.RETRYING)
    second = attrs.evolve(first, status=JobStatus.FAILED, attempts=2)
    assert results.put_many([first, done, late, second, done]) == \
        [True, True, False, True, False]
    got = results.get("j")
    assert got is not None and (got.status, got.attempts) == (JobStatus.FAILED, 2)
    assert results.put_many([attrs.evolve(first, job_id="k"), late]) == [True, False]


def test_unreadable_row_is_skipped_in_lists_and_named_on_get(
    results: SQLiteResultBackend,
) -> None:
    results.put(record("good"))
    results.put(record("bad"))
    conn = sqlite3.connect(results.path)
    conn.execute("UPDATE nuvom_results SET args = '{oops' WHERE job_id = 'bad'")
    conn.commit()
    assert [r.job_id for r in results.query()] == ["good"]
    with pytest.raises(SerializationError, match="job bad: stored args"):
        results.get("bad")
    # columns of the wrong type, written by hand: every reader failed later with a
    # TypeError (`nuvom inspect job`, `history recent` subtracting started_at)
    for column, value, said in (("started_at", "'yesterday'", "started_at is 'yesterday', "
                                 "not a time"), ("attempts", "'two'", "attempts is 'two', "
                                                 "not a whole number")):
        results.put(record("odd"))
        conn.execute(f"UPDATE nuvom_results SET {column} = {value} WHERE job_id = 'odd'")
        conn.commit()
        assert [r.job_id for r in results.query()] == ["good"]
        with pytest.raises(SerializationError, match=f"job odd: stored record is invalid "
                                                     f"\\({said}"):
            results.get("odd")
        conn.execute("DELETE FROM nuvom_results WHERE job_id = 'odd'")
        conn.commit()


def test_from_settings_shares_the_queue_file(tmp_path: Path) -> None:
    ctx = BackendContext(data_dir=tmp_path)
    settings = {"synchronous": "FULL", "visibility_timeout_secs": 5}  # queue-only key ignored
    q = SQLiteJobQueue.from_settings(settings, ctx)
    r = SQLiteResultBackend.from_settings(settings, ctx)
    assert q.path == r.path == tmp_path / "nuvom.db"
    assert r.settings.synchronous == "FULL"
    q.enqueue(msg("a"))
    r.put(record("a"))
    assert q.qsize() == 1 and r.get("a") is not None
    q.close()
    r.close()


def test_threads_write_queue_and_results_in_one_file(db_path: Path) -> None:
    q, r = SQLiteJobQueue(db_path), SQLiteResultBackend(db_path)
    q.enqueue_many([msg(f"j{i}") for i in range(400)])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while leases := q.claim(2):
                for lease in leases:
                    r.put(record(lease.id))
                    assert q.ack(lease)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert q.qsize() == 0
    assert r.counts() == {"SUCCEEDED": 400}
