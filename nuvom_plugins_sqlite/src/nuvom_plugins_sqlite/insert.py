"""Storing a pushed batch: multi-row ``INSERT`` statements, run on a second thread while the
caller reads the next chunk.

Why a second thread: Python's ``sqlite3`` lets go of the GIL while SQLite steps a statement
(the b-tree inserts: about half of an insert's time), and a ``.map()``'s messages are built
as the push reads them (``QueueBackend.streams_push``), so the kernel can encode one chunk
while SQLite stores the one before, on the machine's other core. The batch is still one
transaction of the caller's: the thread only runs statements the caller hands it, one at a
time, and the caller touches the connection again only once the last one is done.
"""

from __future__ import annotations

import operator
import os
import queue
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import Message

__all__ = ["INSERT", "INSERT_CHUNK", "chunk_rows", "insert_batch", "message_row"]

# An id already queued (or earlier in the batch) is skipped: push is idempotent per job id.
INSERT = ("INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at, "
          "visible_at, body, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
          "ON CONFLICT (id) DO NOTHING")
# After a batch insert that skipped some ids: the rows it stored are the newest ones (a rowid
# table gives each insert max(seq) + 1, and the batch's transaction holds the write lock).
_NEWEST = "SELECT id FROM nuvom_queue ORDER BY seq DESC LIMIT ?"

#: Rows per multi-row INSERT of a batch, where SQLite takes 8 values a row in one statement
#: (3.32 and later: 32,766 parameters). Measured on ``.map()`` of 10,000 with the second
#: thread: 100 rows 93k jobs/s, 250 100k, 500 117k, 1,000 113k.
INSERT_CHUNK = 500
_INSERT_HEAD, _INSERT_TAIL = INSERT.split(" VALUES ")
_ROW_VALUES, _ON_CONFLICT = _INSERT_TAIL.split(" ON CONFLICT ")
_INSERT_ROWS: dict[tuple[int, bool], str] = {}
#: The fields of a row (:func:`message_row`) that every job of a ``.map()`` shares: queue,
#: priority, ``available_at``, ``visible_at``, task; and the ones it does not.
_SHARED_FIELDS = operator.itemgetter(1, 2, 4, 5, 7)
_OWN_FIELDS = operator.itemgetter(0, 3, 6)


def message_row(m: Message, now: float) -> tuple[Any, ...]:
    """The values of ``m``'s row, in :data:`INSERT`'s order."""
    body = m.checked_body()
    available = float(m.available_at)
    # Ready at once (NULL), or waiting in the waiting index until it is due. ``failures``
    # starts at 0 (the column default): the queue counts them from the push on.
    return (m.id, str(m.queue), int(m.priority), float(m.created_at), available,
            available if available > now else None, body, str(m.task))


def chunk_rows(conn: sqlite3.Connection) -> int:
    """Rows per statement on ``conn``: :data:`INSERT_CHUNK`, or fewer where the SQLite
    library takes fewer parameters per statement."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11 and later
    limit = (getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None
             else 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999)
    return min(INSERT_CHUNK, limit // 8)


def _insert_rows_sql(n: int, shared: bool = False) -> str:
    """``INSERT`` with ``n`` rows of values (one statement step instead of ``n``; measured
    19.9 → 14.9 µs per row against ``executemany``).

    ``shared``: rows that differ only in id, ``created_at`` and body bind the other five
    values once, from a ``VALUES`` list of three per row (measured: 3.6 → 2.8 µs of CPU per
    row inserted). ``WHERE true`` is how SQLite tells an upsert's ``ON CONFLICT`` from a
    join's ``ON``."""
    sql = _INSERT_ROWS.get((n, shared))
    if sql is None:
        if shared:
            sql = (f"{_INSERT_HEAD} SELECT column1, ?, ?, column2, ?, ?, column3, ? FROM "
                   f"(VALUES {', '.join(['(?, ?, ?)'] * n)}) WHERE true "
                   f"ON CONFLICT {_ON_CONFLICT}")
        else:
            sql = (f"{_INSERT_HEAD} VALUES {', '.join([_ROW_VALUES] * n)} "
                   f"ON CONFLICT {_ON_CONFLICT}")
        _INSERT_ROWS[(n, shared)] = sql
    return sql


