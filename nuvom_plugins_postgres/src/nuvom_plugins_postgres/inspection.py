"""What an operator reads and does to :class:`~nuvom_plugins_postgres.queue.PostgresQueue`
without claiming: counts (``qsize``, ``stats``), a job's state, its message and a page of
the queue (``peek_state``, ``peek``, ``browse``), and ``cancel`` and ``clear``.

Why apart from push, claim and the lease bookkeeping: none of this is on a job's path
through a worker. Each call is one statement, each read a plain ``SELECT`` (no lock, no
write), and every state is read on the server's clock by the expressions of
:mod:`.queries` (``_STATE``, ``_LIVE_LEASE``), so ``peek_state``, ``browse`` and ``stats``
cannot disagree about a job. ``stats`` adds the quarantined copies and the table-health
warnings of :mod:`.hygiene`.

:class:`QueueInspection` is a base class of the queue (a mixin of the same object).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from nuvom_kernel.backends import QueueCounts, QueueStats, queue_names
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.views import QueuedJob, quarantine_line
from nuvom_plugins_postgres.browse import page_statement, queued_job
from nuvom_plugins_postgres.hygiene import TableHygiene
from nuvom_plugins_postgres.results import storable
from nuvom_plugins_postgres.rows import _message

__all__ = ["QueueInspection"]


class QueueInspection(TableHygiene):
    """The operator's side of :class:`~nuvom_plugins_postgres.queue.PostgresQueue` (see the
    module docstring)."""

    def peek_state(self, job_id: str) -> JobStatus | None:
        """RUNNING while leased and the lease's deadline has not passed; RETRYING while a
        row with failed attempts waits out its delay; else QUEUED — an expired lease
        included, before or after a tick recovers it (its holder may be dead or stopped, and
        ``extend(lease, 0)`` makes a job read QUEUED at once); ``None`` if not queued (as
        for an id no push stores: see :func:`storable`)."""
        if not storable(job_id):
            return None
        row = self._store.row(self._q.peek, (job_id,))
        return None if row is None else JobStatus(str(row[0]))

    def peek(self, job_id: str) -> Message | None:
        """One plain ``SELECT`` of the row (no lock, no write): a row holds its message in
        every state, and ack and cancel delete it, so no row means not queued (nor can an id
        no push stores be: a NUL or lone surrogate, which psycopg could not even send)."""
        if not storable(job_id):
            return None
        row = self._store.row(self._q.message, (job_id,))
        return None if row is None else _message(row)

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """One ``SELECT`` (``queries.BROWSE``): filtered by queue, state and the keyset
        cursor, ordered and limited by the server; no lock, no write, no body read. States
        are ``peek_state``'s, on the server's clock (an expired lease reads QUEUED before a
        tick recovers it, a due retry QUEUED before a tick promotes it).

        Why no index serves it: see :mod:`nuvom_plugins_postgres.browse`."""
        queues = queue_names(queues)
        found = page_statement(self._q, queues, states, after, limit)
        if found is None:
            return []
        query, params = found
        return [queued_job(r) for r in self._store.rows(query, params)]

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        """Rows not under a live lease: ready, delayed, and expired leases alike."""
        queues = queue_names(queues)
        if queues is not None and not queues:
            return 0
        query, params = ((self._q.qsize_all, []) if queues is None
                         else (self._q.qsize_some, [list(queues)]))
        return int(self._store.row(query, params)[0])  # type: ignore[index]

    def clear(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        if queues is not None and not queues:
            return 0
        query, params = ((self._q.clear_all, []) if queues is None
                         else (self._q.clear_some, [list(queues)]))
        return self._store.changed(query, params)

    # --- optional primitives ----------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Delete the row if it waits (ready, held or delayed) or its lease expired by the
        database's clock, recovered by a tick or not yet (``queries.CANCEL``): no worker
        holds such a job, and refusing it let a job that OOM-killed its worker run again up
        to the delivery limit. A live lease is refused: its worker decides. One statement,
        atomic against a concurrent claim; once the row is gone the old lease's ack, extend
        and settle find nothing. Nothing to notify: a deletion makes no work available."""
        if not storable(job_id):  # never pushed (see peek): nothing to cancel
            return False
        return self._store.changed(self._q.cancel, (job_id,)) == 1

    def stats(self) -> QueueStats:
        """Per queue: ready (an expired lease and a due scheduled row included), delayed
        (not yet due), running (a live lease), and the oldest ready row's age, counted from
        when it became due (its enqueue, or the end of its delay or retry delay), as the
        worker's wait time is: from the enqueue, a job delayed for a day would read a day
        old the moment it is due. One scan (``STATS``)."""
        rows = self._store.rows(self._q.stats)
        stats = QueueStats()
        for queue, ready, delayed, running, age in rows:
            # max(0, ...): a due time ahead of the server's clock (a producer's) is no wait
            stats.queues[queue] = QueueCounts(
                ready=ready, delayed=delayed, running=running,
                oldest_ready_age_secs=None if age is None else max(0.0, age))
        stats.quarantined = self._quarantined()
        stats.warnings = self.hygiene_warnings()
        return stats

    def _quarantined(self, limit: int = 100) -> list[str]:
        """One line per copy in the quarantine (``copy_to_quarantine``), oldest first, for
        ``nuvom status``; past ``limit``, one line with how many more."""
        rows = self._store.rows(self._q.quarantined, (limit + 1,))
        lines = []
        for seq, job_id, queue, reason, at in rows[:limit]:
            lines.append(quarantine_line(job_id, queue, at, reason,
                                         f"the row is kept as {self.schema}.quarantine.seq={seq}"))
        if len(rows) > limit:
            [(total,)] = self._store.rows(self._q.quarantine_size)
            lines.append(f"... and {total - limit} more rows in {self.schema}.quarantine")
        return lines
