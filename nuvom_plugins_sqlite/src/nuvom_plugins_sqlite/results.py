"""``SQLiteResultBackend``: job records in the same file as the queue, one row per job.

Every :class:`~nuvom_kernel.models.JobRecord` field has its own column (JSON text for args,
kwargs, result and history) so ``nuvom history`` and ``nuvom status`` filter and page with
indexes (status, task name, ``updated_at``) instead of decoding every record.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
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
_PUT = (f"INSERT OR REPLACE INTO nuvom_results ({', '.join(_ALL)}) "
        f"VALUES ({', '.join('?' * len(_ALL))})")
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _json(record: JobRecord, column: str, value: Any) -> str:
    try:
        return _dumps(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"job {record.job_id}: {column} is not JSON-native ({exc}); result backends "
            f"store wire-safe values (see nuvom_kernel.serialization)."
        ) from exc


def _extra_fields() -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(JobRecord) if f.name not in _COLUMNS)


def _encode(record: JobRecord) -> tuple[Any, ...]:
    values: list[Any] = []
    for column in _COLUMNS:
        value = getattr(record, column)
        if column in _JSON:
            value = _json(record, column, value)
        elif column == "status":
            value = JobStatus(value).value
        values.append(value)
    extra = {name: getattr(record, name) for name in _EXTRA}
    values.append(_json(record, "extra", extra) if extra else None)
    return tuple(values)


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

    :param path: the database file; the queue's file by default, in its own table.
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
        return cls(parsed.path, synchronous=parsed.synchronous,
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
        rows = [_encode(record) for record in records]
        self._db.transaction(lambda conn: conn.executemany(_PUT, rows))

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
