"""What an operator reads and does to :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue`
without claiming: counts (``qsize``, ``stats``), a job's state, its message and a page of
the queue (``peek_state``, ``peek``, ``browse``), and ``cancel`` and ``clear``.

Why apart from push, claim and the lease bookkeeping: none of this is on a job's path through
a worker. The reads take no write lock (one statement on this thread's connection); a row
that breaks the schema reads as absent (a claim or ``stats`` quarantines it, saying why:
:mod:`.quarantine`). A row with a token counts as running until its lease's expiry: see
the queue's module docstring.

:class:`QueueInspection` is a base class of the queue (a mixin of the same object).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from nuvom_kernel.backends import QueueCounts, QueueStats, queue_names
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.views import QueuedJob
from nuvom_plugins_sqlite import quarantine
from nuvom_plugins_sqlite.base import QueueBase
from nuvom_plugins_sqlite.browse import browse as browse_page
from nuvom_plugins_sqlite.browse import row_state
from nuvom_plugins_sqlite.rows import _NAMES, _message, _problem, _queue_filter

__all__ = ["QueueInspection"]

_MESSAGE_BY_ID = f"SELECT {', '.join(_NAMES)} FROM nuvom_queue WHERE id = ?"


class QueueInspection(QueueBase):
    """The operator's side of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue` (see the
    module docstring)."""


    def qsize(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        where, names = _queue_filter(queues)
        sql = ("SELECT count(*) FROM nuvom_queue "
               "WHERE (visible_at IS NULL OR token IS NULL OR visible_at <= ?)" + where)
        return int(self._db.conn().execute(sql, (time.time(), *names)).fetchone()[0])

    def clear(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
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
        queues = queue_names(queues)
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
