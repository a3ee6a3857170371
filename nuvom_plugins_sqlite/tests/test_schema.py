"""Schema versioning, migration and quarantine of rows that break the schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import attrs
import pytest
from sqlite_helpers import msg

from nuvom_kernel.errors import ConfigError
from nuvom_kernel.models import Message
from nuvom_plugins_sqlite import (
    SCHEMA_VERSION,
    SchemaVersionError,
    SQLiteJobQueue,
    SQLiteResultBackend,
)
from nuvom_plugins_sqlite.schema import MIGRATIONS, migrate


def test_new_file_gets_current_version_wal_and_every_table(db_path: Path) -> None:
    SQLiteResultBackend(db_path).get("x")  # either backend creates every table
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"nuvom_queue", "nuvom_quarantine", "nuvom_results"} <= tables


def test_migrate_is_idempotent_and_reports_the_found_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate(conn, "m.db") == 0
    assert migrate(conn, "m.db") == SCHEMA_VERSION


def test_newer_schema_is_refused_with_upgrade_advice(db_path: Path) -> None:
    SQLiteJobQueue(db_path).qsize()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    fresh = SQLiteJobQueue(db_path)  # another process, in effect: opens and checks anew
    with pytest.raises(SchemaVersionError) as info:
        fresh.qsize()
    assert isinstance(info.value, ConfigError)
    text = str(info.value)
    assert str(db_path) in text and "`pip install -U ./nuvom_plugins_sqlite`" in text
    assert f"version {SCHEMA_VERSION + 1}" in text


def _corrupt(db_path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA ignore_check_constraints = ON")  # what a careless tool can do
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_corrupt_body_is_quarantined_and_the_rest_flows(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("good-1"), msg("bad"), msg("good-2")])
    _corrupt(queue.path, "UPDATE nuvom_queue SET body = 'not bytes' WHERE id = 'bad'")
    got = [lease.id for lease in queue.claim(10)]
    assert got == ["good-1", "good-2"]
    assert queue.qsize() == 0
    [line] = queue.stats().quarantined
    assert "'bad'" in line and "body holds text, expected blob" in line
    conn = sqlite3.connect(queue.path)
    row = conn.execute("SELECT id, body, reason FROM nuvom_quarantine").fetchone()
    assert row[:2] == ("bad", "not bytes")  # the bad value is kept as found


def test_peek_reads_a_corrupt_row_as_absent_and_keeps_it(queue: SQLiteJobQueue) -> None:
    """``peek`` (``nuvom cancel job``, ``get_job``) never hands out a row that breaks the
    schema, and does not drop it either: the next claim quarantines it, saying why."""
    queue.enqueue_many([msg("good"), msg("bad")])
    _corrupt(queue.path, "UPDATE nuvom_queue SET body = 'not bytes' WHERE id = 'bad'")
    assert queue.peek("bad") is None
    peeked = queue.peek("good")
    assert peeked is not None and peeked.id == "good" and isinstance(peeked.body, bytes)
    assert [lease.id for lease in queue.claim(10)] == ["good"]
    assert "'bad'" in queue.stats().quarantined[0]


def test_corrupt_priority_does_not_crash_claim(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("a"), msg("b")])
    _corrupt(queue.path, "UPDATE nuvom_queue SET priority = 'high' WHERE id = 'b'")
    assert [lease.id for lease in queue.claim(10)] == ["a"]
    assert "priority holds text" in queue.stats().quarantined[0]


def test_row_that_can_never_be_claimed_is_swept_by_stats(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("a"), msg("stuck")])
    _corrupt(queue.path, "UPDATE nuvom_queue SET visible_at = 'soon' WHERE id = 'stuck'")
    assert [lease.id for lease in queue.claim(10)] == ["a"]
    assert queue.qsize() == 1  # still counted as waiting ...
    stats = queue.stats()  # ... until stats() moves it aside and reports it
    assert len(stats.quarantined) == 1 and "visible_at holds text" in stats.quarantined[0]
    assert queue.qsize() == 0


def test_check_constraints_refuse_bad_rows_at_write_time(queue: SQLiteJobQueue) -> None:
    queue.qsize()
    conn = sqlite3.connect(queue.path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at,"
                     " visible_at, body) VALUES ('x', 'default', 0, 1, 1, 1, 'text')")


def _v1_file(path: Path) -> None:
    """A file as version 1 left it, with a row in every table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at, "
                 "visible_at, body) VALUES ('old', 'mail', 3, 1.5, 1.5, NULL, x'00ff')")
    conn.execute("INSERT INTO nuvom_quarantine (id, queue, priority, created_at, available_at,"
                 " deliveries, body, reason, quarantined_at) "
                 "VALUES ('bad', 'default', 'high', 1, 1, 0, x'00', 'priority holds text', 2)")
    columns = ("job_id, func_name, status, queue, args, kwargs, options, attempts, "
               "max_retries, history, updated_at, extra")
    conn.execute(f"INSERT INTO nuvom_results ({columns}) VALUES ('plain', 'add', 'SUCCEEDED',"
                 " 'default', '[]', '{}', '{}', 1, 0, '[]', 10.0, NULL)")
    # a record a v1 plugin stored for an SPI 1 kernel: the new fields went to ``extra``
    conn.execute(f"INSERT INTO nuvom_results ({columns}) VALUES ('rerun', 'add', 'QUEUED',"
                 " 'default', '[]', '{}', '{}', 0, 0, '[]', 11.0, "
                 "'{\"run\":2,\"token\":\"t2\",\"future\":1}')")
    conn.close()


