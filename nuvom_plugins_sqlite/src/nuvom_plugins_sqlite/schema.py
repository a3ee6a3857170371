"""The database layout, versioned with ``PRAGMA user_version`` and migrated forward in place.

One file holds the queue, the quarantine and the job records, so the queue backend and the
result backend can share ``.nuvom/nuvom.db`` and one version number covers all three tables.
Whichever backend opens the file first creates or upgrades every table (so a separate
``results_path`` file has an empty queue table, and the queue's file an empty results one).

Adding a change: append a list of statements (or functions of the connection) to
:data:`MIGRATIONS`. Pending steps run in one immediate transaction with the version bump, so
a crash mid-migration leaves the old version, and two processes opening the file at once
migrate it exactly once.

Why ``CHECK`` constraints instead of ``STRICT`` tables: ``STRICT`` needs SQLite 3.37 to even
open the file, while checks give the same write-time type safety on every SQLite that has
``RETURNING`` (3.35). Rows that got past them anyway (an external tool with
``ignore_check_constraints``, a hand edit) are quarantined on read, never crash a claim.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from nuvom_kernel.envelope import task_of_body
from nuvom_kernel.errors import ConfigError
from nuvom_plugins_sqlite.workflows import MIGRATION as WORKFLOW_TABLES

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaVersionError", "migrate"]

# A rowid table: ``seq`` (the rowid) grows with every insert, so pushes append to the last
# page and a claim's rows sit side by side, instead of landing on random pages of a table
# keyed by the random job id (each touched page is a 4 KB WAL frame per commit: that, not the
# SQL, is most of an enqueue's, claim's or ack's cost). The hot columns come first and the body
# last. ``id`` is UNIQUE (a push of a queued id stores nothing; ack, cancel and peek_state
# look it up). Version 2 adds ``task`` and ``failures`` (see MIGRATIONS).
#
# ``visible_at`` says which of two partial indexes holds the row:
#   NULL      ready now: in nuvom_queue_ready, in claim order;
#   a time    waiting until then: a delayed job (future available_at, retry delay) or a lease
#             (its expiry), in nuvom_queue_waiting. A claim first moves due rows (delayed jobs
#             whose time has come, expired leases) back to ready: no reaper process.
# So a claim reads the head of the ready index and never steps over delayed or leased rows,
# however many there are.
_QUEUE_V1 = """
CREATE TABLE nuvom_queue (
    seq          INTEGER PRIMARY KEY,           -- insertion order, the last FIFO tie-break
    id           TEXT    NOT NULL UNIQUE CHECK (typeof(id) = 'text' AND id <> ''),
    queue        TEXT    NOT NULL CHECK (typeof(queue) = 'text'),
    priority     INTEGER NOT NULL CHECK (typeof(priority) = 'integer'),
    created_at   REAL    NOT NULL CHECK (typeof(created_at) IN ('real', 'integer')),
    available_at REAL    NOT NULL CHECK (typeof(available_at) IN ('real', 'integer')),
    -- NULL: ready; else when the row may be claimed next (see above)
    visible_at   REAL    CHECK (typeof(visible_at) IN ('real', 'integer', 'null')),
    token        TEXT,                          -- fencing token of the current lease
    deliveries   INTEGER NOT NULL DEFAULT 0 CHECK (typeof(deliveries) = 'integer'),
    body         BLOB    NOT NULL CHECK (typeof(body) = 'blob')
)
"""

# Ready rows in claim order (queue covered, so a named-queue filter needs no table lookup).
_READY_INDEX_V1 = """
CREATE INDEX nuvom_queue_ready ON nuvom_queue (priority DESC, created_at, seq, queue)
    WHERE visible_at IS NULL
