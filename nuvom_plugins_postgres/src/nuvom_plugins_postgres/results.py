"""The PostgreSQL result backend: one row per job, written by a fenced upsert.

Why the fence is in the statement: ``INSERT … ON CONFLICT DO UPDATE … WHERE`` decides
whether the new record supersedes the stored one (:func:`nuvom_kernel.models.supersedes`:
later ``(run, attempts)`` wins; within one attempt a terminal record is never replaced by a
non-terminal one) under the row lock the upsert itself takes, so two workers writing one job
can never both pass the check. The queue's ``settle_many`` runs the same statement in its
own transaction.

Why the record is kept as JSON text beside a few columns: the columns (status, task, run,
attempts, updated_at) are what the fence, the filters and keyset paging need; the rest is
read back whole. ``text``, not ``jsonb``: it keeps every float exactly as Python wrote it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    ResultBackend,
    WorkerInfo,
    parse_cursor,
)
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, ScheduleState
from nuvom_plugins_postgres.queries import render
from nuvom_plugins_postgres.settings import PostgresSettings
from nuvom_plugins_postgres.store import (
    TEST_NAMESPACE_PREFIX,
    acquire,
    mark_temporary,
    release,
)

__all__ = ["PostgresResultBackend", "distinct_chunks", "encode", "store_fenced"]

log = logging.getLogger("nuvom.postgres")

_UPSERT = """
INSERT INTO {s}.results AS r
       (job_id, status, func_name, run, attempts, terminal, updated_at, data)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::int[], %b::bool[],
                     %b::float8[], %b::text[])
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, func_name = EXCLUDED.func_name, run = EXCLUDED.run,
    attempts = EXCLUDED.attempts, terminal = EXCLUDED.terminal,
    updated_at = EXCLUDED.updated_at, data = EXCLUDED.data
WHERE (EXCLUDED.run, EXCLUDED.attempts) > (r.run, r.attempts)
   OR ((EXCLUDED.run, EXCLUDED.attempts) = (r.run, r.attempts)
       AND (NOT r.terminal OR EXCLUDED.terminal))
