"""The PostgreSQL result backend: one row per job, written by a fenced upsert.

Why the fence is in the statement: ``INSERT … ON CONFLICT DO UPDATE … WHERE`` decides
whether the new record supersedes the stored one (:func:`nuvom_kernel.models.supersedes`:
later ``(run, attempts)`` wins; within one attempt a terminal record is never replaced by a
non-terminal one) under the row lock the upsert itself takes, so two workers writing one job
can never both pass the check. The queue's ``settle_many`` runs the same statement in its
own transaction.

Why the record is kept as JSON text beside a few columns: the columns (status, task, run,
attempts, updated_at) are what the fence, the filters and keyset paging need; the rest is
read back whole. ``text``, not ``jsonb``: it keeps every float exactly as Python wrote it,
and it holds every record Python's JSON can write: ``jsonb`` refuses ``\\u0000`` (an argument
or error message with a NUL) and a lone surrogate's ``\\ud800``. So no statement here casts
``data`` to ``jsonb``: ``counts_since`` cuts the queue out of the text (``_COUNTS_SINCE``).
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
    read_schedule_state,
)
from nuvom_kernel.errors import SerializationError, byte_size, too_large
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, ScheduleState
from nuvom_kernel.values import is_text
from nuvom_plugins_postgres.queries import render
from nuvom_plugins_postgres.settings import PostgresSettings
from nuvom_plugins_postgres.store import (
    TEST_NAMESPACE_PREFIX,
    acquire,
    mark_temporary,
    release,
)

__all__ = ["MAX_RECORD_BYTES", "PostgresResultBackend", "distinct_chunks", "dumps", "encode",
           "encode_all", "storable", "store_fenced"]

log = logging.getLogger("nuvom.postgres")

#: The fence of an insert into ``results AS r``: a stored record is replaced only by a later
#: run or attempt, or by the same one ending, and a CANCELLED one only by a later run
#: (``supersedes``). One text for the upsert below
#: and the queue's one-statement settle (:mod:`.settle`), so the two cannot drift apart.
KEEP_NEWER = """ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, func_name = EXCLUDED.func_name, run = EXCLUDED.run,
    attempts = EXCLUDED.attempts, terminal = EXCLUDED.terminal,
    updated_at = EXCLUDED.updated_at, data = EXCLUDED.data
WHERE ((EXCLUDED.run, EXCLUDED.attempts) > (r.run, r.attempts)
       OR ((EXCLUDED.run, EXCLUDED.attempts) = (r.run, r.attempts)
           AND (NOT r.terminal OR EXCLUDED.terminal)))
  AND NOT (r.status = 'CANCELLED' AND EXCLUDED.run = r.run
           AND EXCLUDED.status <> 'CANCELLED')"""

_UPSERT = """
INSERT INTO {s}.results AS r
       (job_id, status, func_name, run, attempts, terminal, updated_at, data)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::int[], %b::bool[],
                     %b::float8[], %b::text[])
""" + KEEP_NEWER + """
RETURNING job_id
"""

# Records per queue and status: the queue is cut out of the record's text, never read by
# ``data::jsonb`` (which fails on the whole query for one record holding ``\u0000`` or a lone
# surrogate's escape, or one torn row). Why this is the top-level ``queue``: ``encode`` writes
# the record's fields in ``JobRecord`` order, and the only fields before ``queue`` (job_id,
# task, status) are strings, inside which ``"queue":"`` cannot occur (a quote in a string is
# ``\"``); a nested ``{"queue": …}`` in the arguments comes later. ``split_part`` stops at the
# first quote, which is an escaped one when the name ends in a backslash: only then the
# escape-aware regular expression reads it (``split_part`` is ~15x cheaper than parsing the
# record as ``jsonb``; the regular expression ~1.5x). Escapes left in the name are decoded by
# ``_queue_name``; a record without a ``queue`` string counts as ``default``.
_QUEUE_CUT = """split_part(split_part(data, '"queue":"', 2), '"', 1)"""
_COUNTS_SINCE = rf"""
SELECT CASE WHEN right({_QUEUE_CUT}, 1) = E'\\'
            THEN substring(data FROM E'"queue":"((?:[^"\\\\]|\\\\.)*)"')
            ELSE {_QUEUE_CUT} END,
       status, count(*)
