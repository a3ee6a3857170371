"""Schema versioning, migration and quarantine of rows that break the schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_helpers import msg

from nuvom_kernel.errors import ConfigError
from nuvom_plugins_sqlite import (
    SCHEMA_VERSION,
    SchemaVersionError,
    SQLiteJobQueue,
    SQLiteResultBackend,
)
from nuvom_plugins_sqlite.schema import migrate


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
    assert str(db_path) in text and "pip install -U nuvom-plugins-sqlite" in text
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
