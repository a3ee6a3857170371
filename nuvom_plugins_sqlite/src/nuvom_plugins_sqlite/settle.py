"""``settle_many`` of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue`: a batch of
outcomes stored and their leases acked or retried in one transaction.

When the result backend is a :class:`~nuvom_plugins_sqlite.results.SQLiteResultBackend` on
the same file, there is then no window in which a job is recorded finished but still queued,
and one commit serves the whole batch. Why apart from the lease bookkeeping of
:mod:`.leases`: this path spans both backends' tables (records, leases and, for workflow
steps, the graph of :mod:`.workflows`), with statements of its own per chunk of
:data:`~nuvom_plugins_sqlite.results.PUT_CHUNK` settlements.

:class:`QueueSettling` is a base class of the queue (a mixin of the same object), so the
settler's call goes through no extra hop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from nuvom_kernel.backends import ResultBackend
from nuvom_kernel.models import Settlement
from nuvom_kernel.workflow.graph import advance, doomed_record
from nuvom_kernel.workflow.settle import final_steps
from nuvom_plugins_sqlite.base import QueueBase
from nuvom_plugins_sqlite.results import (
    PUT_CHUNK,
    SQLiteResultBackend,
    encode,
    fence_key,
    fence_sql,
    upsert_sql,
)
from nuvom_plugins_sqlite.workflows import SQLiteGraphTxn

__all__ = ["QueueSettling"]

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


class QueueSettling(QueueBase):
    """``settle_many`` of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue` (see the module
    docstring)."""

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