RETURNING job_id
"""

Row = tuple[str, str, str, int, int, bool, float, str]


def encode(record: JobRecord) -> Row:
    """The columns of one record (the fence's key first, the whole record as JSON last)."""
    return (record.job_id, record.status.value, record.task, record.run,
            record.attempts, record.status in TERMINAL_STATES, float(record.updated_at),
            json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")))


def distinct_chunks(ids: Sequence[str]) -> list[list[int]]:
    """Indexes of ``ids`` cut into runs without a repeated id, in order: one upsert may
    touch a row only once, and a later write of one job must follow its earlier one."""
    chunks: list[list[int]] = [[]]
    seen: set[str] = set()
    for i, job_id in enumerate(ids):
        if job_id in seen:
            chunks.append([])
            seen = set()
        chunks[-1].append(i)
        seen.add(job_id)
    return [c for c in chunks if c]


def store_fenced(conn: psycopg.Connection[Any], upsert: bytes,
                 rows: Sequence[Row]) -> list[bool]:
    """Upsert ``rows`` on ``conn`` (inside the caller's transaction), each fenced; per row
    whether it landed."""
    landed = [False] * len(rows)
    for chunk in distinct_chunks([r[0] for r in rows]):
        columns = [list(col) for col in zip(*(rows[i] for i in chunk), strict=True)]
        stored = {r[0] for r in conn.execute(upsert, columns).fetchall()}
        for i in chunk:
            landed[i] = rows[i][0] in stored
    return landed


def _decode(job_id: str, data: str) -> JobRecord:
    """The stored record; a row another tool tore or hand-edited raises
    ``SerializationError`` naming the job, never a bare ``JSONDecodeError``."""
    try:
        return JobRecord.from_dict(json.loads(data))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SerializationError(f"job {job_id}: stored record is not a valid job record "
                                 f"({type(exc).__name__}: {exc})") from exc


class PostgresResultBackend(ResultBackend):
    """Job records in ``<schema>.results``; see the module docstring for the fence."""

    name = "postgres"
    namespaced = True
    capabilities = Capabilities(persistent=True, multiprocess_safe=True, heartbeats=True,
                                schedules=True)

    def __init__(self, settings: PostgresSettings | None = None, *,
                 namespace: str = "") -> None:
        """:param namespace: the core setting ``namespace``, which claims the schema (see
            :func:`nuvom_plugins_postgres.schema.migrate`); ``""`` claims nothing."""
        super().__init__()
        self.settings = settings or PostgresSettings()
        self._store = acquire(self.settings, namespace)
        self.schema = self.settings.schema
        s = sql.Identifier(self.schema)
        self._upsert = render(sql.SQL(_UPSERT).format(s=s))
        self._get = render(sql.SQL("SELECT data FROM {s}.results WHERE job_id = %s"
                                   ).format(s=s))
        self._purge = render(sql.SQL(
            "DELETE FROM {s}.results WHERE terminal AND updated_at < %s").format(s=s))
        self._counts = render(sql.SQL(
            "SELECT status, count(*) FROM {s}.results GROUP BY status").format(s=s))
        self._counts_since = render(sql.SQL(
            "SELECT data::jsonb ->> 'queue', status, count(*) FROM {s}.results "
            "WHERE updated_at >= %s GROUP BY 1, 2").format(s=s))
        self._beat = render(sql.SQL(
            "INSERT INTO {s}.workers (id, info, expires_at) "
            "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info, "
            "expires_at = EXCLUDED.expires_at").format(s=s))
        self._sweep = render(sql.SQL(
            "DELETE FROM {s}.workers WHERE expires_at <= clock_timestamp()").format(s=s))
        self._live = render(sql.SQL(
            "SELECT info FROM {s}.workers WHERE expires_at > clock_timestamp() ORDER BY id"
            ).format(s=s))
        self._forget = render(sql.SQL("DELETE FROM {s}.workers WHERE id = %s").format(s=s))
        self._states = render(sql.SQL("SELECT state FROM {s}.schedules").format(s=s))
        self._insert_state = render(sql.SQL(
            "INSERT INTO {s}.schedules VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING"
        ).format(s=s))
        self._update_state = render(sql.SQL(
            "UPDATE {s}.schedules SET updated_at = %s, state = %s "
            "WHERE name = %s AND updated_at = %s").format(s=s))
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        parsed = PostgresSettings.parse(settings, context)
        if context.namespace.startswith(TEST_NAMESPACE_PREFIX):
            mark_temporary(parsed.dsn, parsed.schema)
        return cls(parsed, namespace=context.namespace)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self._store)

    def put(self, record: JobRecord) -> bool:
        return self.put_many([record])[0]

    def put_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """Every record in one transaction (all or none), each fenced."""
        if not records:
            return []
        rows = [encode(r) for r in records]
        with self._store.connection() as conn, conn.transaction():
            return store_fenced(conn, self._upsert, rows)

    def schedule_states(self) -> dict[str, ScheduleState]:
        with self._store.connection() as conn:
            rows = conn.execute(self._states).fetchall()
        states = (ScheduleState.from_dict(json.loads(row[0])) for row in rows)
        return {state.name: state for state in states}

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """One conditional statement, as on SQLite."""
        data = json.dumps(state.to_dict())
        with self._store.connection() as conn:
            if previous is None:
                cur = conn.execute(self._insert_state, (state.name, state.updated_at, data))
            else:
                cur = conn.execute(self._update_state, (state.updated_at, data, state.name,
                                                        previous.updated_at))
            return cur.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``; ``None`` also for an id with a NUL character, which no
        text column can hold (psycopg would raise ``DataError``): ``apply_async(job_id=…)``
        asks here first, and the queue's push then refuses the id, naming it."""
        if "\x00" in job_id:
            return None
        with self._store.connection() as conn:
            row = conn.execute(self._get, (job_id,)).fetchone()
        return None if row is None else _decode(job_id, row[0])

    def query(self, *, status: JobStatus | None = None, task: str | None = None,
              limit: int = 50, after: str | None = None) -> list[JobRecord]:
        """Newest first by ``(updated_at, job_id)``; ``after`` continues below a cursor
        with a row comparison the indexes (which end in those two columns) can seek to. An
        unreadable record is skipped with a warning (as SQLite's backend does), so one torn
        row cannot break ``nuvom history``."""
        if limit <= 0:
            return []
        where: list[sql.Composable] = []
        params: list[Any] = []
        if status is not None:
            where.append(sql.SQL("status = %s"))
            params.append(JobStatus(status).value)
        if task is not None:
            where.append(sql.SQL("func_name = %s"))  # the column keeps the field's old name
            params.append(task)
        if after is not None:
            where.append(sql.SQL("(updated_at, job_id) < (%s, %s)"))
            params.extend(parse_cursor(after))
        clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        query = sql.SQL("SELECT job_id, data FROM {s}.results{w} ORDER BY updated_at DESC, "
                        "job_id DESC LIMIT %s").format(s=sql.Identifier(self.schema), w=clause)
        with self._store.connection() as conn:
            rows = conn.execute(query, [*params, limit]).fetchall()
        records = []
        for job_id, data in rows:
            try:
                records.append(_decode(job_id, data))
            except SerializationError as exc:
                log.warning("schema %s: skipping unreadable job record: %s", self.schema, exc)
        return records

    def purge(self, older_than: float) -> int:
        with self._store.connection() as conn:
            return conn.execute(self._purge, (older_than,)).rowcount

    def counts(self) -> dict[str, int]:
        with self._store.connection() as conn:
            return {status: int(n) for status, n in conn.execute(self._counts).fetchall()}

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records per queue and status updated at or after ``since``: one range scan of
        ``results_newest`` (the queue is read from the record's JSON)."""
        with self._store.connection() as conn:
            rows = conn.execute(self._counts_since, (since,)).fetchall()
        totals: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            totals.setdefault(queue or "default", {})[status] = int(n)
        return totals

    # --- heartbeats: <schema>.workers, expiry on the server's clock ------------------------

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """Upsert this worker's row; expired rows (killed workers) are deleted on the way."""
        data = json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))
        with self._store.connection() as conn, conn.transaction():
            conn.execute(self._sweep)
            conn.execute(self._beat, (info.id, data, float(ttl_secs)))

    def live_workers(self) -> list[WorkerInfo]:
        with self._store.connection() as conn:
            rows = conn.execute(self._live).fetchall()
        return [WorkerInfo.from_dict(json.loads(info)) for (info,) in rows]

    def forget_worker(self, worker_id: str) -> bool:
        with self._store.connection() as conn:
            return bool(conn.execute(self._forget, (worker_id,)).rowcount)
