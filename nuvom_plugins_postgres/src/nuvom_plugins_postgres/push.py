"""``push`` of :class:`~nuvom_plugins_postgres.queue.PostgresQueue`: messages checked against
what PostgreSQL stores, sent in chunks (pipelined on the pool, one statement on the caller's
connection inside :func:`nuvom_plugins_postgres.transaction`), their times relative to the
server's clock (``queries.PUSH``).

Why apart from the claim side: a push is the producer's path (``.delay()``, ``.map()``),
with concerns of its own: refusing a message the server cannot store with an error naming
the job (:func:`_unstorable`), the uniform and ``PUSH_NEW`` statement variants, and learning
the offset of the server's clock. :class:`Pushing` is a base class of the queue (a mixin of
the same object), so a push goes through no extra hop.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from nuvom_kernel.clock import relearned_offset
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.models import Message
from nuvom_kernel.task import PRIORITY_MAX, PRIORITY_MIN
from nuvom_kernel.values import MAX_ETA
from nuvom_plugins_postgres import queries
from nuvom_plugins_postgres.base import QueueBase
from nuvom_plugins_postgres.queries import REF_TOLERANCE
from nuvom_plugins_postgres.results import storable
from nuvom_plugins_postgres.store import unreachable
from nuvom_plugins_postgres.txn import caller_cursor

__all__ = ["AVAILABLE_AT_MAX", "Pushing"]

log = logging.getLogger("nuvom.postgres")

#: The priorities the ``integer`` column ``priority`` holds, and the latest ``available_at``
#: a push stores (9999-12-31 23:59:59 UTC: a ``timestamptz`` ends in year 294276, Python's
#: ``datetime`` in 9999): the kernel's own bounds for ``apply_async``, which are these
#: columns'. Checked again here for messages built by another producer.
AVAILABLE_AT_MAX = MAX_ETA


def _unstorable(ids: Sequence[str], queues: Sequence[str], priorities: Sequence[int],
                available: Sequence[float], tasks: Sequence[str]) -> EnqueueError | None:
    """The refusal of the first message PostgreSQL cannot store, ``None`` if all fit.

    Why before the INSERT: the server's own errors (``integer out of range``, ``timestamp
    out of range``, psycopg's ``cannot contain NUL (0x00) bytes`` and the
    ``UnicodeEncodeError`` of a lone surrogate) name no job and reach the caller as advice
    to check free space. Why these checks: the whole batch is tested with
    ``min``/``max``/``sum`` over lists the push builds anyway and one :func:`storable` per
    joined text column (C loops, no regex; the UTF-8 check only for non-ASCII text), and
    only a failing batch is walked message by message to name the culprit. ``sum`` catches
    a NaN, which ``max`` may skip over.
    """
    total = sum(available)
    if (min(priorities) >= PRIORITY_MIN and max(priorities) <= PRIORITY_MAX
            and max(available) <= AVAILABLE_AT_MAX and total == total
            and storable("".join(ids)) and storable("".join(queues))
            and storable("".join(tasks))):
        return None
    for job_id, queue, priority, at, task in zip(ids, queues, priorities, available, tasks,
                                                 strict=True):
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            problem = (f"priority {priority} is outside the range PostgreSQL's integer "
                       f"column holds ({PRIORITY_MIN} to {PRIORITY_MAX}); use a priority "
                       "within it")
        elif not at <= AVAILABLE_AT_MAX:
            problem = (f"available_at {at!r} (epoch seconds: now plus delay_secs) is past "
                       f"the latest time the postgres queue stores ({AVAILABLE_AT_MAX:.0f}, "
                       "9999-12-31 23:59:59 UTC); use a shorter delay_secs")
        else:
            bad = [(field, value) for field, value in (("job id", job_id),
                                                       ("queue name", queue),
                                                       ("task name", task))
                   if not storable(value)]
            if not bad:
                continue
            problem = _text_problem(*bad[0])
        return EnqueueError(f"cannot enqueue job {job_id!r} on the postgres queue: {problem}. "
                            "Nothing of this push was stored.")
    return None  # pragma: no cover - the batch test failed, so some message does


def _text_problem(field: str, value: str) -> str:
    """Why a PostgreSQL text column cannot store ``value`` (see :func:`storable`)."""
    if "\x00" in value:
        return (f"its {field} {value!r} contains a NUL character (\\x00), which a "
                f"PostgreSQL text column cannot store; remove it from the {field}")
    return (f"its {field} {value!r} contains a lone surrogate (a code point from \\ud800 "
            "to \\udfff without its pair, as undecodable bytes read with surrogateescape "
            "give), which is not UTF-8 text a PostgreSQL text column can store; use a "
            f"{field} of valid Unicode text")


def _push_params(messages: Sequence[Message], clock: float, ref: float | None
                 ) -> tuple[bool, list[Any]]:
    """Whether the batch is uniform (see ``queries.PUSH_UNIFORM``), and the parameters of
    the matching statement, the number of messages last. ``clock``: this process's
    ``time.time()`` at the push, which the messages' times are sent relative to (see
    ``queries.PUSH``); ``ref``: the server's clock estimated at that reading, or ``None``.

    :raises EnqueueError: a message PostgreSQL cannot store (see :func:`_unstorable`).
    """
    n = len(messages)
    bodies = [m.checked_body() for m in messages]  # first: it names a message of no id
    queues = [m.queue for m in messages]
    priorities = [m.priority for m in messages]
    available = [float(m.available_at) for m in messages]
    tasks = [m.task for m in messages]
    ids = [m.id for m in messages]
    refused = _unstorable(ids, queues, priorities, available, tasks)
    if refused is not None:
        raise refused
    ages = [clock - float(m.created_at) for m in messages]
    if queues.count(queues[0]) == n and priorities.count(priorities[0]) == n \
            and available.count(available[0]) == n and tasks.count(tasks[0]) == n:
        return True, [ref, ids, ages, bodies, queues[0], priorities[0],
                      available[0] - clock, tasks[0], n]
    return False, [ref, ids, queues, priorities, ages, [a - clock for a in available], tasks,
                   bodies, n]


class _RepeatedId(Exception):
    """An id repeats within a batch pushed with ``PUSH_NEW`` (see ``_push_chunks``)."""


class Pushing(QueueBase):
    """``push`` of :class:`~nuvom_plugins_postgres.queue.PostgresQueue` (see the module
    docstring)."""

    #: Messages per statement of a pipelined push (see :meth:`push`).
    push_chunk = 1000
    #: Pushes of up to this many messages use ``queries.PUSH`` (``ON CONFLICT``), larger
    #: ones ``PUSH_NEW``. Why: ``PUSH_NEW`` saves ~3.5 µs a row, but its transaction, which
    #: plans its probes as index lookups (``queries.INDEX_PROBES``), costs a few hundred µs
    #: more than one autocommitted statement: a push of 2 took 825 µs with it, 476 without;
    #: the two were even between 300 (12.4 and 12.7 µs a job) and 1,000 (11.7 and 10.3).
    small_push = 250

    def push(self, messages: Sequence[Message]) -> list[bool]:
        """All messages in one transaction (all or none), duplicates skipped by the primary
        key; on the caller's connection inside :func:`nuvom_plugins_postgres.transaction`.

        Why chunks in pipeline mode on the pool: the server inserts one chunk while this
        process encodes the next, so encoding costs no wall time after the first chunk; the
        chunks run inside one ``BEGIN … COMMIT``, sent without waiting, and the push returns
        after the (durable) ``COMMIT`` answered. On the caller's connection the push stays
        one statement: its transaction is the caller's, which a ``BEGIN`` or savepoint of
        ours must not change.
        """
        if not messages:
            return []
        if len(messages) == 1:
            return [self._push_one(messages[0])]
        # This process's clock and the server's estimated from it: the messages' times go as
        # offsets from it (queries.PUSH); a later chunk reads its own (_push_chunks).
        clock, ref = self._clock()
        try:
            caller = caller_cursor(self._store.identity, self._store.server)
            if caller is not None:
                uniform, params = _push_params(messages, clock, ref)
                query = self._q.push_uniform if uniform else self._q.push
                summaries = [caller.execute(query, params).fetchone()]
                chunks: list[Sequence[Message]] = [messages]
            elif len(messages) <= self.small_push:
                chunks, summaries = self._run(lambda c: self._push_chunks(
                    c, messages, self._q.push, self._q.push_uniform, clock, ref))
            else:
                chunks, summaries = self._run(
                    lambda c: self._push_new_first(c, messages, clock, ref))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unreachable(self.settings.dsn, exc) from exc
        after = time.time()
        stored: list[bool] = []
        soonest: float | None = None
        base: float | None = None
        for chunk, summary in zip(chunks, summaries, strict=True):
            count, new_ids, due, used = summary  # type: ignore[misc]
            if base is None and used is not None:
                base = self._learn_skew(clock, after, ref, used)
            if due is not None:
                soonest = due if soonest is None else min(soonest, due)
            if count == len(chunk):  # every message made a row: all new, all distinct
                stored.extend(itertools.repeat(True, len(chunk)))
                continue
            new, seen = set(new_ids or ()), set()
            for m in chunk:  # a repeated id counts once, at its first occurrence
                stored.append(m.id in new and m.id not in seen)
                seen.add(m.id)
        if soonest is not None and base is not None:
            self._wake_at(soonest - base)  # both the server's clock
        return stored

    def _clock(self) -> tuple[float, float | None]:
        """This process's ``time.time()`` and the server's clock estimated at it (``None``
        until the store has an estimate)."""
        clock, skew = time.time(), self._store.clock_skew
        return clock, None if skew is None else clock + skew

    def _learn_skew(self, clock: float, after: float, ref: float | None, base: float
                    ) -> float:
        """The offset of the server's clock kept, or learned from a push's moment
        (``base``): see :func:`nuvom_kernel.clock.relearned_offset`. Returns ``base``."""
        offset = relearned_offset(base, ref, clock, after, REF_TOLERANCE)
        if offset is not None:
            self._store.clock_skew = offset
        return base

    def _push_new_first(self, conn: psycopg.Connection[Any], messages: Sequence[Message],
                        clock: float, ref: float | None
                        ) -> tuple[list[Sequence[Message]], list[Any]]:
        """Push with ``queries.PUSH_NEW`` (no speculative insertion), and again with
        ``queries.PUSH`` if an id repeats within the batch or a unique violation says it
        arrived meanwhile (then nothing of the first try was committed)."""
        try:
            return self._push_chunks(conn, messages, self._q.push_new,
                                     self._q.push_new_uniform, clock, ref, distinct=True)
        except (psycopg.errors.UniqueViolation, _RepeatedId):
            log.debug("an id repeats in the batch or was stored concurrently; pushing again "
                      "with ON CONFLICT DO NOTHING")
        return self._push_chunks(conn, messages, self._q.push, self._q.push_uniform, clock,
                                 ref)

    def _push_chunks(self, conn: psycopg.Connection[Any], messages: Sequence[Message],
                     general: bytes, uniform: bytes, clock: float, ref: float | None, *,
                     distinct: bool = False) -> tuple[list[Sequence[Message]], list[Any]]:
        """The chunks of :attr:`push_chunk` messages and one summary row per chunk, all in
        one transaction. Each chunk is read from ``messages`` (which the kernel encodes as
        they are read) only after the one before was sent, so the server stores a chunk
        while the next one is encoded. ``distinct``: raise :class:`_RepeatedId` on an id
        seen earlier in the batch (``PUSH_NEW`` would fail on it), rolling back; its chunks
        run in a transaction that plans their probes as index lookups
        (``queries.INDEX_PROBES``), a one-chunk push too.
        """
        size, seen = self.push_chunk, set[str]()
        chunks: list[Sequence[Message]] = []

        def execute(start: int) -> psycopg.Cursor[Any]:
            chunk = messages[start:start + size]  # (reading it may encode it)
            chunks.append(chunk)
            if distinct:
                seen.update(m.id for m in chunk)
                if len(seen) != start + len(chunk):
                    raise _RepeatedId
            # a later chunk's times go relative to the clock read as it is built: relative
            # to the push's first reading, a chunk run over REF_TOLERANCE later was stamped
            # on clock_timestamp() and came out that much younger than it was
            at = clock if start == 0 else time.time()
            same, params = _push_params(chunk, at, None if ref is None else ref + at - clock)
            return conn.execute(uniform if same else general, params)

        starts = range(0, len(messages), size)
        if len(starts) == 1 and not distinct:  # autocommit: one statement, one transaction
            return chunks, [execute(0).fetchone()]
        if not psycopg.Pipeline.is_supported():  # libpq < 14: the same, one at a time
            with conn.transaction():
                if distinct:
                    conn.execute(queries.INDEX_PROBES)
                return chunks, [execute(start).fetchone() for start in starts]
        with conn.pipeline(), conn.transaction():
            if distinct:
                conn.execute(queries.INDEX_PROBES)
            cursors = [execute(start) for start in starts]
        return chunks, [cur.fetchone() for cur in cursors]
    def _push_one(self, m: Message) -> bool:
        body = m.checked_body()  # first: it names a message of no id
        available = float(m.available_at)
        if not (PRIORITY_MIN <= m.priority <= PRIORITY_MAX and available <= AVAILABLE_AT_MAX
                and storable(m.id) and storable(m.queue) and storable(m.task)):
            refused = _unstorable([m.id], [m.queue], [m.priority], [available], [m.task])
            if refused is not None:
                raise refused
        clock, ref = self._clock()  # see push
        params = [ref, m.id, m.queue, m.priority, clock - float(m.created_at),
                  available - clock, m.task, body]
        try:
            caller = caller_cursor(self._store.identity, self._store.server)
            if caller is not None:
                rows = caller.execute(self._q.push_one, params).fetchall()
            else:
                rows = self._store.rows(self._q.push_one, params)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unreachable(self.settings.dsn, exc) from exc
        if rows:
            self._learn_skew(clock, time.time(), ref, rows[0][2])
            if rows[0][1] == 1:
                self._wake_at(available - clock)
        return bool(rows)
