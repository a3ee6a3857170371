"""Everything the chaos engine knows per backend, in one table: :data:`PROFILES`.

A backend joins the suite by being installed: :func:`persistent_backends` lists every queue
backend whose capabilities say persistent and multiprocess-safe, and every scenario runs on
it with the generic faults (ENOSPC from a wrapper instead of a real full disk, corruption
pushed through the SPI). A :class:`BackendProfile` adds what only that backend allows: its
``[plugins.<name>]`` settings for chaos projects, whether its data lives under ``data_dir``
(then a real tmpfs is filled), a squeezer, and backend-specific garbage.

Adding a backend is one entry in :data:`PROFILES` (plus, if it has them, its squeezer and
corruptor above the table), for example once a Redis plugin needs a database URL::

    "redis": BackendProfile(settings={"url": "redis://localhost:6379/15"}),

``redis`` and ``postgres`` are listed already, with the default profile, for their place in
the order.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom_kernel.models import JobRecord, JobStatus

from .redis_profile import corrupt_redis, redis_settings

if TYPE_CHECKING:
    from .project import Project

__all__ = ["PROFILES", "BackendProfile", "Corruption", "persistent_backends", "profile"]

#: Name prefixes of the fault-injecting backend wrappers; they share their backend's
#: profile (and so its ``[plugins.<backend>]`` settings).
WRAPPER_PREFIXES = ("flaky_", "faulty_")


@dataclass
class Corruption:
    """What a backend-specific corruptor did and what the system must make of it."""

    quarantined: int = 0  # queue entries that must be moved aside (and listed by status)
    failed: list[str] = field(default_factory=list)  # job ids that must end FAILED
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackendProfile:
    """What the chaos engine knows about one backend beyond its SPI.

    :param settings: ``[plugins.<name>]`` settings for chaos projects, or a function of the
        project folder returning them (a server backend's per-project namespace).
    :param atomic_push: whether ``push`` is all or none (a killed producer leaves all or none
        of a ``.map()``). Every backend is held to that, the strict reading of
        ``QueueBackend.push``; set ``False`` only if the backend documents otherwise (then a
        killed ``.map()`` may leave part of its batch, but still never a half-written job).
    :param local_disk: the backend keeps everything under ``data_dir``, so a small tmpfs
        mounted there can run out of space for real. Others (a server's storage) get ENOSPC
        from a wrapper.
    :param squeeze: make every later write need new blocks before the disk is filled.
    :param corrupt: backend-specific garbage, given the project and a queued job to damage;
        every backend also gets the generic corruption through the SPI.
    """

    settings: Mapping[str, Any] | Callable[[Path], Mapping[str, Any]] = field(
        default_factory=dict)
    atomic_push: bool = True
    local_disk: bool = False
    squeeze: Callable[[Path], None] | None = None
    corrupt: Callable[[Project, str], Corruption] | None = None


# --- sqlite ---------------------------------------------------------------------------


def _squeeze_sqlite(data_dir: Path) -> None:
    """Empty the WAL into the database and truncate it: a WAL that was reset keeps its old
    blocks, and writes into those would succeed on a full disk."""
    conn = sqlite3.connect(data_dir / "nuvom.db", timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def _corrupt_sqlite(project: Project, victim: str) -> Corruption:
    """Rows another tool could have written: wrong column types (possible only with
    ``ignore_check_constraints``), a real job's body cut in half, an unreadable record."""
    done = Corruption()
    conn = sqlite3.connect(project.data_dir / "nuvom.db", timeout=30, isolation_level=None)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(nuvom_queue)")}
        now = time.time()
        conn.execute("PRAGMA ignore_check_constraints = ON")
        for k, override in enumerate(({"body": "a text body"}, {"priority": "high"},
                                      {"created_at": "yesterday"})):
            row = {"id": f"corrupt-row-{k}", "seq": time.time_ns() + k, "queue": "default",
                   "priority": 0, "created_at": now, "available_at": now, "visible_at": now,
                   "deliveries": 0, "body": b"{}", **override}
            names = [c for c in row if c in columns]
            conn.execute(f"INSERT INTO nuvom_queue ({', '.join(names)}) VALUES "
                         f"({', '.join('?' * len(names))})", [row[c] for c in names])
            done.quarantined += 1
        conn.execute("PRAGMA ignore_check_constraints = OFF")
        changed = conn.execute("UPDATE nuvom_queue SET body = substr(body, 1, length(body) / 2)"
                               " WHERE id = ?", (victim,)).rowcount
        if changed == 1:
            done.failed.append(victim)  # a well-typed row whose payload no longer decodes
            done.quarantined += 1  # a copy of it, by the worker
        result_columns = [row[1] for row in conn.execute("PRAGMA table_info(nuvom_results)")]
        record = JobRecord(job_id="corrupt-record", task="chaos_work",
                           status=JobStatus.FAILED).to_dict()
        values = {k: json.dumps(v) if k in ("args", "kwargs", "options", "result", "history")
                  else v for k, v in record.items()}
        values["history"] = '[{"attempt": 1, "kind": '  # torn JSON
        values["func_name"] = values.pop("task")  # the column's name
        names = [c for c in result_columns if c in values]
        conn.execute(f"INSERT INTO nuvom_results ({', '.join(names)}) VALUES "
                     f"({', '.join('?' * len(names))})", [values[c] for c in names])
        done.notes.append("3 mistyped queue rows, 1 truncated payload, 1 torn result record")
    finally:
        conn.close()
    return done


# --- file -----------------------------------------------------------------------------


def _squeeze_file(data_dir: Path) -> None:
    """Pad each result segment to the end of its last allocated block with blank lines
    (the reader skips them): an append into that slack would succeed on a full disk."""
    for segment in (data_dir / "results").glob("results-*.jsonl"):
        st = segment.stat()
        slack = st.st_blocks * 512 - st.st_size
        if slack > 0:
            with segment.open("ab") as fh:
                fh.write(b"\n" * slack)


def _corrupt_file(project: Project, victim: str) -> Corruption:
    """Files another tool could have left: a stray name, garbage under a valid name, a real
    job cut in half, a garbage line and a torn last line in the results log."""
    done = Corruption()
    ready = project.data_dir / "queue" / "ready"
    (ready / "garbage.txt").write_bytes(b"not a job\n")
    now_us = int(time.time() * 1_000_000)
    (ready / f"{2**31:010d}{now_us:017d}000000.default.corruptfile1.0").write_bytes(
        b"\x00\xff random bytes")
    done.quarantined += 2
    for path in ready.iterdir():
        if f".{victim}." in path.name:
            os.truncate(path, path.stat().st_size // 2)
            done.quarantined += 1  # a checksummed file cut short is moved aside, no record
    results = project.data_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    segments = sorted(results.glob("results-*.jsonl")) or [results / "results-00000001.jsonl"]
    with segments[-1].open("ab") as fh:
        fh.write(b"this line is not json\n")
        fh.write(b'{"_nv":1,"op":"put","rec":{"job_id":"torn-rec')  # a writer died here
    done.notes.append("2 bad files, 1 truncated job file, 2 bad result lines")
    return done


# --- postgres -------------------------------------------------------------------------

_PG_DSN = os.environ.get("NUVOM_TEST_POSTGRES_DSN", "host=127.0.0.1 user=postgres dbname=postgres")
_pg_schemas: set[str] = set()


def _postgres_settings(root: Path) -> dict[str, Any]:
    """One schema per project folder on the test server, dropped when the run exits."""
    schema = "chaos_" + hashlib.sha1(str(root).encode()).hexdigest()[:16]
    if not _pg_schemas:
        atexit.register(_drop_postgres_schemas)
    _pg_schemas.add(schema)
    return {"dsn": _PG_DSN, "schema": schema}


def _drop_postgres_schemas() -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_PG_DSN, autocommit=True) as conn:
        for schema in sorted(_pg_schemas):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def _corrupt_postgres(project: Project, victim: str) -> Corruption:
    """What a hand edit or another tool can do to the tables: a real job's body cut in
    half, a row inserted with a text body, a torn result record: the two bodies do not
    decode, so the worker copies each to the quarantine before it fails the job. The rows
    SQLite must quarantine (mistyped columns) and rows in impossible states are tried too:
    the server's types and the ``jobs_state_valid`` check refuse them; any the server took
    would be expected in quarantine too, failing the run."""
    import psycopg
    from psycopg import sql

    done = Corruption()
    settings = _postgres_settings(project.root)
    jobs = sql.Identifier(settings["schema"], "jobs")
    results = sql.Identifier(settings["schema"], "results")
    columns = "(id, queue, state, priority, created_at, available_at, task, body{extra})"
    now = time.time()
    with psycopg.connect(settings["dsn"], autocommit=True) as conn:
        changed = conn.execute(sql.SQL(
            "UPDATE {} SET body = substring(body FROM 1 FOR length(body) / 2) "
            "WHERE id = %s AND state = 0").format(jobs), (victim,)).rowcount
        if changed == 1:
            done.failed.append(victim)  # a well-typed row whose payload no longer decodes
            done.quarantined += 1  # a copy of it, by the worker
        conn.execute(sql.SQL("INSERT INTO {} " + columns.format(extra="") +
                             " VALUES ('corrupt-text-body', 'default', 0, 0, %s, %s, "
                             "'chaos_work', 'a text body')").format(jobs), (now, now))
        done.failed.append("corrupt-text-body")
        done.quarantined += 1
        refused = 0
        for k, (what, state, priority, created, extra, extra_value) in enumerate((
                ("priority 'high'", 0, "high", now, "", None),
                ("created_at 'yesterday'", 0, 0, "yesterday", "", None),
                ("state 7", 7, 0, now, "", None),
                ("a scheduled row without due_at", 1, 0, now, "", None),
                ("a leased row without a deadline", 2, 0, now, ", token", "t"))):
            try:
                conn.execute(sql.SQL(
                    "INSERT INTO {} " + columns.format(extra=extra) + " VALUES (%s, "
                    "'default', %s, %s, %s, %s, 'chaos_work', '\\x00'" +
                    (", %s" if extra else "") + ")").format(jobs),
                    [f"corrupt-row-{k}", state, priority, created, now,
                     *([extra_value] if extra else [])])
            except (psycopg.DataError, psycopg.IntegrityError):
                refused += 1  # a column's type or the state check refused it
            else:
                done.quarantined += 1
                done.notes.append(f"the server took a row with {what}")
        record = JobRecord(job_id="corrupt-record", task="chaos_work",
                           status=JobStatus.FAILED)
        conn.execute(sql.SQL(
            "INSERT INTO {} (job_id, status, func_name, run, attempts, terminal, updated_at, "
            "data) VALUES (%s, 'FAILED', 'chaos_work', 0, 1, true, %s, %s)").format(results),
            (record.job_id, now, '{"job_id": "corrupt-record", "history": [{"attempt": 1, '))
    done.notes.append(f"1 truncated payload, 1 text-body row, 1 torn result record; {refused} "
                      "of 5 mistyped or impossible rows refused by the schema (nothing to "
                      "move aside: the bodies are copied)")
    return done


# --- the table ------------------------------------------------------------------------

#: Per backend, in the order the tests and the report list them; a backend not named here
#: gets the default profile (generic faults only) and is listed after these, by name.
PROFILES: dict[str, BackendProfile] = {
    "sqlite": BackendProfile(local_disk=True, squeeze=_squeeze_sqlite,
                             corrupt=_corrupt_sqlite),
    # The file queue's fsync only matters for power loss, which no scenario simulates (a
    # killed process's writes survive in the page cache); turning it off keeps a
    # 10,000-job ``.map()`` within the CI budget.
    "file": BackendProfile(settings={"fsync": False}, local_disk=True, squeeze=_squeeze_file,
                           corrupt=_corrupt_file),
    # Redis keeps its data on the server, not under data_dir: faults come from the wrappers.
    # A key prefix per project folder keeps each project apart (deleted at exit).
    # Its .map() is atomic per chunk of 1,000 jobs (nuvom_plugins_redis/README.md).
    "redis": BackendProfile(settings=redis_settings, atomic_push=False,
                            corrupt=corrupt_redis),
    # A server is shared by every project: one schema per project folder, dropped at exit.
    # Its types and a state check refuse the rows SQLite quarantines (see the corruptor).
    "postgres": BackendProfile(settings=_postgres_settings, corrupt=_corrupt_postgres),
}


def profile(name: str) -> BackendProfile:
    """The profile of backend ``name`` (or of the backend a fault-injecting wrapper named
    ``flaky_<name>``/``faulty_<name>`` wraps)."""
    base = name.split("_", 1)[1] if name.startswith(WRAPPER_PREFIXES) else name
    return PROFILES.get(base, BackendProfile())


def persistent_backends() -> list[str]:
    """Installed queue backends that are persistent and shared between processes (the ones
    a crash can be survived on), in the order the tests list them."""
    from nuvom_kernel.config import load_config
    from nuvom_kernel.plugins import NuvomPluginManager

    pm = NuvomPluginManager()
    with tempfile.TemporaryDirectory() as empty:
        pm.load(load_config(empty, {}), environ={})
    found = {name: cls for name, (cls, _) in pm.collect("nuvom_register_queue_backends").items()
             if cls.capabilities.persistent and cls.capabilities.multiprocess_safe}
    order = list(PROFILES)
    return sorted(found, key=lambda b: (order.index(b) if b in order else len(order), b))

