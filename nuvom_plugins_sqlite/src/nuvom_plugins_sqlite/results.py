"""``SQLiteResultBackend``: job records, one row per job, by default in the queue's file.

Every :class:`~nuvom_kernel.models.JobRecord` field has its own column (JSON text for args,
kwargs, result and history) so ``nuvom history`` and ``nuvom status`` filter and page with
indexes (status, task name, ``updated_at``, ``job_id``) instead of decoding every record.

Writes are fenced (:func:`~nuvom_kernel.models.supersedes`) inside SQLite: an upsert whose
``DO UPDATE`` has a ``WHERE`` clause comparing ``(run, attempts)`` and the terminal states,
so the check and the write are one atomic statement. :func:`store_fenced` is the batched form,
shared with :meth:`SQLiteJobQueue.settle_many <nuvom_plugins_sqlite.queue.SQLiteJobQueue.
settle_many>`, which stores records and settles their leases in one transaction.
"""

from __future__ import annotations

import json
import logging
import operator
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    ResultBackend,
    WorkerInfo,
    parse_cursor,
    read_schedule_state,
)
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, ScheduleState
from nuvom_kernel.values import RESULT_TTL_SECS
from nuvom_plugins_sqlite.connection import Database
from nuvom_plugins_sqlite.settings import SQLiteSettings
from nuvom_plugins_sqlite.workflows import id_chunks

__all__ = ["SQLiteResultBackend"]

log = logging.getLogger("nuvom.sqlite")

_COLUMNS = (
    "job_id", "func_name", "status", "queue", "args", "kwargs", "module", "options", "result",
    "error_type", "error_message", "traceback", "attempts", "max_retries", "history",
    "created_at", "started_at", "finished_at", "updated_at", "worker", "trace_id", "run",
    "token",
)
_JSON = frozenset({"args", "kwargs", "options", "result", "history"})
_ALL = (*_COLUMNS, "extra")
_SELECT = f"SELECT {', '.join(_ALL)} FROM nuvom_results"
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))
_TERMINAL_SQL = f"({', '.join(repr(s) for s in _TERMINAL)})"


def fence_sql(run: str, attempts: str, status: str, old: str = "nuvom_results") -> str:
    """SQL true when a record with these ``run``, ``attempts`` and ``status`` expressions
    supersedes the stored row ``old`` (:func:`~nuvom_kernel.models.supersedes`, in SQL)."""
    new_key, old_key = f"({run}, {attempts})", f"({old}.run, {old}.attempts)"
    # parenthesized whole: callers negate it (``NOT`` binds tighter than ``AND``)
    return (f"(({new_key} > {old_key} OR ({new_key} = {old_key} AND NOT "
            f"({old}.status IN {_TERMINAL_SQL} AND {status} NOT IN {_TERMINAL_SQL}))) "
            f"AND NOT ({old}.status = 'CANCELLED' AND {run} = {old}.run "
            f"AND {status} <> 'CANCELLED'))")


# An upsert keeps the row (and its place in the table) when a job's record is rewritten, and
# its WHERE clause is the fence: a refused record changes nothing and counts no change.
_ROW = f"({', '.join('?' * len(_ALL))})"
_UPSERT = ("ON CONFLICT (job_id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _ALL[1:])
           + " WHERE " + fence_sql("excluded.run", "excluded.attempts", "excluded.status"))
_PUT = f"INSERT INTO nuvom_results ({', '.join(_ALL)}) VALUES {_ROW} {_UPSERT}"
#: Most records per multi-row INSERT (and per fence check): a batch is one statement (one
#: step) instead of one per record; bigger batches run as several in one transaction.
PUT_CHUNK = 32
_PUT_MANY = {n: f"INSERT INTO nuvom_results ({', '.join(_ALL)}) VALUES "
                f"{', '.join([_ROW] * n)} {_UPSERT}" for n in range(1, PUT_CHUNK + 1)}


def upsert_sql(n: int) -> str:
    """The fenced upsert of ``n`` encoded rows (``n`` <= :data:`PUT_CHUNK`)."""
    return _PUT_MANY[n]


