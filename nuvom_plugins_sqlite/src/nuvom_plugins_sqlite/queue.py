"""``SQLiteJobQueue``: a durable queue that several worker processes share through one file.

How a message moves: ``push`` inserts rows (ready, or waiting until ``available_at``; an id
already queued is skipped, so a push is idempotent per job id);
``claim`` leases the best ready rows in one ``UPDATE ... WHERE seq IN (SELECT ... LIMIT n)
RETURNING`` statement, so two processes can never lease the same row; ``ack`` deletes,
``retry``/``release`` put it back, ``extend`` pushes the lease's expiry. A leased row waits
with its lease expiry as ``visible_at``, like a delayed row waits for its time; a claim first
moves every due row (a delayed job whose time came, a lease that expired because its worker
was killed with ``-9``) back to ready: no reaper process, and the re-claimed row's
``deliveries`` keeps counting. See :mod:`.schema` for the two indexes this relies on.

Every claim writes a fresh random token into the row; ack, retry, release and extend match
``id`` *and* ``token``, so a worker whose lease expired and was taken over changes nothing
and gets ``False`` (``docs/architecture.md``, "Leases and fencing"). A row keeps its token
until it is acked, put back or claimed again: a lease that expired and was promoted to ready
can still be acked by its holder until another claim takes it (one run fewer), so
``peek_state`` and ``stats`` count a row with a token as running.

When the result backend is a :class:`~nuvom_plugins_sqlite.results.SQLiteResultBackend` on
the same file, :meth:`SQLiteJobQueue.settle_many` stores a batch of outcomes and acks or
retries their leases in one transaction: no window in which a job is recorded finished but
still queued, and one commit for the whole batch.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    QueueBackend,
    QueueCounts,
    QueueStats,
    ResultBackend,
)
from nuvom_kernel.clock import StepWatch
from nuvom_kernel.models import JobStatus, Lease, Message, Settlement
from nuvom_kernel.views import QueuedJob
from nuvom_kernel.workflow.graph import GraphTxn, Node, WorkflowGraph, advance, doomed_record
from nuvom_kernel.workflow.settle import final_steps
from nuvom_plugins_sqlite import quarantine
from nuvom_plugins_sqlite.browse import browse as browse_page
from nuvom_plugins_sqlite.browse import row_state
from nuvom_plugins_sqlite.connection import Database, SQLiteSettings
from nuvom_plugins_sqlite.insert import INSERT, insert_batch, message_row
from nuvom_plugins_sqlite.limits import claim_limited, count_per_task
from nuvom_plugins_sqlite.results import (
    PUT_CHUNK,
    SQLiteResultBackend,
    encode,
    fence_key,
    fence_sql,
    upsert_sql,
)
from nuvom_plugins_sqlite.wakeup import WAKEUPS_SUPPORTED, Waker
from nuvom_plugins_sqlite.workflows import SQLiteGraphTxn, purge_ended

T = TypeVar("T")

_ENQUEUEING = "enqueueing jobs"  # what push does, for a DatabaseFullError's message

__all__ = ["SQLiteJobQueue"]

_RETURNING = ("id, seq, queue, priority, created_at, available_at, visible_at, deliveries, "
              "body, task, failures")
_NAMES = [*_RETURNING.split(", "), "token"]
_MESSAGE_BY_ID = f"SELECT {', '.join(_NAMES)} FROM nuvom_queue WHERE id = ?"

_CLAIM = """
UPDATE nuvom_queue
SET token = lower(hex(randomblob(8))), deliveries = deliveries + 1, visible_at = ?
WHERE seq IN (
    SELECT seq FROM nuvom_queue INDEXED BY nuvom_queue_ready
    WHERE visible_at IS NULL{where}
    ORDER BY priority DESC, created_at, seq
    LIMIT ?
)
RETURNING """ + _RETURNING + """, token,
    (SELECT visible_at FROM nuvom_queue INDEXED BY nuvom_queue_waiting
     WHERE visible_at IS NOT NULL ORDER BY visible_at LIMIT 1)"""

# Is a waiting row due, is a row ready? A step into each index, outside the write lock. Each
# claim that leases rows also returns when the next waiting row is due (the RETURNING
# subquery above), so this read runs only when that time has come or is unknown (the first
# claim, or after a claim found nothing: an idle poll then costs a read, not a write).
_PEEK = """
SELECT (SELECT 1 FROM nuvom_queue INDEXED BY nuvom_queue_waiting WHERE visible_at <= ?
        LIMIT 1),
       (SELECT 1 FROM nuvom_queue INDEXED BY nuvom_queue_ready WHERE visible_at IS NULL{where}
        LIMIT 1)"""
# Due rows back to ready, earliest first; bounded so a burst of thousands of due rows holds
# the write lock for one short statement at a time (the next claim promotes the rest).
_PROMOTE = """
UPDATE nuvom_queue SET visible_at = NULL WHERE seq IN (
    SELECT seq FROM nuvom_queue INDEXED BY nuvom_queue_waiting WHERE visible_at <= ?
        AND (token IS NULL OR visible_at <= ?)
    ORDER BY visible_at LIMIT 1000
)"""

_RETRY = ("UPDATE nuvom_queue SET token = NULL, available_at = ?, visible_at = ?, "
          "body = coalesce(?, body), failures = failures + 1 WHERE id = ? AND token = ?")

# settle_many, per chunk of n settlements with distinct ids. Which are refused, as one row:
# the lease's token no longer holds, or the stored record supersedes the new one. Values:
# (index, lease id, lease token, record job id, run, attempts, status).
_SETTLE_REFUSED = {n: "SELECT group_concat(v.column1) FROM (VALUES "
                      + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n)
                      + ") AS v LEFT JOIN nuvom_queue AS q ON q.id = v.column2 "
                      "LEFT JOIN nuvom_results AS r ON r.job_id = v.column4 "
                      "WHERE q.token IS NOT v.column3 OR (r.job_id IS NOT NULL AND NOT "
                      + fence_sql("v.column5", "v.column6", "v.column7", "r") + ")"
                   for n in range(1, PUT_CHUNK + 1)}
_SETTLE_ACK = {n: f"DELETE FROM nuvom_queue WHERE id IN ({', '.join('?' * n)})"
               for n in range(1, PUT_CHUNK + 1)}
# (id, available_at, visible_at, body or NULL) per retried lease.
_SETTLE_RETRY = {n: "UPDATE nuvom_queue SET token = NULL, available_at = v.column2, "
                    "visible_at = v.column3, body = coalesce(v.column4, body), "
                    "failures = failures + 1 FROM (VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * n) + ") AS v WHERE nuvom_queue.id = v.column1"
                 for n in range(1, PUT_CHUNK + 1)}

#: Most leases matched by one ``(id = ? AND token = ?) OR ...`` statement (ack_many,
#: extend_many); a bigger batch runs as several statements in one transaction.
_FENCED_CHUNK = 64
_FENCED_SQL: dict[tuple[str, int, bool], str] = {}


def _fenced_sql(head: str, n: int, *, all_or_none: bool = False) -> str:
    """``head`` plus a WHERE clause matching ``n`` (id, token) pairs (bound in that order),
    returning the (id, token) pairs hit. Every term is an index lookup on ``id`` (SQLite's
    multi-index OR).

    ``all_or_none``: no RETURNING, and a change only if all ``n`` leases still hold (the
    pairs are bound twice). It is the usual case, and one step of the statement instead of
    one per row: each step releases and retakes the GIL while the write lock is held.
    """
    key = (head, n, all_or_none)
    sql = _FENCED_SQL.get(key)
    if sql is None:
        terms = " OR ".join(["(id = ? AND token = ?)"] * n)
        if all_or_none:
            sql = (f"{head} WHERE ({terms}) AND "
                   f"(SELECT count(*) FROM nuvom_queue WHERE {terms}) = {n}")
        else:
            sql = f"{head} WHERE {terms} RETURNING id, token"
        _FENCED_SQL[key] = sql
    return sql


def _queue_filter(queues: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if queues is None:
        return "", ()
    names = tuple(queues)
    return f" AND queue IN ({', '.join('?' * len(names))})" if names else " AND 0", names


class SQLiteJobQueue(QueueBackend):
    """The embedded default queue backend (``queue_backend = "sqlite"``).

    :param path: the database file (created with its directory on first use).
    :param synchronous: ``"NORMAL"`` (default) or ``"FULL"``; see ``SQLiteSettings``.
    :param busy_timeout_secs: longest wait for another process's write lock.
    :param visibility_timeout_secs: lease length of a claim.
    """

    name: ClassVar[str] = "sqlite"
    #: ``blocking_dequeue`` where the wake-up sockets exist (Linux): an idle waiter blocks in
    #: ``select()`` until a push from any process wakes it. Elsewhere it polls.
    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, multiprocess_safe=True, priorities=True, delayed=True,
        blocking_dequeue=WAKEUPS_SUPPORTED, concurrency=True,
        workflows=True,
    )
    #: How often an idle waiter asks SQLite whether another connection committed
    #: (``PRAGMA data_version``): bounds cross-process pickup latency at a few µs of CPU each.
    data_version_poll_secs: ClassVar[float] = 0.004
    #: A batch is encoded chunk by chunk as it is read; in a large one each chunk is encoded
    #: while SQLite stores the one before, on a second thread (:mod:`.insert`).
    streams_push: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path = ".nuvom/nuvom.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout_secs: float = 30.0,
        visibility_timeout_secs: float = 30.0,
    ) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self.settings = SQLiteSettings.parse(
            {"path": path, "synchronous": synchronous, "busy_timeout_secs": busy_timeout_secs,
             "visibility_timeout_secs": visibility_timeout_secs},
            BackendContext(),
        )
        self.path = self.settings.path
        self._db = Database(self.settings)
        # Lease bookkeeping (claim, ack, extend, release) never fsyncs: losing it to a power
        # cut can only make a job run again, which at-least-once delivery allows. What would
        # lose a job or its progress (push, retry, clear) commits at the configured level.
        self._lease_db = (self._db if self.settings.synchronous == "NORMAL" else
                          Database(attrs.evolve(self.settings, synchronous="NORMAL")))
        # The wake-up folder sits beside the file's real path: a producer naming the
        # database through a symlink and a worker naming its target must meet in one folder
        # (next to <symlink> no worker listened: every pickup waited for a timed claim).
        self._waker = Waker(self._db.real_path)
        self._seen = threading.local()  # last PRAGMA data_version this thread saw
        self._claim_sql: dict[tuple[bool | None, int | None], str] = {}  # and peeks
        self._next_due: float | None = None  # see claim()
        self._clock_steps = StepWatch()
        self.limits: dict[str, int] = {}  # task -> most live leases (set_concurrency_limits)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        parsed = SQLiteSettings.parse(settings, context)
        return cls(parsed.path, synchronous=parsed.synchronous,
                   busy_timeout_secs=parsed.busy_timeout_secs,
                   visibility_timeout_secs=parsed.visibility_timeout_secs)

    def __repr__(self) -> str:
        return f"SQLiteJobQueue({str(self.path)!r}, synchronous={self.settings.synchronous!r})"

    @property
    def location(self) -> str | None:
        """The database file, absolute (the settings made it so against the folder the
        process started in)."""
        return str(self.path)

    def close(self) -> None:
        self._waker.close()
        self._lease_db.close()
        self._db.close()

    def notify(self) -> None:
        """Wake waiters in this process and, through ``<database>-wake/``, in others."""
        super().notify()
        self._waker.notify()

    # --- primitives -----------------------------------------------------------------------

    def push(self, messages: Sequence[Message]) -> list[bool]:
        """Insert every message in one transaction (a ``.map()`` costs one commit); an id
        already queued, or earlier in the batch, stores nothing (``False``)."""
        if not messages:
            return []
        now = time.time()
        if len(messages) == 1:  # one autocommit statement: no BEGIN/COMMIT round trips
            values = message_row(messages[0], now)
            new = self._db.write(lambda conn: conn.execute(INSERT, values).rowcount,
                                 _ENQUEUEING) == 1
            if new and values[5] is not None:
                self._waits_until(values[5])
            return [new]
        rows, stored = self._db.transaction(lambda conn: insert_batch(conn, messages, now),
                                            _ENQUEUEING)
        waits = [row[5] for row, new in zip(rows, stored, strict=True)
                 if new and row[5] is not None]
        if waits:
            self._waits_until(min(waits))
        return stored

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        if n <= 0 or (queues is not None and not queues):
            return []
        where, names = _queue_filter(queues)
        if self.limits:
            return self._claim_limited(n, where, names)
        key = (n == 1, None if queues is None else len(names))
        sql = self._claim_sql.get(key)
        if sql is None:
            sql = _CLAIM.format(where=where)
            if n == 1:  # a scalar subquery: no temporary table of row ids (measured ~10 %)
                sql = sql.replace("WHERE seq IN (", "WHERE seq = (")
            self._claim_sql[key] = sql
            self._claim_sql[(None, key[1])] = _PEEK.format(where=where)
        now = time.time()
        params = (now + self.visibility_timeout_secs, *names, n)
        next_due = self._next_due
        looked = next_due is None or next_due <= now
        if looked:
            peek = self._claim_sql[(None, key[1])]
            due, ready = self._lease_db.conn().execute(peek, (now, *names)).fetchone()
            if due:
                self._promote(now)
            elif not ready:
                self._next_due = None
                return []
        try:
            rows = self._lease_db.write(lambda conn: conn.execute(sql, params).fetchall())
        except sqlite3.IntegrityError:
            # A row broke a CHECK on the columns the claim updates: move every bad row
            # aside and claim again, so one corrupt row never stalls the queue.
            self._db.transaction(quarantine.sweep)
            rows = self._db.write(lambda conn: conn.execute(sql, params).fetchall())
        # When the earliest waiting row is due, as of this claim (None: look next time). A
        # row another process makes wait meanwhile is seen by the next claim that leases.
        if not rows:
            self._next_due = None
        else:
            hint = rows[-1][-1]  # None: nothing waits; not a number: a corrupt row, look
            self._next_due = (float("inf") if hint is None else
                              hint if type(hint) in _NUMBER else None)
        leases = self._leases(rows)
        if not looked and len(rows) < n:
            # Short of n without looking for due rows: another process may have made some
            # due before our cached time (a retry, an expired or given-back lease). Look now,
            # so claim(n) never returns fewer than are available.
            self._next_due = None
            leases += self.claim(n - len(rows), queues)
        return leases

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        self.limits = dict(limits)

    def _claim_limited(self, n: int, where: str, names: tuple[str, ...]) -> list[Lease]:
        now = time.time()
        self._promote(now)
        rows = self._db.transaction(lambda conn: claim_limited(
            conn, self.limits, n, where, names, now, now + self.visibility_timeout_secs,
            _RETURNING))
        self._next_due = None
        return self._leases(rows)

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        return count_per_task(self._db.conn(), list(tasks), time.time())

    def _promote(self, now: float) -> None:
        """Make due rows ready: delayed jobs whose time came and expired leases (those
        that expired before a forward step of the clock, for a visibility timeout after
        it: see :mod:`nuvom_kernel.clock`)."""
        lapsed = self._clock_steps.lapsed_before(now, self.visibility_timeout_secs)

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_PROMOTE, (now, lapsed)).rowcount)

        try:
            self._lease_db.write(run)
        except sqlite3.IntegrityError:
            self._db.transaction(quarantine.sweep)
            self._lease_db.write(run)

    def ack(self, lease: Lease) -> bool:
        return self._fenced_lease("DELETE FROM nuvom_queue WHERE id = ? AND token = ?", (),
                                  lease)

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """One statement (one commit) for a batch of acks: the worker settles finished jobs
        in batches, so this is the drain rate's hot path."""
        return self._fenced_many("DELETE FROM nuvom_queue", (), leases)

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        at = time.time() + max(delay_secs, 0.0)
        if body is not None:
            body = bytes(body)
        visible = at if delay_secs > 0 else None
        done = self._fenced(_RETRY, (at, visible, body), lease)
        if done:
            self._became_waiting(visible)
        return done

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        """Unlease a message that never started, its delivery taken back; visible at once,
        or after ``delay_secs`` (then ``available_at`` moves too: it waits like a delayed
        job, and ``peek_state`` tells a first run from a retry by ``failures``)."""
        if delay_secs > 0:
            at = time.time() + delay_secs
            done = self._fenced_lease(
                "UPDATE nuvom_queue SET token = NULL, visible_at = ?, available_at = ?, "
                "deliveries = max(deliveries - 1, 0) WHERE id = ? AND token = ?", (at, at),
                lease)
        else:
            at = None
            done = self._fenced_lease(
                "UPDATE nuvom_queue SET token = NULL, visible_at = NULL, "
                "deliveries = max(deliveries - 1, 0) WHERE id = ? AND token = ?", (), lease)
        if done:
            self._became_waiting(at)
        return done

    def extend(self, lease: Lease, secs: float) -> bool:
        """Move the lease's expiry to ``now + secs``. ``secs <= 0`` expires it: the next
        claim promotes the row (its delivery stays counted) and waiters are woken."""
        at = time.time() + secs
        done = self._fenced_lease("UPDATE nuvom_queue SET visible_at = ? WHERE id = ? AND "
                                  "token = ?", (at,), lease)
        if done:
            self._lease_moved(at, secs)
        return done

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        """Extend many leases in one commit (a busy worker's heartbeat)."""
        at = time.time() + secs
        done = self._fenced_many("UPDATE nuvom_queue SET visible_at = ?", (at,), leases)
        if any(done):
            self._lease_moved(at, secs)
        return done

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        where, names = _queue_filter(queues)
        sql = ("SELECT count(*) FROM nuvom_queue "
               "WHERE (visible_at IS NULL OR token IS NULL OR visible_at <= ?)" + where)
        return int(self._db.conn().execute(sql, (time.time(), *names)).fetchone()[0])

    def clear(self, queues: Sequence[str] | None = None) -> int:
        where, names = _queue_filter(queues)
        sql = "DELETE FROM nuvom_queue WHERE 1" + where
        return int(self._db.write(lambda conn: conn.execute(sql, names).rowcount,
                                  "clearing the queue"))

    # --- optional primitives --------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Delete the message if it is waiting (ready or delayed) or its lease expired (a
        token whose ``visible_at`` has passed: what a claim takes over, and what
        ``peek_state`` reads as QUEUED). Why the expired lease too: no worker holds it (its
        worker was killed, or gave it up), and refusing it let a job that OOM-killed its
        worker run again up to the delivery limit. One statement under the write lock, so a
        claim takes it first or finds it gone; the old token's ack and extend then find no
        row. A live lease is left to its worker."""
        return bool(self._db.write(lambda conn: conn.execute(
            "DELETE FROM nuvom_queue WHERE id = ? AND (token IS NULL OR visible_at <= ?)",
            (job_id, time.time())).rowcount == 1, "cancelling a queued job"))

    def peek_state(self, job_id: str) -> JobStatus | None:
        """RUNNING while leased (a token whose expiry has not passed), RETRYING while a
        message with failed attempts waits for its time, else QUEUED (an expired lease
        waits for a worker like any ready row); ``None`` if the id is not queued."""
        row = self._db.conn().execute(
            "SELECT token, visible_at, failures FROM nuvom_queue WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        token, visible_at, failures = row
        return row_state(token is not None, visible_at, failures, time.time())

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """One read statement, no write lock: see :mod:`.browse` (states as ``peek_state``
        reads them; rows that break the schema are skipped, left to a claim to
        quarantine)."""
        return browse_page(self._db.conn(), queues, states, after, limit, time.time())

    def peek(self, job_id: str) -> Message | None:
        """One indexed read of the row; a row that breaks the schema reads as absent here
        (the next claim or ``stats`` quarantines it, saying why)."""
        row = self._db.conn().execute(_MESSAGE_BY_ID, (job_id,)).fetchone()
        return None if row is None or _problem(row) is not None else _message(row)

    def stats(self) -> QueueStats:
        """Ready, delayed and leased counts and the oldest ready message's age per queue, in
        one scan, and the quarantined rows. A row that breaks the schema is swept into
        quarantine first (the same scan counts them, so the sweep's write is rare).

        The age runs from when a ready row became due, ``max(created_at, available_at)``
        (its enqueue, or the end of its delay or retry delay: ``retry`` moves
        ``available_at``), as the worker's wait time does: counted from the enqueue, a job
        delayed for a day would read a day old the moment it is due. The oldest is the
        smallest due time, not the head of the claim order (which sorts by ``created_at``)."""
        now = time.time()
        # An expired lease (a token whose visible_at has passed) is ready, not running.
        sql = ("SELECT queue, "
               "total(visible_at IS NULL OR visible_at <= ?1), "
               "total(token IS NULL AND visible_at > ?1), "
               "total(token IS NOT NULL AND visible_at > ?1), "
               "min(CASE WHEN visible_at IS NULL OR visible_at <= ?1 "
               "THEN max(created_at, available_at) END) "
               "FROM nuvom_queue GROUP BY queue ORDER BY queue")
        conn = self._db.conn()
        # Rows that break the schema, looked for apart: inside the GROUP BY the check's
        # typeof(body) put every body into the sort (40,000 jobs of 20 KB: `nuvom status`
        # took 854 MB, and so did every worker exporting metrics); alone, typeof reads the
        # type from each record's header, not its body.
        if conn.execute(f"SELECT 1 FROM nuvom_queue WHERE {quarantine.INVALID_ROW_SQL} "
                        "LIMIT 1").fetchone():
            self._db.transaction(quarantine.sweep)
        rows = conn.execute(sql, (now,)).fetchall()
        stats = QueueStats()
        for queue, ready, delayed, running, due in rows:
            # max(0, ...): a due time ahead of this clock (another host's) is no wait yet
            stats.queues[queue] = QueueCounts(
                ready=int(ready), delayed=int(delayed), running=int(running),
                oldest_ready_age_secs=None if due is None else max(0.0, now - due))
        stats.quarantined = quarantine.describe(conn)
        return stats

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """Store each settlement's record and ack or retry its lease, all in one
        transaction, when ``results`` keeps its records in this file; ``None`` otherwise.

        A settlement lands if its lease's token still holds and its record supersedes the
        stored one; else nothing of it is written (``False``). Per chunk of
        :data:`~nuvom_plugins_sqlite.results.PUT_CHUNK` settlements: one query finds the
        refused ones, then one multi-row upsert, one delete (acks) and one update
        (retries): a batch of 512 is one commit of about seventy statement steps.
        """
        # Each Database's writer is keyed by the file's real path (resolved once, at init:
        # realpath's lstat calls would cost more than settling one job).
        if not isinstance(results, SQLiteResultBackend) or \
                results._db.real_path != self._db.real_path:
            return None
        if not settlements:
            return []
        rows = [encode(s.record) for s in settlements]  # a bad record refuses the batch
        now = time.time()
        retried = [s.retry_in is not None for s in settlements]
        if results.settings.synchronous == "FULL":
            db = results._db  # records (and lease bookkeeping with them) at their level
        elif any(retried):
            db = self._db  # a retry is progress: the queue's level
        else:
            db = self._lease_db

        steps = {id(s) for s in final_steps(settlements)}
        released = 0

        def run(conn: sqlite3.Connection) -> set[int]:
            nonlocal released
            refused: set[int] = set()
            for chunk in _distinct_chunks(settlements):
                params: list[Any] = []
                for i in chunk:
                    lease = settlements[i].lease
                    params += (i, lease.id, lease.token, *fence_key(rows[i]))
                found = conn.execute(_SETTLE_REFUSED[len(chunk)], params).fetchone()[0]
                if found is not None:
                    refused.update(int(i) for i in str(found).split(","))
                landing = [i for i in chunk if i not in refused]
                if not landing:
                    continue
                conn.execute(upsert_sql(len(landing)),
                             [v for i in landing for v in rows[i]])
                acks = [settlements[i].lease.id for i in landing if not retried[i]]
                if acks:
                    conn.execute(_SETTLE_ACK[len(acks)], acks)
                again = [_retry_values(settlements[i], now) for i in landing if retried[i]]
                if again:
                    conn.execute(_SETTLE_RETRY[len(again)], [v for r in again for v in r])
            if steps:
                released = _advance(conn, [s for i, s in enumerate(settlements)
                                           if id(s) in steps and i not in refused])
            return refused

        refused = db.transaction(run, "settling finished jobs")
        if released:
            self.notify()
        landed = [i not in refused for i in range(len(settlements))]
        visible = [_retry_values(s, now)[2] for s, ok, again in
                   zip(settlements, landed, retried, strict=True) if ok and again]
        if None in visible:
            self.notify()
        delayed = [at for at in visible if at is not None]
        if delayed:
            self._waits_until(min(delayed))
        return landed

    # --- workflows (the graph lives in this file: see .workflows) ---------------------------

    def workflow_transaction(self, fn: Callable[[GraphTxn], T],
                             workflows: Sequence[str] = ()) -> T:
        """``fn`` on the workflow tables in one immediate transaction; waiters (in every
        process) are woken if it released steps."""
        txns: list[SQLiteGraphTxn] = []

        def run(conn: sqlite3.Connection) -> T:
            txns[:] = [SQLiteGraphTxn(conn)]
            return fn(txns[0])

        out = self._db.transaction(run)
        if txns and txns[0].released:
            self.notify()
        return out

    def holds(self, lease: Lease) -> bool:
        """The row is still leased with this lease's token (the fence of
        ``advance_workflows``, used when the results live elsewhere)."""
        return self._db.conn().execute(
            "SELECT 1 FROM nuvom_queue WHERE id = ? AND token = ?", (lease.id, lease.token)
        ).fetchone() is not None

    def workflow_step(self, job_id: str, workflow: str | None = None) -> Node | None:
        """One indexed read, no write lock (``Job.get()`` polls it while a step waits)."""
        return SQLiteGraphTxn(self._db.conn()).nodes([job_id]).get(job_id)

    def waiting_steps(self) -> int:
        return int(self._db.conn().execute(
            "SELECT count(*) FROM nuvom_wf_nodes WHERE state = 'WAITING'").fetchone()[0])

    def purge_workflows(self, older_than: float) -> int:
        return int(self._db.transaction(lambda conn: purge_ended(conn, older_than),
                                        "purging ended workflows"))

    def read_workflow(self, workflow_id: str, *, nodes: bool = True) -> WorkflowGraph | None:
        """A plain read (no write lock): ``Workflow.get()`` polls this."""
        txn = SQLiteGraphTxn(self._db.conn())
        return txn.graph(workflow_id) if nodes else txn.head(workflow_id)

    def wait_for_messages(self, timeout: float, generation: int) -> None:
        """Wait until something may have become claimable, or ``timeout`` passes.

        Wake-ups come from this process's pushes (``notify``) and, on Linux, from any
        process's pushes through the wake-up sockets of :mod:`.wakeup` (no polling at all).
        Elsewhere the waiter polls ``PRAGMA data_version`` (it changes when another
        connection commits) every ``data_version_poll_secs``. A wake-up is only a hint: the
        caller claims to find out, and claims after every timeout anyway.
        """
        if self._generation != generation:
            return
        listener = self._waker.listener()
        if listener is not None:
            sock, new = listener
            if not new:  # a new socket heard nothing yet: re-check for work first
                self._waker.wait(sock, timeout)
            return
        self._poll_data_version(timeout, generation)

    def _poll_data_version(self, timeout: float, generation: int) -> None:
        deadline = time.monotonic() + timeout
        conn = self._db.conn()
        seen = getattr(self._seen, "value", None)
        if seen is None or seen[0] != os.getpid():
            seen = None
        step = self.data_version_poll_secs
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if seen is None or seen[1] != version:
                # Something committed since this thread last looked (or this is its first
                # wait, and a commit may have slipped in after its claim): let the caller
                # claim again before sleeping, so no commit is ever missed.
                self._seen.value = (os.getpid(), version)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self._cond:
                if self._generation != generation:
                    return
                self._cond.wait(min(step, remaining))
                if self._generation != generation:
                    return

    # --- helpers --------------------------------------------------------------------------

    def _waits_until(self, at: float) -> None:
        """A row now waits until ``at``: make the next claim that needs it look for due rows
        by then (the claim's cached hint may name a later time)."""
        due = self._next_due
        if due is not None and at < due:
            self._next_due = at

    def _became_waiting(self, visible_at: float | None) -> None:
        """An unleased row is claimable at once (``None``: wake waiters) or from then on."""
        if visible_at is None:
            self.notify()
        else:
            self._waits_until(visible_at)

    def _lease_moved(self, at: float, secs: float) -> None:
        """Leases now expire at ``at``; an expiry brought forward must be seen by claims."""
        self._waits_until(at)
        if secs <= 0:
            self.notify()

    def _fenced(self, sql: str, params: tuple[Any, ...], lease: Lease,
                db: Database | None = None) -> bool:
        full = (*params, lease.id, lease.token)
        db = db or self._db
        return bool(db.write(lambda conn: conn.execute(sql, full).rowcount == 1))

    def _fenced_lease(self, sql: str, params: tuple[Any, ...], lease: Lease) -> bool:
        return self._fenced(sql, params, lease, self._lease_db)

    def _fenced_many(self, head: str, params: tuple[Any, ...],
                     leases: Sequence[Lease]) -> list[bool]:
        """Run ``head`` (a DELETE or UPDATE of lease bookkeeping) for every lease whose
        token still holds, in one statement per :data:`_FENCED_CHUNK` leases and one commit;
        which leases held, in order."""
        if len(leases) <= 1:
            return [self._fenced_lease(f"{head} WHERE id = ? AND token = ?", params, lease)
                    for lease in leases]
        chunks = [leases[i:i + _FENCED_CHUNK] for i in range(0, len(leases), _FENCED_CHUNK)]

        def run(conn: sqlite3.Connection) -> set[tuple[str, str]]:
            hit: set[tuple[str, str]] = set()
            for chunk in chunks:
                pairs = [(lease.id, lease.token) for lease in chunk]
                flat = [value for pair in pairs for value in pair]
                n = len(chunk)
                if conn.execute(_fenced_sql(head, n, all_or_none=True),
                                [*params, *flat, *flat]).rowcount == n:
                    hit.update(pairs)
                else:  # a lease was lost (or listed twice): find out which still hold
                    hit.update(conn.execute(_fenced_sql(head, n), [*params, *flat]))
            return hit

        if len(chunks) == 1:
            hit = self._lease_db.write(run)
        else:
            hit = self._lease_db.transaction(run)
        return [(lease.id, lease.token) in hit for lease in leases]

    def _leases(self, rows: list[tuple[Any, ...]]) -> list[Lease]:
        good: list[tuple[Any, ...]] = []
        bad: list[tuple[int, str]] = []
        for row in rows:
            reason = _problem(row)
            if reason is None:
                good.append(row)
            else:
                bad.append((row[0], reason))
        if bad:
            def move(conn: sqlite3.Connection) -> None:
                for job_id, reason in bad:
                    quarantine.move(conn, job_id, reason)
            self._db.transaction(move)
        # RETURNING has no defined order: restore priority DESC, created_at, insertion.
        if len(good) > 1:
            good.sort(key=lambda r: (-r[3], r[4], r[1]))
        return [Lease(message=_message(row), token=row[11], deliveries=row[7],
                      expires_at=row[6]) for row in good]


def _message(row: tuple[Any, ...]) -> Message:
    """A row in :data:`_NAMES` order (as claimed or peeked) as its message."""
    return Message(id=row[0], body=row[8], queue=row[2], priority=row[3], available_at=row[5],
                   created_at=row[4], task=row[9], failures=row[10])


_NUMBER = (float, int)  # SQLite stores integral REAL values as integers, RETURNING shows it


def _problem(row: tuple[Any, ...]) -> str | None:
    """What makes a row in :data:`_NAMES` order unfit to claim (:func:`quarantine.problem`),
    ``None`` if nothing: the common case checked first, in one expression."""
    if _well_formed(row):
        return None
    return quarantine.problem(dict(zip(_NAMES, row[:12], strict=True)))


def _well_formed(row: tuple[Any, ...]) -> bool:
    """The common case of :func:`quarantine.problem`, in one expression."""
    return (type(row[0]) is str and row[0] != "" and type(row[2]) is str
            and type(row[3]) is int and type(row[4]) in _NUMBER
            and type(row[5]) in _NUMBER and type(row[7]) is int and type(row[8]) is bytes
            and type(row[9]) is str and type(row[10]) is int)


def _distinct_chunks(settlements: Sequence[Settlement]) -> list[list[int]]:
    """Indexes of ``settlements`` cut into chunks of at most ``PUT_CHUNK`` in which no lease
    id or job id repeats: a repeat starts the next chunk, which sees the earlier one's
    writes (its lease acked, its record stored), as if settled one after the other."""
    n = len(settlements)
    if n <= PUT_CHUNK and len({s.lease.id for s in settlements}) == n \
            and all(s.record.job_id == s.lease.id for s in settlements):
        return [list(range(n))]  # the usual batch: one chunk, every id distinct
    chunks: list[list[int]] = []
    chunk: list[int] = []
    ids: set[str] = set()
    for i, s in enumerate(settlements):
        keys = (s.lease.id, s.record.job_id)
        if len(chunk) == PUT_CHUNK or keys[0] in ids or keys[1] in ids:
            chunks.append(chunk)
            chunk, ids = [], set()
        chunk.append(i)
        ids.update(keys)
    if chunk:
        chunks.append(chunk)
    return chunks


def _advance(conn: sqlite3.Connection, steps: Sequence[Settlement]) -> int:
    """Advance the graphs of landed final step outcomes inside settle_many's transaction,
    storing the records of the steps this cancels or skips; how many steps it released."""
    txn = SQLiteGraphTxn(conn)
    doomed = advance(txn, [(s.lease.id, s.record.status) for s in steps])
    rows = [encode(doomed_record(node)) for node in doomed]
    for i in range(0, len(rows), PUT_CHUNK):
        chunk = rows[i:i + PUT_CHUNK]
        conn.execute(upsert_sql(len(chunk)), [v for row in chunk for v in row])
    return txn.released


def _retry_values(s: Settlement, now: float) -> tuple[Any, ...]:
    """(id, available_at, visible_at, body) of a settled retry, as :meth:`retry` sets them."""
    delay = max(s.retry_in or 0.0, 0.0)
    at = now + delay
    return (s.lease.id, at, at if delay > 0 else None,
            None if s.body is None else bytes(s.body))