def _statement(rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """The multi-row ``INSERT`` of ``rows`` and its parameters. SQLite inserts a statement's
    rows in order, so an id repeated in a batch is skipped as it was row by row."""
    shared = set(map(_SHARED_FIELDS, rows))
    if len(shared) == 1:
        return (_insert_rows_sql(len(rows), shared=True),
                [*shared.pop(), *(value for own in map(_OWN_FIELDS, rows) for value in own)])
    return _insert_rows_sql(len(rows)), [value for row in rows for value in row]


def insert_batch(conn: sqlite3.Connection, messages: Sequence[Message], now: float
                 ) -> tuple[list[tuple[Any, ...]], list[bool]]:
    """Insert ``messages`` (inside the caller's transaction), read :data:`INSERT_CHUNK` at a
    time; in a large batch each chunk's statement runs on a second thread while the next
    chunk is read.

    :returns: the rows, and which of them were stored, in order.
    """
    rows: list[tuple[Any, ...]] = []
    stored = 0
    size = chunk_rows(conn)
    # A thread pays for itself from four statements on (measured, jobs/s, the thread against
    # none: 1,000 rows 92k vs 101k, 2,000 99k vs 94k, 10,000 112k vs 80k), and on two CPUs.
    threaded = len(messages) > 3 * size and not _one_cpu()
    with _Statements(conn, threaded=threaded) as statements:
        for start in range(0, len(messages), size):
            chunk = [message_row(m, now) for m in messages[start:start + size]]
            rows += chunk
            stored += statements.run(*_statement(chunk))
        stored += statements.wait()
    if stored == len(rows):
        return rows, [True] * len(rows)
    new = {job_id for (job_id,) in conn.execute(_NEWEST, (stored,))}
    seen: set[str] = set()
    result = []
    for values in rows:  # the first of a repeated id is the one stored
        result.append(values[0] in new and values[0] not in seen)
        seen.add(values[0])
    return rows, result


def _one_cpu() -> bool:
    """Whether this process may run on one CPU only: a second thread would then only take
    turns with the caller."""
    try:
        return len(os.sched_getaffinity(0)) < 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) < 2


class _Statements:
    """A thread that runs the statements it is handed on ``conn``, one at a time, in order
    (``threaded=False``: each runs on the caller's thread as it is handed over).

    The hand-over waits until the thread has started the statement: binding its values
    needs the GIL, which the caller, busy reading the next chunk, would otherwise keep for up
    to the interpreter's switch interval (5 ms) every time. SQLite's step then lets the GIL
    go, and the caller goes on.
    """

    def __init__(self, conn: sqlite3.Connection, *, threaded: bool) -> None:
        self._conn = conn
        self._todo: queue.SimpleQueue[tuple[str, list[Any]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        self._started = threading.Semaphore(0)
        self._pending = False
        self._thread = threading.Thread(target=self._serve, name="nuvom-sqlite-insert",
                                        daemon=True) if threaded else None

    def __enter__(self) -> _Statements:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread once its statement (if any) is done: whatever the caller does
        next with the connection (commit, roll back) must not overlap it."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join()

    def _serve(self) -> None:
        while (item := self._todo.get()) is not None:
            self._started.release()
            try:
                self._done.put(self._conn.execute(*item).rowcount)
            except BaseException as exc:  # the caller raises it
                self._done.put(exc)

    def run(self, sql: str, values: list[Any]) -> int:
        """Start ``sql`` once the statement before it is done; return the row count of
        that one (0 if there was none), or, not threaded, of this one."""
        if self._thread is None:
            return self._conn.execute(sql, values).rowcount
        count = self.wait()
        self._todo.put((sql, values))
        self._pending = True
        self._started.acquire()
        return count

    def wait(self) -> int:
        """The row count of the statement started last, once it is done (0 if none is).

        :raises sqlite3.Error: the statement failed.
        """
        if not self._pending:
            return 0
        self._pending = False
        done = self._done.get()
        if isinstance(done, BaseException):
            raise done
        return done