FROM {{s}}.results WHERE updated_at >= %s GROUP BY 1, 2
"""

Row = tuple[str, str, str, int, int, bool, float, str]

_JSON_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_JSON_ASCII = json.JSONEncoder(separators=(",", ":")).encode


#: Whether a PostgreSQL ``text`` column holds a string: no NUL (the server refuses it) and
#: no lone surrogate (psycopg cannot encode it as UTF-8): the kernel's own test of text.
storable = is_text


def dumps(value: Any) -> str:
    """``value`` as compact JSON text a ``text`` column holds and ``json.loads`` reads back
    as the same value.

    Why two encodings: non-ASCII characters are written as themselves (shorter and readable
    in ``psql``), but a lone surrogate (``"a\\ud800b"``: an argument, a kwargs key, an error
    message) cannot be sent as UTF-8, and the record could never be stored, so its job never
    settled. Such a value is written again with every non-ASCII character escaped
    (``\\ud800``), as the other backends write everything. The check costs nothing for ASCII
    text and one UTF-8 encode otherwise; JSON text never holds a raw NUL (it is ``\\u0000``).
    """
    text = _JSON_UTF8(value)
    return text if storable(text) else _JSON_ASCII(value)


def encode(record: JobRecord) -> Row:
    """The columns of one record (the fence's key first, the whole record as JSON last)."""
    return (record.job_id, record.status.value, record.task, record.run,
            record.attempts, record.status in TERMINAL_STATES, float(record.updated_at),
            dumps(record.to_dict()))


#: The most bytes of record text (UTF-8) and retry bodies one statement sends, and so the
#: largest record this backend stores: 1 GiB less 64 MiB (1,006,632,960 bytes).
#:
#: Why this bound: PostgreSQL holds at most ``MaxAllocSize`` = 2**30 - 1 bytes in one
#: value (a ``text``, a ``bytea``, an array: "1 GB" in its docs) and reads a whole protocol
#: message into one buffer of at most that size (``PQ_LARGE_MESSAGE_LIMIT`` = 2**30 - 2).
#: A record travels as a parameter of one ``Bind`` message, together with every other record
#: of its batch (one ``text[]`` array, itself a single value) and the other columns. A
#: message past the limit is a protocol violation: the server closes the connection, which
#: psycopg reports as ``OperationalError`` and the settler took for a store that is down, so
#: the job (and its batch) ran again at every visibility timeout. The 64 MiB left over
#: covers what else the statement sends (job ids, task names, numbers, array and message
#: headers: some tens of bytes a row besides the names, for a batch of hundreds) and the
#: framing of the record when it is read back (a ``DataRow`` message has the same limit).
MAX_RECORD_BYTES = 2**30 - 2**26


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` as UTF-8: its length for ASCII (``isascii`` reads a flag CPython
    keeps, no scan), else one encode (only on the slow path of :func:`encode_all`)."""
    return len(text) if text.isascii() else len(text.encode())


def _too_large(record: JobRecord, size: int) -> SerializationError:
    """The refusal of ``record`` (``size`` bytes as stored): names the job, the size, the
    limit, the field that makes it large and what to do, since the fix is the task's."""
    fields = record.to_dict()

    def length(name: str) -> int:  # characters are enough to rank; a string is not copied
        value = fields[name]
        return len(value) if isinstance(value, str) else len(dumps(value))

    biggest = max(fields, key=length)
    return SerializationError(too_large(
        f"job {record.job_id} ({record.task}): its record, as the postgres result backend "
        "stores it (JSON),",
        f"the {byte_size(MAX_RECORD_BYTES)} it stores in one record (PostgreSQL holds at "
        f"most 1 GB in one field and one message); most of it is the {biggest!r} field",
        size=size))


def encode_all(records: Sequence[JobRecord], bodies: Sequence[int] | None = None
               ) -> list[Row]:
    """The rows of ``records`` (see :func:`encode`), checked to fit one statement;
    ``bodies``: per record, the bytes sent beside it (a settle's retry body, else 0).

    :raises SerializationError: a record larger than :data:`MAX_RECORD_BYTES`, naming the
        job (the kernel's settler then fails that job alone, saying why), or records that
        fit alone but not together (the settler then stores them one by one). Why before
        sending: past PostgreSQL's limits the server drops the connection, an error that
        looks like an outage (see :data:`MAX_RECORD_BYTES`).

    Why it is cheap: the hot path is one ``len`` per row, since UTF-8 takes at most 4 bytes
    a character; only a batch whose text might exceed the bound is measured exactly.
    """
    rows = [encode(r) for r in records]
    extra = sum(bodies) if bodies else 0
    if 4 * sum(len(row[7]) for row in rows) + extra <= MAX_RECORD_BYTES:
        return rows
    sizes = [_utf8_size(row[7]) + (bodies[i] if bodies else 0) for i, row in enumerate(rows)]
    for record, size in zip(records, sizes, strict=True):
        if size > MAX_RECORD_BYTES:
            raise _too_large(record, size)
    total = sum(sizes)
    if total > MAX_RECORD_BYTES:
        raise SerializationError(
            f"{len(rows)} job records are {byte_size(total)} together, over the "
            f"{byte_size(MAX_RECORD_BYTES)} the postgres result backend sends in one "
            "statement (PostgreSQL holds at most 1 GB in one message); each fits alone: "
            "store them in smaller batches")
    return rows


def _queue_name(cut: str | None) -> str:
    """The queue named by ``cut`` (the JSON string's body ``_COUNTS_SINCE`` returns),
    escapes decoded; ``default`` for none."""
    if cut and "\\" in cut:
        try:
            cut = json.loads(f'"{cut}"')
        except ValueError:  # a torn record: count it under the text as stored
            pass
    return cut or "default"


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
        # the workers' expiry too, not only the PostgreSQL queue's tick: with another queue
        # backend (Redis queue, PostgreSQL records) nothing else would ever purge them; two
        # purges by one cutoff delete each row once
        self.result_ttl_secs = self.settings.result_ttl_secs
        self._store = acquire(self.settings, namespace)
        self.schema = self.settings.schema
        s = sql.Identifier(self.schema)
        self._upsert = render(sql.SQL(_UPSERT).format(s=s))
        self._get = render(sql.SQL("SELECT data FROM {s}.results WHERE job_id = %s"
                                   ).format(s=s))
        self._known = render(sql.SQL("SELECT job_id FROM {s}.results WHERE job_id = ANY(%s)"
                                     ).format(s=s))
        self._purge = render(sql.SQL(
            "DELETE FROM {s}.results WHERE terminal AND updated_at < %s").format(s=s))
        self._counts = render(sql.SQL(
            "SELECT status, count(*) FROM {s}.results GROUP BY status").format(s=s))
        self._counts_since = render(sql.SQL(_COUNTS_SINCE).format(s=s))
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
        self._states = render(sql.SQL("SELECT name, updated_at, state FROM {s}.schedules"
                                      ).format(s=s))
        self._insert_state = render(sql.SQL(
            "INSERT INTO {s}.schedules VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING"
        ).format(s=s))
        self._update_state = render(sql.SQL(
            "UPDATE {s}.schedules SET updated_at = %s, state = %s "
            "WHERE name = %s AND updated_at = %s").format(s=s))
        self._replace_unreadable_state = render(sql.SQL(
            "UPDATE {s}.schedules SET updated_at = %s, state = %s "
            "WHERE name = %s AND state = %s").format(s=s))
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        parsed = PostgresSettings.parse(settings, context)
        if context.namespace.startswith(TEST_NAMESPACE_PREFIX):
            mark_temporary(parsed.dsn, parsed.schema)
        return cls(parsed, namespace=context.namespace)

    @property
    def location(self) -> str | None:
        return self._store.location

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
        rows = encode_all(records)  # raises SerializationError before sending: see there

        def put(conn: psycopg.Connection[Any]) -> list[bool]:
            with conn.transaction():
                return store_fenced(conn, self._upsert, rows)

        # Repeatable: a record the first try committed is stored again by the same fence.
        return self._store.run(put)

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every row, by its ``name``; a row whose state does not decode is logged and read
        as a placeholder (:func:`~nuvom_kernel.backends.read_schedule_state`), as on
        SQLite: one damaged row used to stop every schedule of every worker. The
        ``updated_at`` column is the version :meth:`advance_schedule` compares."""
        rows = self._store.rows(self._states)
        where = f"{self.location}, table schedules"
        return {name: read_schedule_state(name, state, where, version=updated_at)
                for name, updated_at, state in rows}

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """One conditional statement, as on SQLite (an unreadable row is replaced only
        while its ``state`` is still the damaged text read)."""
        data = json.dumps(state.to_dict())
        with self._store.connection() as conn:
            if previous is None:
                cur = conn.execute(self._insert_state, (state.name, state.updated_at, data))
            elif previous.unreadable is not None:
                cur = conn.execute(self._replace_unreadable_state,
                                   (state.updated_at, data, state.name,
                                    previous.unreadable.stored))
            else:
                cur = conn.execute(self._update_state, (state.updated_at, data, state.name,
                                                        previous.updated_at))
            return cur.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``; ``None`` also for an id no text column can hold (a NUL,
        a lone surrogate: psycopg would raise ``DataError`` or ``UnicodeEncodeError``), so no
        record has it: ``apply_async(job_id=…)`` asks here first, and the queue's push then
        refuses the id, naming it; a command-line id with undecodable bytes reads unknown."""
        if not storable(job_id):
            return None
        row = self._store.row(self._get, (job_id,))
        return None if row is None else _decode(job_id, row[0])

    def known(self, job_ids: Sequence[str]) -> set[str]:
        """One indexed ``= ANY`` lookup for the batch, not a round trip per id; ids no text
        column can hold have no record (as in :meth:`get`)."""
        ids = [job_id for job_id in dict.fromkeys(job_ids) if storable(job_id)]
        if not ids:
            return set()
        rows = self._store.rows(self._known, (ids,))
        return {row[0] for row in rows}

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
        rows = self._store.rows(query, [*params, limit])
        records = []
        for job_id, data in rows:
            try:
                records.append(_decode(job_id, data))
            except SerializationError as exc:
                log.warning("schema %s: skipping unreadable job record: %s", self.schema, exc)
        return records

    def purge(self, older_than: float) -> int:
        """``older_than`` is read on this process's clock, shifted onto the server's (by
        the offset the store measured): a worker or shell whose clock ran 10 minutes ahead,
        with a TTL of 2 minutes, deleted every fresh record."""
        cutoff = self._store.on_server(older_than)
        return self._store.changed(self._purge, (cutoff,))

    def counts(self) -> dict[str, int]:
        rows = self._store.rows(self._counts)
        return {status: int(n) for status, n in rows}

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records per queue and status updated at or after ``since``: one range scan of
        ``results_newest`` (the queue is cut out of the record's text: ``_COUNTS_SINCE``).
        Two stored spellings of one name (escaped or not) add up."""
        rows = self._store.rows(self._counts_since, (since,))
        totals: dict[str, dict[str, int]] = {}
        for cut, status, n in rows:
            counts = totals.setdefault(_queue_name(cut), {})
            counts[status] = counts.get(status, 0) + int(n)
        return totals

    # --- heartbeats: <schema>.workers, expiry on the server's clock ------------------------

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """Upsert this worker's row; expired rows (killed workers) are deleted on the way."""
        data = dumps(info.to_dict())

        def beat(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(self._sweep)
                conn.execute(self._beat, (info.id, data, float(ttl_secs)))

        self._store.run(beat)

    def live_workers(self) -> list[WorkerInfo]:
        rows = self._store.rows(self._live)
        return [WorkerInfo.from_dict(json.loads(info)) for (info,) in rows]

    def forget_worker(self, worker_id: str) -> bool:
        with self._store.connection() as conn:
            return bool(conn.execute(self._forget, (worker_id,)).rowcount)