def test_version_1_file_is_migrated_in_place(db_path: Path) -> None:
    _v1_file(db_path)
    queue, results = SQLiteJobQueue(db_path), SQLiteResultBackend(db_path)
    [lease] = queue.claim(1)
    assert lease.message == Message(id="old", body=b"\x00\xff", queue="mail", priority=3,
                                    available_at=1.5, created_at=1.5, task="", failures=0)
    assert queue.retry(lease, delay_secs=0)
    [lease] = queue.claim(1)
    assert lease.message.failures == 1
    plain, rerun = results.get("plain"), results.get("rerun")
    assert plain is not None and (plain.run, plain.token) == (1, None)
    assert rerun is not None and (rerun.run, rerun.token) == (2, "t2")
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT run, token, extra FROM nuvom_results WHERE job_id = 'rerun'"
                        ).fetchone() == (2, "t2", '{"future":1}')
    # the fence reads the migrated column: run 1 may not replace run 2
    assert results.put(attrs.evolve(rerun, run=1, attempts=5)) is False
    assert conn.execute("SELECT id, priority, task, failures FROM nuvom_quarantine"
                        ).fetchall() == [("bad", "high", None, None)]
    indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                "AND tbl_name = 'nuvom_results' AND sql IS NOT NULL"))
    assert all(sql.endswith("updated_at, job_id)") for sql in indexes.values()), indexes
    queue.close()
    results.close()


def test_quarantine_keeps_the_task_and_failures(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("good"), Message(id="bad", body=b"x", task="tasks.report")])
    [lease] = queue.claim(1)
    queue.release(lease)
    assert queue.retry(queue.claim(1)[0], delay_secs=0)  # "good": one failure
    _corrupt(queue.path, "UPDATE nuvom_queue SET failures = 'many' WHERE id = 'bad'")
    _corrupt(queue.path, "UPDATE nuvom_queue SET task = x'07' WHERE id = 'good'")
    assert queue.claim(10) == []
    lines = queue.stats().quarantined
    assert len(lines) == 2 and "failures holds text" in lines[1] and "task holds blob" in \
        lines[0]
    conn = sqlite3.connect(queue.path)
    assert conn.execute("SELECT id, task, failures FROM nuvom_quarantine ORDER BY id"
                        ).fetchall() == [("bad", "tasks.report", "many"), ("good", b"\x07", 1)]


def _old_envelope(job_id: str, task: object) -> bytes:
    """A body as a pre-SPI 1 producer wrote it (full options, ``failures`` in the envelope)."""
    return json.dumps({
        "v": 1, "id": job_id, "task": task, "module": "tasks", "args": [1], "kwargs": {},
        "opts": {"retries": 0, "queue": "default", "priority": 0, "description": None},
        "created_at": 1.5, "enqueued_by": "vm:1", "trace_id": "t", "failures": 0,
        "history": []}, separators=(",", ":")).encode()


def _file_at(path: Path, version: int, rows: list[tuple[str, bytes]]) -> None:
    """A file as version ``version`` left it, with ``rows`` (id, body) queued and ready and
    the ``task`` they had then (``''`` from version 2 on: the column's default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:version]:
        for statement in step:
            statement(conn) if callable(statement) else conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.executemany("INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at,"
                     " visible_at, body) VALUES (?, 'default', 0, 1.5, 1.5, NULL, ?)", rows)
    conn.close()


def test_rows_queued_before_the_task_column_get_their_task_from_the_body(
        db_path: Path) -> None:
    """A concurrency limit and ``nuvom status`` key on ``task``: version 2 left it ``''`` on
    the rows already queued, so the next step reads it from each row's envelope. A body that
    is not an envelope (another serializer, damage) keeps ``''`` and migrates."""
    escaped = _old_envelope("esc", "t\u00e2che \"q\"")  # escaped in JSON: parsed in full
    _file_at(db_path, 5, [("plain", _old_envelope("plain", "tasks.single")),
                          ("escaped", escaped),
                          ("reordered", b'{"task":"other","v":1,"id":"reordered"}'),
                          ("binary", b"\x00\xff"), ("truncated", b'{"v":1,"id":"x","ta'),
                          ("not-text", _old_envelope("not-text", 7)),
                          ("list", b"[1, 2]"), ("bad-utf8", b'{"task":"\xff"}')])
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at, "
                 "visible_at, body, task) VALUES ('tagged', 'default', 0, 1, 1, NULL, ?, 'own')",
                 (_old_envelope("tagged", "from-body"),))
    conn.commit()
    queue = SQLiteJobQueue(db_path)
    assert queue.qsize() == 9
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert dict(conn.execute("SELECT id, task FROM nuvom_queue")) == {
        "plain": "tasks.single", "escaped": "t\u00e2che \"q\"", "reordered": "other",
        "binary": "", "truncated": "", "not-text": "", "list": "", "bad-utf8": "",
        "tagged": "own"}
    conn.close()
    queue.close()


def test_concurrency_limit_holds_back_jobs_queued_by_a_pre_spi1_producer(
        db_path: Path) -> None:
    """The upgrade fault: jobs a version 1 file held ran past ``@task(concurrency=1)``."""
    _file_at(db_path, 1, [(f"old{i}", _old_envelope(f"old{i}", "single")) for i in range(3)])
    queue = SQLiteJobQueue(db_path)
    queue.set_concurrency_limits({"single": 1})
    assert [lease.id for lease in queue.claim(10)] == ["old0"]
    assert queue.claim(10) == []
    assert queue.task_counts(["single"]) == {"single": (1, 2)}
    queue.close()
