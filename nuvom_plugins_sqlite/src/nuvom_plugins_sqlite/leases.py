"""Lease bookkeeping of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue`: ack, retry,
release, extend and the copy to quarantine, each matched by the lease's ``id`` *and*
``token``.

Why apart from the claim: a claim picks rows and hands out tokens; everything here only
changes a row a claim leased, fenced by its token, so a worker whose lease expired and was
taken over changes nothing and gets ``False`` (``docs/architecture.md``, "Leases and
fencing"). Batches (``ack_many``, ``extend_many``) match many (id, token) pairs in one
statement per :data:`_FENCED_CHUNK` leases and one commit.

:class:`LeaseOperations` is a base class of the queue (a mixin of the same object), so no
call goes through an extra hop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom_kernel.models import Lease
from nuvom_plugins_sqlite.base import QueueBase
from nuvom_plugins_sqlite.quarantine import COPY_LEASED_SQL

if TYPE_CHECKING:
    from nuvom_plugins_sqlite.connection import Database

__all__ = ["LeaseOperations"]

_RETRY = ("UPDATE nuvom_queue SET token = NULL, available_at = ?, visible_at = ?, "
          "body = coalesce(?, body), failures = failures + 1 WHERE id = ? AND token = ?")

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


class LeaseOperations(QueueBase):
    """Ack, retry, release and extend of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue`
    (see the module docstring)."""

    def ack(self, lease: Lease) -> bool:
        return self._fenced_lease("DELETE FROM nuvom_queue WHERE id = ? AND token = ?", (),
                                  lease)

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """One statement (one commit) for a batch of acks: the worker settles finished jobs
        in batches, so this is the drain rate's hot path."""
        return self._fenced_many("DELETE FROM nuvom_queue", (), leases)

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        """The leased row as stored, copied into ``nuvom_quarantine`` (what a claim does
        with a row that breaks the schema's checks, less the delete: the kernel acks it
        once it has recorded the job FAILED)."""
        return self._fenced_lease(COPY_LEASED_SQL, (reason, time.time()), lease)

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

