"""Listing queued messages without claiming them (:meth:`SQLiteJobQueue.browse`).

One read statement, so a page is one consistent snapshot and takes no write lock. Filtered,
ordered and limited in SQL: ``ORDER BY created_at, id LIMIT n``, paged on with the keyset
``created_at > ? OR (created_at = ? AND id > ?)``. ``created_at`` is a REAL column (an
8-byte double; an integral value comes back as the same double), so the cursor's
``repr(float)`` binds back as exactly the stored value and ties at a page boundary page on
by id, compared as SQLite's BINARY collation does: UTF-8 bytes, the order of Python's
``str`` comparison.

Why no index on ``(created_at, id)``: every push and ack would pay for one more b-tree on the
hot path, for an operator's command. A page is a scan of the table instead, kept cheap: the
scan reads only columns stored before the body (the body, and ``task`` and ``failures``
after it, may sit in overflow pages) and keeps the best ``n`` row ids in a sorter; only the
page's rows are then read whole. Measured on 100,000 messages of 600 bytes (a 73 MB file):
55-60 ms a page, whatever its place, queue filter or size up to 1,000; with 8 KB bodies each
row fills about one table page of its own, and a page costs about 250 ms.

What is listed is what :meth:`SQLiteJobQueue.peek_state` reports: rows of ``nuvom_queue``
only. Quarantined rows live in ``nuvom_quarantine``, and a workflow step waiting for its
parents is a row of ``nuvom_wf_nodes`` until it is released, so neither is a queued message.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob, parse_cursor, queued_state
from nuvom_plugins_sqlite.quarantine import INVALID_ROW_SQL

__all__ = ["browse", "row_state"]

_NUMBER = (float, int)

# Per state, the rows peek_state reads as it (row_state in SQL; each binds ``now`` once). A
# lease is a token; its deadline, like a delay's end, is ``visible_at``. The three are
# disjoint and cover every row.
_STATE_SQL = {
    JobStatus.RUNNING: "(token IS NOT NULL AND visible_at > ?)",
    JobStatus.RETRYING: "(token IS NULL AND visible_at > ? AND failures <> 0)",
    JobStatus.QUEUED: "(visible_at IS NULL OR visible_at <= ? OR "
                      "(token IS NULL AND failures = 0))",
}

# The page's row ids first (the subquery's sorter holds created_at, id and seq per candidate),
# then those rows whole, each with whether it is well formed (typeof() reads a column's type
# from the record header: no body is read).
#
# A row that breaks the schema's types (an external tool, a hand edit) is never decoded: a
# claim or ``stats`` quarantines it, saying why; browse stays a read and skips it. Checking
# every row in the scan tripled a page's cost (twelve typeof() calls a row), so the scan
# checks nothing ({where} only) and the page's rows say whether they are sound; only a page
# that holds a damaged row is read again with the check in the scan ({checked}), so the page
# is still full. The check is the claim path's own (quarantine.INVALID_ROW_SQL).
_PAGE = """
SELECT id, task, queue, priority, created_at, available_at, visible_at, token IS NOT NULL,
       failures, deliveries, {invalid}
FROM nuvom_queue
WHERE seq IN (SELECT seq FROM nuvom_queue WHERE 1{checked}{where}
              ORDER BY created_at, id LIMIT ?)
ORDER BY created_at, id"""


def row_state(leased: bool, visible_at: Any, failures: Any, now: float) -> JobStatus:
    """A stored row's state, as ``peek_state`` and ``browse`` report it: RUNNING while a
    token holds a lease whose deadline (``visible_at``) has not passed, RETRYING while an
    unleased row with failed attempts waits for its time, else QUEUED (ready, an expired
    lease, or a first run waiting for ``available_at``)."""
    due = visible_at if type(visible_at) in _NUMBER else 0.0  # damaged: never waiting
    return queued_state(due if leased else None, due, failures, now)


def _page_filter(queues: Sequence[str] | None, states: Collection[JobStatus] | None,
                 after: str | None, now: float) -> tuple[str, list[Any]] | None:
    """The page's ``AND ...`` terms and their parameters; ``None``: nothing can match."""
    terms: list[str] = []
    params: list[Any] = []
    if queues is not None:
        names = list(dict.fromkeys(queues))
        if not names:
            return None
        terms.append(f"queue IN ({', '.join('?' * len(names))})")
        params += names
    if after is not None:
        created_at, job_id = parse_cursor(after, made_by="QueuedJob.cursor")
        terms.append("(created_at > ? OR (created_at = ? AND id > ?))")
        params += [created_at, created_at, job_id]
    if states is not None:
        wanted = [s for s in _STATE_SQL if s in set(states)]
        if not wanted:
            return None
        if len(wanted) < len(_STATE_SQL):
            terms.append("(" + " OR ".join(_STATE_SQL[s] for s in wanted) + ")")
            params += [now] * len(wanted)
    where = "".join(f" AND {t}" for t in terms)
    return where, params


def browse(conn: sqlite3.Connection, queues: Sequence[str] | None,
           states: Collection[JobStatus] | None, after: str | None, limit: int,
           now: float) -> list[QueuedJob]:
    """One page of ``nuvom_queue`` on ``conn`` (a read), states as of ``now`` (the clock
    the queue stamps ``created_at``, delays and lease deadlines with).

    :raises ValueError: ``after`` is not a :attr:`QueuedJob.cursor`.
    """
    query = _page_filter(queues, states, after, now)  # the cursor is checked before limit
    if query is None or limit <= 0:
        return []
    where, params = query
    rows = conn.execute(_PAGE.format(invalid=INVALID_ROW_SQL, checked="", where=where),
                        (*params, limit)).fetchall()
    if any(row[-1] for row in rows):  # a damaged row: the page again, without such rows
        checked = f" AND NOT {INVALID_ROW_SQL}"
        rows = conn.execute(_PAGE.format(invalid="0", checked=checked, where=where),
                            (*params, limit)).fetchall()
    jobs = []
    for job_id, task, queue, priority, created_at, available_at, visible_at, leased, \
            failures, deliveries, _ in rows:
        state = row_state(bool(leased), visible_at, failures, now)
        jobs.append(QueuedJob(
            id=job_id, task=task, queue=queue, priority=priority, state=state,
            created_at=float(created_at), available_at=float(available_at),
            failures=failures, deliveries=deliveries,
            lease_expires_at=float(visible_at) if state is JobStatus.RUNNING else None))
    return jobs
