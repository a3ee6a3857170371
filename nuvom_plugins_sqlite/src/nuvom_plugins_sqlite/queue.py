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

This module holds the queue's life (open, close, wake-ups), push, claim and its workflow
calls. The rest is split by what it does, each a base class of :class:`SQLiteJobQueue` (a
mixin of the same object, so no call pays an extra hop): ack, retry, release and extend in
:mod:`.leases`; ``settle_many`` (outcomes stored and leases acked in one transaction) in
:mod:`.settle`; the operator's reads, ``cancel`` and ``clear`` in :mod:`.inspection`. A
row's columns and the message it holds are :mod:`.rows`'.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from nuvom_kernel.backends import BackendContext, Capabilities
from nuvom_kernel.clock import StepWatch
from nuvom_kernel.models import Lease, Message
from nuvom_kernel.workflow.graph import GraphTxn, Node, WorkflowGraph
from nuvom_plugins_sqlite import quarantine
from nuvom_plugins_sqlite.connection import Database
from nuvom_plugins_sqlite.insert import INSERT, insert_batch, message_row
from nuvom_plugins_sqlite.inspection import QueueInspection
from nuvom_plugins_sqlite.leases import LeaseOperations
from nuvom_plugins_sqlite.limits import claim_limited, count_per_task
from nuvom_plugins_sqlite.rows import _NUMBER, _RETURNING, _message, _problem, _queue_filter
from nuvom_plugins_sqlite.settings import SQLiteSettings
from nuvom_plugins_sqlite.settle import QueueSettling
from nuvom_plugins_sqlite.wakeup import WAKEUPS_SUPPORTED, Waker
from nuvom_plugins_sqlite.workflows import SQLiteGraphTxn, purge_ended

T = TypeVar("T")

_ENQUEUEING = "enqueueing jobs"  # what push does, for a DatabaseFullError's message

__all__ = ["SQLiteJobQueue"]

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


class SQLiteJobQueue(QueueInspection, QueueSettling, LeaseOperations):
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