"""

# Delayed and leased rows by the time they become claimable (the earliest first).
_WAITING_INDEX_V1 = """
CREATE INDEX nuvom_queue_waiting ON nuvom_queue (visible_at) WHERE visible_at IS NOT NULL
"""

_QUARANTINE_V1 = """
CREATE TABLE nuvom_quarantine (
    seq            INTEGER PRIMARY KEY,
    -- untyped columns (no affinity): the bad values are kept exactly as found
    id,
    queue,
    priority,
    created_at,
    available_at,
    deliveries,
    body,
    reason         TEXT NOT NULL,
    quarantined_at REAL NOT NULL
)
"""

# A rowid table with a unique job_id index, for the same reason as the queue: records append to
# the last page instead of splitting random pages of a table keyed by the random job id
# (measured: ~40 % less time per record). The JSON columns hold the record's wire-safe values.
_RESULTS_V1 = """
CREATE TABLE nuvom_results (
    seq           INTEGER PRIMARY KEY,
    job_id        TEXT NOT NULL UNIQUE,
    func_name     TEXT NOT NULL,
    status        TEXT NOT NULL,
    queue         TEXT NOT NULL,
    args          TEXT NOT NULL,                -- JSON
    kwargs        TEXT NOT NULL,                -- JSON
    module        TEXT,
    options       TEXT NOT NULL,                -- JSON (the job's TaskOptions, wire form)
    result        TEXT,                         -- JSON (wire-safe form)
    error_type    TEXT,
    error_message TEXT,
    traceback     TEXT,
    attempts      INTEGER NOT NULL,
    max_retries   INTEGER NOT NULL,
    history       TEXT NOT NULL,                -- JSON list of attempt dicts
    created_at    REAL,
    started_at    REAL,
    finished_at   REAL,
    updated_at    REAL NOT NULL,
    worker        TEXT,
    trace_id      TEXT,
    -- JSON object of JobRecord fields newer than this schema, so a newer kernel's records
    -- round-trip before a migration gives them a column
    extra         TEXT
)
"""

def _records_fields_out_of_extra(conn: sqlite3.Connection) -> None:
    """Version 1 kept ``JobRecord`` fields it had no column for in ``extra`` (JSON): move
    ``run`` and ``token`` into their new columns (in Python: no JSON1 needed)."""
    rows = conn.execute("SELECT seq, extra FROM nuvom_results WHERE extra IS NOT NULL "
                        "AND (extra LIKE '%\"run\"%' OR extra LIKE '%\"token\"%')").fetchall()
    for seq, text in rows:
        try:
            extra = json.loads(text)
        except ValueError:
            continue  # left as found: get() names the bad row
        if not isinstance(extra, dict):
            continue
        run = extra.pop("run", 1)
        token = extra.pop("token", None)
        conn.execute("UPDATE nuvom_results SET run = ?, token = ?, extra = ? WHERE seq = ?",
                     (run if type(run) is int else 1, token if isinstance(token, str) else None,
                      json.dumps(extra, separators=(",", ":")) if extra else None, seq))


def _queue_task_from_body(conn: sqlite3.Connection) -> None:
    """Version 2 added ``task`` as ``''`` to every queued row, and the rows a pre-SPI 1
    producer left queued kept it: a concurrency limit (which counts and skips rows by
    ``task``) never held them back, and ``nuvom status`` did not count them for their task.
    Fill it from each such row's envelope, in one ``UPDATE`` with a Python function per row
    (no JSON1 needed). Measured on 1M rows of 600-byte bodies: 3.2-4.1 s, under twice a
    plain rewrite of every row; 0.14 s when no row needs it. Rows whose body is not a
    readable envelope keep ``''``."""
    conn.create_function("nuvom_envelope_task", 1, task_of_body, deterministic=True)
    try:
        conn.execute("UPDATE nuvom_queue SET task = nuvom_envelope_task(body) WHERE task = ''")
    finally:
        conn.create_function("nuvom_envelope_task", 1, None)


#: A migration step: SQL statements, or a function run on the connection in the step's
#: transaction (for changes SQL alone cannot make portably).
Step = str | Callable[[sqlite3.Connection], None]

#: ``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``.
MIGRATIONS: list[list[Step]] = [
    [
        _QUEUE_V1,
        _READY_INDEX_V1,
        _WAITING_INDEX_V1,
        _QUARANTINE_V1,
        _RESULTS_V1,
        "CREATE INDEX nuvom_results_status ON nuvom_results (status, updated_at)",
        "CREATE INDEX nuvom_results_func ON nuvom_results (func_name, updated_at)",
        "CREATE INDEX nuvom_results_updated ON nuvom_results (updated_at)",
    ],
    # SPI 1. Queue: the task name and the failed attempts travel with the message. Added
    # columns go after ``body``; no hot path reads them without the body (a claim returns
    # both, a retry rewrites the row), so the table is not rebuilt.
    # Results: ``run`` and ``token`` get columns (the write fence compares ``run``), and the
    # three list indexes end in ``job_id`` for keyset paging (newest first, ties by id).
    [
        "ALTER TABLE nuvom_queue ADD COLUMN task TEXT NOT NULL DEFAULT '' "
        "CHECK (typeof(task) = 'text')",
        "ALTER TABLE nuvom_queue ADD COLUMN failures INTEGER NOT NULL DEFAULT 0 "
        "CHECK (typeof(failures) = 'integer')",
        "ALTER TABLE nuvom_quarantine ADD COLUMN task",
        "ALTER TABLE nuvom_quarantine ADD COLUMN failures",
        "ALTER TABLE nuvom_results ADD COLUMN run INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE nuvom_results ADD COLUMN token TEXT",
        _records_fields_out_of_extra,
        "DROP INDEX nuvom_results_status",
        "DROP INDEX nuvom_results_func",
        "DROP INDEX nuvom_results_updated",
        "CREATE INDEX nuvom_results_status ON nuvom_results (status, updated_at, job_id)",
        "CREATE INDEX nuvom_results_func ON nuvom_results (func_name, updated_at, job_id)",
        "CREATE INDEX nuvom_results_updated ON nuvom_results (updated_at, job_id)",
    ],
    # Worker heartbeats: one row per live worker, replaced on each beat (``info`` is the
    # WorkerInfo as JSON); a row whose ``expires_at`` passed is a worker that stopped.
    [
        "CREATE TABLE nuvom_workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, "
        "expires_at REAL NOT NULL)",
    ],
    # Schedule state (``@task(schedule=...)``): one row per schedule, written with a
    # compare-and-set on ``updated_at`` by whichever worker's scheduler fires a tick.
    [
        "CREATE TABLE nuvom_schedules (name TEXT PRIMARY KEY, updated_at REAL NOT NULL, "
        "state TEXT NOT NULL)",
    ],
    # Workflows: the graph beside the queue (see nuvom_plugins_sqlite.workflows).
    list(WORKFLOW_TABLES),
    # Queue: rows left from before version 2 get their ``task`` from their body, so
    # concurrency limits and per-task counts see them (see _queue_task_from_body).
    [_queue_task_from_body],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaVersionError(ConfigError):
    """The database was written by a newer nuvom-plugins-sqlite than the one installed."""


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_not_newer(version: int, path: Path | str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: the database has schema version {version}, but this "
            f"nuvom-plugins-sqlite understands versions up to {SCHEMA_VERSION}. A newer "
            f"release wrote it; upgrade the plugin (from a newer clone of Nuvom: `pip install -U "
            f"./nuvom_plugins_sqlite`), or point [plugins.sqlite] path at another file."
        )


def migrate(conn: sqlite3.Connection, path: Path | str) -> int:
    """Bring the database behind ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    :returns: the version found before migrating (0 for a new file).
    :raises SchemaVersionError: the file has a newer version than this package knows.
    """
    found = _version(conn)
    _check_not_newer(found, path)
    if found == SCHEMA_VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _version(conn)  # another process may have migrated while we waited
        _check_not_newer(current, path)
        for step in range(current, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
