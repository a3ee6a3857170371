"""``SQLiteResultBackend``: job records, one row per job, by default in the queue's file.

Every :class:`~nuvom_kernel.models.JobRecord` field has its own column (JSON text for args,
kwargs, result and history) so ``nuvom history`` and ``nuvom status`` filter and page with
indexes (status, task name, ``updated_at``) instead of decoding every record.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from nuvom_kernel.backends import BackendContext, Capabilities, ResultBackend
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus
from nuvom_plugins_sqlite.connection import Database, SQLiteSettings

__all__ = ["SQLiteResultBackend"]

log = logging.getLogger("nuvom.sqlite")

_COLUMNS = (
    "job_id", "func_name", "status", "queue", "args", "kwargs", "module", "options", "result",
    "error_type", "error_message", "traceback", "attempts", "max_retries", "history",
    "created_at", "started_at", "finished_at", "updated_at", "worker", "trace_id",
)
_JSON = frozenset({"args", "kwargs", "options", "result", "history"})
_ALL = (*_COLUMNS, "extra")
_SELECT = f"SELECT {', '.join(_ALL)} FROM nuvom_results"
# An upsert keeps the row (and its place in the table) when a job's record is rewritten.
_ROW = f"({', '.join('?' * len(_ALL))})"
_UPSERT = "ON CONFLICT (job_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}"
                                                           for c in _ALL[1:])
_PUT = f"INSERT INTO nuvom_results ({', '.join(_ALL)}) VALUES {_ROW} {_UPSERT}"
#: Most records per multi-row INSERT: a batch is one statement (one step, one commit)
#: instead of BEGIN, one step per record and COMMIT; bigger batches run as several.
_PUT_CHUNK = 32
_PUT_MANY = {n: f"INSERT INTO nuvom_results ({', '.join(_ALL)}) VALUES "
                f"{', '.join([_ROW] * n)} {_UPSERT}" for n in range(1, _PUT_CHUNK + 1)}
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))


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
    return tuple(f.name for f in attrs.fields(JobRecord) if f.name not in _COLUMNS)


def _encode(record: JobRecord) -> tuple[Any, ...]:
    r = record
    status = r.status.value if type(r.status) is JobStatus else JobStatus(r.status).value
    extra = {name: getattr(r, name) for name in _EXTRA} if _EXTRA else None
    return (
        r.job_id, r.func_name, status, r.queue, _json(r, "args", r.args),
        _json(r, "kwargs", r.kwargs), r.module, _json(r, "options", r.options),
        _json(r, "result", r.result), r.error_type, r.error_message, r.traceback, r.attempts,
        r.max_retries, _json(r, "history", r.history), r.created_at, r.started_at,
        r.finished_at, r.updated_at, r.worker, r.trace_id,
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
    data.update(data.pop("extra") or {})
    try:
        return JobRecord.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"job {data['job_id']}: stored record is invalid ({exc})") \
            from exc


_EXTRA = _extra_fields()


class SQLiteResultBackend(ResultBackend):
    """The embedded default result backend (``result_backend = "sqlite"``).

    :param path: the database file (``from_settings``: ``results_path``, by default the
        queue's file; the records have their own table).
    :param synchronous: ``"NORMAL"`` (default) or ``"FULL"``.
    :param busy_timeout_secs: longest wait for another process's write lock.
    """

    name: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = Capabilities(persistent=True,
                                                        multiprocess_safe=True)

    def __init__(
        self,
        path: str | Path = ".nuvom/nuvom.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout_secs: float = 30.0,
    ) -> None:
        super().__init__()
        self.settings = SQLiteSettings.parse(
            {"path": path, "synchronous": synchronous, "busy_timeout_secs": busy_timeout_secs},
            BackendContext(),
        )
        self.path = self.settings.path
        self._db = Database(self.settings)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Read the shared ``[plugins.sqlite]`` table (its queue-only keys are ignored)."""
        parsed = SQLiteSettings.parse(settings, context)
        return cls(parsed.results_path or parsed.path, synchronous=parsed.synchronous,
                   busy_timeout_secs=parsed.busy_timeout_secs)

    def __repr__(self) -> str:
        return (f"SQLiteResultBackend({str(self.path)!r}, "
                f"synchronous={self.settings.synchronous!r})")

    def close(self) -> None:
        self._db.close()

    def put(self, record: JobRecord) -> None:
        values = _encode(record)
        self._db.write(lambda conn: conn.execute(_PUT, values))

    def put_many(self, records: Sequence[JobRecord]) -> None:
        """All records in one transaction (the worker's batched settlement)."""
        if not records:
            return
        rows = [_encode(record) for record in records]
        chunks = [rows[i:i + _PUT_CHUNK] for i in range(0, len(rows), _PUT_CHUNK)]

        def run(conn: sqlite3.Connection) -> None:
            for chunk in chunks:
                conn.execute(_PUT_MANY[len(chunk)], [v for row in chunk for v in row])

        if len(chunks) == 1:  # one autocommit statement
            self._db.write(run)
        else:
            self._db.transaction(run)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.conn().execute(f"{_SELECT} WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _decode(row)

    def query(
        self,
        *,
        status: JobStatus | None = None,
        func_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Newest ``updated_at`` first; a row that no longer decodes is logged and skipped
        (one bad record must not hide every other from ``nuvom history``)."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(JobStatus(status).value)
        if func_name is not None:
            clauses.append("func_name = ?")
            params.append(func_name)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"{_SELECT}{where} ORDER BY updated_at DESC, job_id DESC LIMIT ? OFFSET ?"
        rows = self._db.conn().execute(sql, (*params, max(limit, 0), max(offset, 0)))
        records = []
        for row in rows.fetchall():
            try:
                records.append(_decode(row))
            except SerializationError as exc:
                log.warning("%s: skipping unreadable job record: %s", self.path, exc)
        return records

    def counts(self) -> dict[str, int]:
        """Records per status in one indexed query (for ``nuvom status``)."""
        rows = self._db.conn().execute(
            "SELECT status, count(*) FROM nuvom_results GROUP BY status").fetchall()
        return {status: int(n) for status, n in rows if n}

    def purge(self, older_than: float) -> int:
        """Delete SUCCEEDED, FAILED and CANCELLED records last updated before ``older_than``
        (epoch seconds); queued and running jobs are never purged."""
        marks = ", ".join("?" * len(_TERMINAL))
        sql = f"DELETE FROM nuvom_results WHERE status IN ({marks}) AND updated_at < ?"
        params = (*_TERMINAL, older_than)

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params).rowcount)

        return self._db.write(run)