# Which of n records (index, job_id, run, attempts, status) the fence refuses: one row
# (one step), NULL when none is, whatever the batch size.
_REFUSED = {n: "SELECT group_concat(v.column1) FROM (VALUES "
               + ", ".join(["(?, ?, ?, ?, ?)"] * n)
               + ") AS v JOIN nuvom_results AS r ON r.job_id = v.column2 WHERE NOT "
               + fence_sql("v.column3", "v.column4", "v.column5", "r")
            for n in range(1, PUT_CHUNK + 1)}


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    """Compact JSON, NaN refused: the C encoder built once (``json.dumps`` with separators
    builds a new encoder per call, a third of a record's encoding time)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - a Python without the _json accelerator
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    # No circular-reference markers: a shared markers dict would keep stale entries after a
    # failed call; the values are wire-safe (from ``to_wire``), so they cannot be cyclic.
    encode = make(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",",
                  False, False, False)
    basestring = json.encoder.encode_basestring_ascii

    def dumps(value: Any) -> str:
        if type(value) is str:
            return basestring(value)
        return "".join(encode(value, 0))

    return dumps


_dumps = _make_dumps()
_EMPTY: dict[type, str] = {list: "[]", dict: "{}"}


def _json(record: JobRecord, column: str, value: Any) -> str:
    if not value and type(value) in _EMPTY:  # most kwargs and histories
        return _EMPTY[type(value)]
    try:
        return _dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"job {record.job_id}: {column} is not JSON-native ({exc}); result backends "
            f"store wire-safe values (see nuvom_kernel.serialization)."
        ) from exc


def _extra_fields() -> tuple[str, ...]:
    stored = {"task" if column == "func_name" else column for column in _COLUMNS}
    return tuple(f.name for f in attrs.fields(JobRecord) if f.name not in stored)


def encode(record: JobRecord) -> tuple[Any, ...]:
    """The row of ``record``, in :data:`_ALL` order (raises ``SerializationError``)."""
    r = record
    status = r.status.value if type(r.status) is JobStatus else JobStatus(r.status).value
    extra = {name: getattr(r, name) for name in _EXTRA} if _EXTRA else None
    return (
        r.job_id, r.task, status, r.queue, _json(r, "args", r.args),
        _json(r, "kwargs", r.kwargs), r.module, _json(r, "options", r.options),
        _json(r, "result", r.result), r.error_type, r.error_message, r.traceback, r.attempts,
        r.max_retries, _json(r, "history", r.history), r.created_at, r.started_at,
        r.finished_at, r.updated_at, r.worker, r.trace_id, r.run, r.token,
        _json(r, "extra", extra) if extra else None,
    )


def _decode(row: tuple[Any, ...]) -> JobRecord:
    data = dict(zip(_ALL, row, strict=True))
    for column in (*_JSON, "extra"):
        if data[column] is not None:
            try:
                data[column] = json.loads(data[column])
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"job {data['job_id']}: stored {column} is not valid JSON ({exc})"
                ) from exc
    data["task"] = data.pop("func_name")  # the column predates the field's rename
    extra = data.pop("extra")
    if extra:  # fields newer than the columns; a column always wins
        data = {**extra, **data}
    try:
        return JobRecord.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"job {data['job_id']}: stored record is invalid ({exc})") \
            from exc


_EXTRA = _extra_fields()
#: Records deleted per transaction by :meth:`SQLiteResultBackend.purge`.
PURGE_CHUNK = 2000


class SQLiteResultBackend(ResultBackend):
    """The embedded default result backend (``result_backend = "sqlite"``).

    :param path: the database file (``from_settings``: ``results_path``, by default the
        queue's file; the records have their own table).
    :param synchronous: ``"NORMAL"`` (default) or ``"FULL"``.
    :param busy_timeout_secs: longest wait for another process's write lock.
    :param result_ttl_secs: finished records older than this are deleted by the workers
        (:attr:`ResultBackend.result_ttl_secs`); ``0`` keeps them until purged.
    """

    name: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = Capabilities(persistent=True,
                                                        multiprocess_safe=True,
                                                        heartbeats=True,
                                                        schedules=True)

    def __init__(
        self,
        path: str | Path = ".nuvom/nuvom.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout_secs: float = 30.0,
        result_ttl_secs: float = RESULT_TTL_SECS,
    ) -> None:
        super().__init__()
        self.settings = SQLiteSettings.parse(
            {"path": path, "synchronous": synchronous, "busy_timeout_secs": busy_timeout_secs,
             "result_ttl_secs": result_ttl_secs},
            BackendContext(),
        )
        self.result_ttl_secs = self.settings.result_ttl_secs
        self.path = self.settings.path
        self._db = Database(self.settings)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Read the shared ``[plugins.sqlite]`` table (its queue-only keys are ignored)."""
        parsed = SQLiteSettings.parse(settings, context)
        return cls(parsed.results_path or parsed.path, synchronous=parsed.synchronous,
                   busy_timeout_secs=parsed.busy_timeout_secs,
                   result_ttl_secs=parsed.result_ttl_secs)

    def __repr__(self) -> str:
        return (f"SQLiteResultBackend({str(self.path)!r}, "
                f"synchronous={self.settings.synchronous!r})")

    @property
    def location(self) -> str | None:
        """The database file, absolute (the settings made it so against the folder the
        process started in)."""
        return str(self.path)

    def close(self) -> None:
        self._db.close()

    def put(self, record: JobRecord) -> bool:
        """Store ``record`` unless the stored one supersedes it (one fenced upsert)."""
        values = encode(record)
        return bool(self._db.write(lambda conn: conn.execute(_PUT, values).rowcount == 1,
                                   "storing a job record"))

    def put_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """All records in one transaction, each fenced as in :meth:`put` (the worker's
        batched settlement when the queue is elsewhere)."""
        if not records:
            return []
        if len(records) == 1:
            return [self.put(records[0])]
        rows = [encode(record) for record in records]
        return self._db.transaction(lambda conn: store_fenced(conn, rows),
                                    "storing job records")

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.conn().execute(f"{_SELECT} WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _decode(row)

    def known(self, job_ids: Sequence[str]) -> set[str]:
        """One indexed ``IN`` lookup per 500 ids (the primary key), not a ``get`` each."""
        found = set[str]()
        conn = self._db.conn()
        for chunk in id_chunks(list(dict.fromkeys(job_ids))):
            found.update(row[0] for row in conn.execute(
                "SELECT job_id FROM nuvom_results WHERE job_id IN "
                f"({', '.join('?' * len(chunk))})", chunk))
        return found

    def query(
        self,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[JobRecord]:
        """Newest first (``updated_at``, then ``job_id``, both descending), the page after
        the cursor ``after`` (keyset paging: each list index ends in ``updated_at, job_id``,
        so any page is a range scan). A row that no longer decodes is logged and skipped (one
        bad record must not hide every other from ``nuvom history``)."""
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(JobStatus(status).value)
        if task is not None:
            clauses.append("func_name = ?")
            params.append(task)
        if after is not None:
            clauses.append("(updated_at, job_id) < (?, ?)")
            params.extend(parse_cursor(after))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"{_SELECT}{where} ORDER BY updated_at DESC, job_id DESC LIMIT ?"
        rows = self._db.conn().execute(sql, (*params, max(limit, 0)))
        records = []
        for row in rows.fetchall():
            try:
                records.append(_decode(row))
            except SerializationError as exc:
                log.warning("%s: skipping unreadable job record: %s", self.path, exc)
        return records

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records per queue and status updated at or after ``since``: one range scan of
        the ``updated_at`` index (the dashboard's "last 5 / 60 minutes")."""
        rows = self._db.conn().execute(
            "SELECT queue, status, count(*) FROM nuvom_results WHERE updated_at >= ? "
            "GROUP BY queue, status", (since,)).fetchall()
        totals: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            totals.setdefault(queue, {})[status] = int(n)
        return totals

    def counts(self) -> dict[str, int]:
        """Records per status in one indexed query (for ``nuvom status``)."""
        rows = self._db.conn().execute(
            "SELECT status, count(*) FROM nuvom_results GROUP BY status").fetchall()
        return {status: int(n) for status, n in rows if n}

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every row, by its ``name``; a row whose state does not decode is logged and read
        as a placeholder (:func:`~nuvom_kernel.backends.read_schedule_state`): one damaged
        row used to stop every schedule of every worker. The ``updated_at`` column is the
        version :meth:`advance_schedule` compares, so it is the state's. Read as bytes: a
        text that is not UTF-8 (a hand edit) would fail the whole fetch as text."""
        rows = self._db.conn().execute(
            "SELECT CAST(name AS BLOB), updated_at, CAST(state AS BLOB) "
            "FROM nuvom_schedules").fetchall()
        where = f"{self.path}, table nuvom_schedules"
        states: dict[str, ScheduleState] = {}
        for raw_name, updated_at, state in rows:
            if raw_name is not None:  # (no schedule has a NULL name: SQLite allows one)
                name = raw_name.decode(errors="replace")
                states[name] = read_schedule_state(name, state, where, version=updated_at)
        return states

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """One conditional statement: an insert that yields to an existing row, or an
        update of the row whose ``updated_at`` is still the one read — or, replacing an
        unreadable row, whose ``state`` is still the damaged text read."""
        data = json.dumps(state.to_dict())
        if previous is None:
            sql = ("INSERT INTO nuvom_schedules VALUES (?, ?, ?) "
                   "ON CONFLICT (name) DO NOTHING")
            params: tuple[Any, ...] = (state.name, state.updated_at, data)
        elif previous.unreadable is not None:
            sql = ("UPDATE nuvom_schedules SET updated_at = ?, state = ? "
                   "WHERE name = ? AND CAST(state AS BLOB) = ?")
            params = (state.updated_at, data, state.name, previous.unreadable.stored)
        else:
            sql = ("UPDATE nuvom_schedules SET updated_at = ?, state = ? "
                   "WHERE name = ? AND updated_at = ?")
            params = (state.updated_at, data, state.name, previous.updated_at)
        return bool(self._db.write(lambda conn: conn.execute(sql, params).rowcount == 1))

    def purge(self, older_than: float) -> int:
        """Delete SUCCEEDED, FAILED and CANCELLED records last updated before ``older_than``
        (epoch seconds); queued and running jobs are never purged. In transactions of
        :data:`PURGE_CHUNK` rows: the first expiry of a long backlog (a million records)
        would otherwise hold the write lock for seconds, stalling every worker's claims."""
        marks = ", ".join("?" * len(_TERMINAL))
        sql = (f"DELETE FROM nuvom_results WHERE seq IN (SELECT seq FROM nuvom_results "
               f"WHERE status IN ({marks}) AND updated_at < ? LIMIT {PURGE_CHUNK})")
        params = (*_TERMINAL, older_than)

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params).rowcount)

        total = 0
        while True:
            deleted = self._db.write(run, "purging finished job records")
            total += deleted
            if deleted < PURGE_CHUNK:
                return total

    # --- heartbeats: table nuvom_workers, one row per worker ------------------------------

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """Replace this worker's row; expired rows of other workers are deleted on the way
        (a killed worker leaves one)."""
        row = (info.id, json.dumps(info.to_dict()), time.time() + ttl_secs)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM nuvom_workers WHERE expires_at <= ?", (time.time(),))
            conn.execute("INSERT OR REPLACE INTO nuvom_workers (id, info, expires_at) "
                         "VALUES (?, ?, ?)", row)

        self._db.write(run)

    def live_workers(self) -> list[WorkerInfo]:
        rows = self._db.conn().execute(
            "SELECT info FROM nuvom_workers WHERE expires_at > ? ORDER BY id",
            (time.time(),)).fetchall()
        return [WorkerInfo.from_dict(json.loads(info)) for (info,) in rows]

    def forget_worker(self, worker_id: str) -> bool:
        return bool(self._db.write(lambda conn: conn.execute(
            "DELETE FROM nuvom_workers WHERE id = ?", (worker_id,)).rowcount))


def store_fenced(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]],
                 refused: set[int] | None = None) -> list[bool]:
    """Upsert the encoded ``rows`` whose record supersedes the stored one; which landed.
    Call inside a write transaction (the check and the writes must not be interleaved).

    ``refused``: indexes to skip anyway (``settle_many``: leases that no longer hold); the
    indexes the fence refuses are added to it. Per chunk, one query finds what the fence
    refuses and one multi-row upsert stores the rest: two statement steps, however many
    records (``RETURNING`` would cost a step per row, each releasing and retaking the GIL
    while the write lock is held). A job listed twice is checked against its earlier
    record of the batch, as if put one after the other.
    """
    refused = set() if refused is None else refused
    for chunk in _rounds(rows, refused):
        params: list[Any] = []
        for i in chunk:
            params += (i, *fence_key(rows[i]))
        found = conn.execute(_REFUSED[len(chunk)], params).fetchone()[0]
        if found is not None:
            refused.update(int(i) for i in str(found).split(","))
        landing = [rows[i] for i in chunk if i not in refused]
        if landing:
            conn.execute(_PUT_MANY[len(landing)], [v for row in landing for v in row])
    return [i not in refused for i in range(len(rows))]



_FENCE_KEY = operator.itemgetter(0, _ALL.index("run"), _ALL.index("attempts"),
                                 _ALL.index("status"))


def fence_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(job_id, run, attempts, status)`` of an encoded row: what the fence compares."""
    return _FENCE_KEY(row)  # type: ignore[no-any-return]


def _rounds(rows: Sequence[tuple[Any, ...]], skip: set[int]) -> list[list[int]]:
    """Indexes of ``rows`` (but ``skip``) in batch order, cut into chunks of at most
    :data:`PUT_CHUNK` where no job id repeats (a repeat starts the next chunk, so it is
    fenced against the record before it)."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    ids: set[str] = set()
    for i, row in enumerate(rows):
        if i in skip:
            continue
        if len(chunk) == PUT_CHUNK or row[0] in ids:
            chunks.append(chunk)
            chunk, ids = [], set()
        chunk.append(i)
        ids.add(row[0])
    if chunk:
        chunks.append(chunk)
    return chunks
