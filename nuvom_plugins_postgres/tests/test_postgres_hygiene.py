"""``nuvom status`` warns about PostgreSQL hygiene: dead rows piling up in the queue's
tables, and a session whose old snapshot (``backend_xmin``) stops vacuum.

Real server, real sessions: a REPEATABLE READ transaction held open on another connection,
dead rows made by deleting rows of the ``jobs`` table with its autovacuum off. PostgreSQL 15 flushes
activity counters asynchronously (about a second after a transaction), so every check waits
for its condition with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import wait_until
from nuvom_plugins_postgres import PostgresQueue

STATS_DEADLINE = 15.0  # seconds; stats normally show up within ~1 s


@pytest.fixture
def settings() -> dict[str, object]:
    """Low thresholds, so a test needs only a few hundred rows and a short wait."""
    return {"dsn": DSN, "xmin_warn_secs": 0.3, "dead_tuple_warn_min": 200,
            "dead_tuple_warn_ratio": 0.5}


@pytest.fixture
def holder() -> Iterator[psycopg.Connection]:
    """Another session holding a REPEATABLE READ snapshot (its first query takes it)."""
    conn = psycopg.connect(DSN, application_name="nuvom-test-snapshot-holder")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.execute("SELECT 1")
    yield conn
    conn.close()


def _about(pid: int, warnings: list[str]) -> list[str]:
    return [w for w in warnings if f"session pid {pid} " in w]


def _table_counts(schema: str) -> tuple[int, int]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables "
                           "WHERE schemaname = %s AND relname = 'jobs'", (schema,)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def test_an_old_snapshot_is_named_until_it_ends(queue: PostgresQueue,
                                                holder: psycopg.Connection) -> None:
    pid = holder.info.backend_pid
    found = wait_until(lambda: _about(pid, queue.stats().warnings), STATS_DEADLINE,
                       "no warning named the session holding a snapshot open")
    [text] = found
    assert "nuvom-test-snapshot-holder" in text and "idle in transaction" in text
    assert f"pg_terminate_backend({pid})" in text and "vacuum" in text
    holder.rollback()  # the snapshot is gone: so is the warning
    wait_until(lambda: not _about(pid, queue.stats().warnings), STATS_DEADLINE,
               "the warning outlived the transaction")


def test_a_young_snapshot_does_not_warn(queue: PostgresQueue,
                                        context: BackendContext) -> None:
    """The default threshold (5 min) is far above this transaction's age."""
    relaxed = PostgresQueue.from_settings({"dsn": DSN}, context)
    try:
        with psycopg.connect(DSN) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.execute("SELECT 1")
            pid = conn.info.backend_pid
            wait_until(lambda: _about(pid, queue.stats().warnings), STATS_DEADLINE,
                       "the low-threshold queue should see it (the check works)")
            assert not _about(pid, relaxed.stats().warnings)
    finally:
        relaxed.close()


def _churn(schema: str, insert: int = 0, delete_all: bool = False) -> None:
    """Insert ready jobs and/or delete every job on a session of its own. Why not the
    queue's pool: a session flushes its table counters when it ends, while an idle pooled
    one may wait ~10 s (PG 15), which would only slow the test down."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        if insert:
            conn.execute(sql.SQL(
                "INSERT INTO {}.jobs (id, queue, state, priority, created_at, available_at, "
                "task, body) SELECT 'churn-' || g || '-' || gen_random_uuid(), 'default', 0, "
                "0, 0, 0, 't', '' FROM generate_series(1, %s) AS g").format(
                    sql.Identifier(schema)), (insert,))
        if delete_all:
            conn.execute(sql.SQL("DELETE FROM {}.jobs").format(sql.Identifier(schema)))


def test_dead_rows_warn_past_the_ratio_and_minimum(queue: PostgresQueue, schema: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {}.jobs SET (autovacuum_enabled = false)").format(
            sql.Identifier(schema)))

    def jobs_warnings() -> list[str]:
        return [w for w in queue.stats().warnings if f"table {schema}.jobs " in w]

    assert not jobs_warnings(), "an empty table must not warn"
    assert [w for w in queue.stats().warnings
            if w.startswith(f"autovacuum is disabled for {schema}.jobs ")], \
        "a table of ours with autovacuum_enabled = false is named"
    _churn(schema, insert=150, delete_all=True)
    wait_until(lambda: _table_counts(schema)[1] >= 150, STATS_DEADLINE, "150 dead rows")
    assert not jobs_warnings(), "150 dead rows are below dead_tuple_warn_min (200)"

    _churn(schema, insert=400)
    wait_until(lambda: _table_counts(schema) == (400, 150), STATS_DEADLINE,
               "400 live and 150 dead rows")
    assert not jobs_warnings(), "150 dead of 550 is below dead_tuple_warn_ratio (0.5)"

    _churn(schema, delete_all=True)
    [text] = wait_until(jobs_warnings, STATS_DEADLINE, "no warning about 550 dead rows")
    assert "550 dead rows (100% of 550" in text and f"VACUUM {schema}.jobs" in text
    assert "last vacuum: never" in text

    def vacuumed() -> bool:
        """VACUUM, again on each try: it keeps rows deleted after the oldest snapshot of
        any session in the database (another test's, another engineer's), so one run may
        not remove them all on a shared server."""
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM {}.jobs").format(sql.Identifier(schema)))
        return not jobs_warnings()

    wait_until(vacuumed, STATS_DEADLINE * 2, "the warning outlived VACUUM")


def test_nuvom_status_prints_the_warnings(tmp_path: Path, schema: str, queue: PostgresQueue,
                                          holder: psycopg.Connection) -> None:
    pid = holder.info.backend_pid
    wait_until(lambda: _about(pid, queue.stats().warnings), STATS_DEADLINE, "the warning")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NUVOM_QUEUE_BACKEND="postgres", NUVOM_RESULT_BACKEND="postgres",
               NUVOM_PLUGINS__POSTGRES__DSN=DSN, NUVOM_PLUGINS__POSTGRES__SCHEMA=schema,
               NUVOM_PLUGINS__POSTGRES__XMIN_WARN_SECS="0.3")

    def status(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "nuvom_kernel", "status", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    lines = [ln for ln in status().splitlines() if ln.startswith("warning: ")]
    assert any(f"session pid {pid} " in ln for ln in lines), status()
    warnings = json.loads(status("--json"))["warnings"]
    assert _about(pid, warnings)


def test_a_server_without_autovacuum_is_named(queue: PostgresQueue) -> None:
    """Whichever way this server is set, the warning says what ``SHOW autovacuum`` says."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        on = conn.execute("SHOW autovacuum").fetchone()[0] == "on"  # type: ignore[index]
    said = [w for w in queue.stats().warnings if w.startswith("autovacuum is off on this ")]
    assert bool(said) is not on
    assert not [w for w in queue.stats().warnings if w.startswith("autovacuum is disabled ")]
