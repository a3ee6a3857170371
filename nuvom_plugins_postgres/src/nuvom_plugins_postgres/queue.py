"""The PostgreSQL queue backend: one ``jobs`` table, leases fenced by database tokens.

States: 0 ready (in the claim index), 1 scheduled (a delay or a retry delay; out of the
claim index until due), 2 leased, 3 held (ready, but parked out of the claim index by a
claim under concurrency limits while its task had no room: see
:mod:`nuvom_plugins_postgres.limits`; every reader takes it for a ready row). Ack deletes
the row, so the table holds only live work.

Why a maintenance tick instead of a scheduler process: any worker, whenever it claims and
its tick is due, tries ``pg_try_advisory_xact_lock``; the one winner promotes due scheduled
rows and recovers expired leases, the others carry on. The next tick is timed by the
earliest due row or lease deadline (at most :data:`TICK_MAX_SECS` away), and a push of a
delayed job tells listeners its due time, so delays are kept to the millisecond without
polling faster. Idle, a worker does one tick and one poll per second.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    QueueBackend,
    QueueCounts,
    QueueStats,
    ResultBackend,
    Settlement,
)
from nuvom_kernel.clock import relearned_offset
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.models import JobStatus, Lease, Message
from nuvom_kernel.task import PRIORITY_MAX, PRIORITY_MIN
from nuvom_kernel.values import MAX_ETA
from nuvom_kernel.views import QueuedJob
from nuvom_plugins_postgres import queries
from nuvom_plugins_postgres.browse import page_statement, queued_job
from nuvom_plugins_postgres.limits import LimitQueries, claim_limited, lock_key
from nuvom_plugins_postgres.queries import REF_TOLERANCE, Queries
from nuvom_plugins_postgres.results import (
    PostgresResultBackend,
    Row,
    encode_all,
    storable,
    store_fenced,
)
from nuvom_plugins_postgres.schema import ADVISORY_CLASS
from nuvom_plugins_postgres.settings import PostgresSettings
from nuvom_plugins_postgres.store import (
    TEST_NAMESPACE_PREFIX,
    PostgresUnavailableError,
    acquire,
    mark_temporary,
    release,
    unreachable,
)
from nuvom_plugins_postgres.txn import current_connection
from nuvom_plugins_postgres.wakeup import listener_for, stop_listening

__all__ = ["PostgresQueue"]

log = logging.getLogger("nuvom.postgres")
T = TypeVar("T")

#: Longest gap between two maintenance ticks of a process that keeps claiming.
TICK_MAX_SECS = 1.0
#: How often the tick also deletes finished records older than ``result_ttl_secs``.
PURGE_EVERY_SECS = 60.0
#: How often a worker without limits asks whether rows are parked by other workers' limits
#: (state 3), which it then claims as ready ones (see ``_claim_plain``).
HELD_PROBE_SECS = 1.0


def _duration(secs: float) -> str:
    """``4 h 12 min``, ``7 min 30 s``, ``42 s``: a snapshot's age as an operator reads it."""
    secs = int(secs)
    if secs >= 3600:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    if secs >= 60:
        return f"{secs // 60} min {secs % 60} s"
    return f"{secs} s"


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
    queues = [m.queue for m in messages]
    priorities = [m.priority for m in messages]
    available = [float(m.available_at) for m in messages]
    tasks = [m.task for m in messages]
    ids = [m.id for m in messages]
    refused = _unstorable(ids, queues, priorities, available, tasks)
    if refused is not None:
        raise refused
    ages = [clock - float(m.created_at) for m in messages]
    bodies = [m.checked_body() for m in messages]
    if queues.count(queues[0]) == n and priorities.count(priorities[0]) == n \
            and available.count(available[0]) == n and tasks.count(tasks[0]) == n:
        return True, [ref, ids, ages, bodies, queues[0], priorities[0],
                      available[0] - clock, tasks[0], n]
    return False, [ref, ids, queues, priorities, ages, [a - clock for a in available], tasks,
                   bodies, n]


class _RepeatedId(Exception):
    """An id repeats within a batch pushed with ``PUSH_NEW`` (see ``_push_chunks``)."""


def _message(row: Sequence[Any]) -> Message:
    """The message from a row's first columns (``queries._MESSAGE``): a claim's lease and
    a peek build it alike."""
    job_id, body, queue, priority, available_at, created_at, task, failures = row[:8]
    return Message(id=job_id, body=bytes(body), queue=queue, priority=priority,
                   available_at=available_at, created_at=created_at, task=task,
                   failures=failures)


def _lease(row: Sequence[Any]) -> Lease:
    token, deliveries, expires_at, _seq = row[8:]
    return Lease(_message(row), token, deliveries, expires_at)


class PostgresQueue(QueueBackend):
    """Jobs in ``<schema>.jobs``; every lease write is checked against its token."""

    name = "postgres"
    namespaced = True
    capabilities = Capabilities(persistent=True, multiprocess_safe=True, priorities=True,
                                delayed=True, blocking_dequeue=True, concurrency=True)
    #: The polling fallback (LISTEN wakes waiters at once; this bounds pickup while the
    #: listener reconnects).
    poll_interval_max = 0.5
    #: Messages per statement of a pipelined push (see :meth:`push`).
    push_chunk = 1000
    #: Pushes of up to this many messages use ``queries.PUSH`` (``ON CONFLICT``), larger
    #: ones ``PUSH_NEW``. Why: ``PUSH_NEW`` saves ~3.5 µs a row, but its transaction, which
    #: plans its probes as index lookups (``queries.INDEX_PROBES``), costs a few hundred µs
    #: more than one autocommitted statement: a push of 2 took 825 µs with it, 476 without;
    #: the two were even between 300 (12.4 and 12.7 µs a job) and 1,000 (11.7 and 10.3).
    small_push = 250
    streams_push = True  # each push chunk is read after the one before was sent
    observed_as_read = True  # no lock held while it reads: the server holds them

    def __init__(self, settings: PostgresSettings | None = None, *,
                 namespace: str = "") -> None:
        """:param namespace: the core setting ``namespace``, which claims the schema (see
            :func:`nuvom_plugins_postgres.schema.migrate`); ``""`` claims nothing."""
        self.settings = settings or PostgresSettings()
        super().__init__(visibility_timeout_secs=self.settings.visibility_timeout_secs)
        self.schema = self.settings.schema
        self._store = acquire(self.settings, namespace)
        self._q = Queries(self.schema, self.settings.sync_lease_commits)
        self._lq = LimitQueries(self.schema, self.settings.sync_lease_commits)
        #: (task -> most live leases, task -> its lock key): one attribute, so a claim
        #: never reads the limits of one ``set_concurrency_limits`` and keys of another
        self._limits: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._held = False  # rows parked by limits seen by the last plain claim's probe
        self._held_probe_at = 0.0  # monotonic time the plain claim next asks (ANY_HELD)
        self._tick_at = 0.0  # monotonic time of the next maintenance tick
        self._purge_at = 0.0
        self._tick_lock = threading.Lock()
        self._closed = False
        self._listener = listener_for(self.settings.dsn, self.schema, self)

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
            stop_listening(self._listener, self)
            release(self._store)

    # --- plumbing ---------------------------------------------------------------------------

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """:meth:`Store.run`: every statement here is safe to repeat (token-checked, or
        idempotent by job id)."""
        return self._store.run(fn)

    def _wake_at(self, delay: float) -> None:
        """Tick no later than ``delay`` seconds from now (a row becomes due then)."""
        self._tick_at = min(self._tick_at, time.monotonic() + max(delay, 0.0))

    def wake(self, hint: str) -> None:
        """Called by the listener: a notification (or a reconnection) says look again."""
        self.notify()

    def wait_for_messages(self, timeout: float, generation: int) -> None:
        """Wait for a wake-up, but never past the next maintenance tick (a delayed job
        coming due is found by the tick, not by a notification)."""
        super().wait_for_messages(min(timeout, max(self._tick_at - time.monotonic(), 0.0)),
                                  generation)

    def tick(self) -> int:
        """Run the maintenance tick now if this process wins the lock; how many rows it
        made claimable (promoted or recovered). Also schedules the next one."""
        ttl = self.settings.result_ttl_secs
        purge = ttl > 0 and time.monotonic() >= self._purge_at

        def run(conn: psycopg.Connection[Any]) -> tuple[int, float | None]:
            moved = 0
            with conn.transaction():
                won = conn.execute(self._q.tick_lock,
                                   (ADVISORY_CLASS, f"{self.schema}:tick")).fetchone()
                if won and won[0]:
                    moved = int(conn.execute(self._q.tick).fetchone()[0])  # type: ignore[index]
                    if purge:
                        conn.execute(self._q.purge_results,
                                     (self._store.on_server(time.time()) - ttl,))
            nxt = conn.execute(self._q.next).fetchone()
            return moved, (None if nxt is None else nxt[0])

        moved, until = self._run(run)
        if purge:
            self._purge_at = time.monotonic() + PURGE_EVERY_SECS
        self._tick_at = time.monotonic() + min(TICK_MAX_SECS, max(until or TICK_MAX_SECS,
                                                                   0.001))
        return moved

    def _maybe_tick(self) -> None:
        if time.monotonic() >= self._tick_at and self._tick_lock.acquire(blocking=False):
            try:
                if time.monotonic() >= self._tick_at:
                    if self.tick():
                        self.notify()
            finally:
                self._tick_lock.release()

    # --- primitives -------------------------------------------------------------------------

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
        conn = current_connection()
        # This process's clock and the server's estimated from it: the messages' times go as
        # offsets from it (queries.PUSH); a later chunk reads its own (_push_chunks).
        clock, ref = self._clock()
        try:
            if conn is not None:
                uniform, params = _push_params(messages, clock, ref)
                query = self._q.push_uniform if uniform else self._q.push
                summaries = [conn.execute(query, params).fetchone()]
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
        available = float(m.available_at)
        if not (PRIORITY_MIN <= m.priority <= PRIORITY_MAX and available <= AVAILABLE_AT_MAX
                and storable(m.id) and storable(m.queue) and storable(m.task)):
            refused = _unstorable([m.id], [m.queue], [m.priority], [available], [m.task])
            if refused is not None:
                raise refused
        clock, ref = self._clock()  # see push
        params = [ref, m.id, m.queue, m.priority, clock - float(m.created_at),
                  available - clock, m.task, m.checked_body()]
        conn = current_connection()
        try:
            if conn is not None:
                rows = conn.execute(self._q.push_one, params).fetchall()
            else:
                rows = self._run(lambda c: c.execute(self._q.push_one, params).fetchall())
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unreachable(self.settings.dsn, exc) from exc
        if rows:
            self._learn_skew(clock, time.time(), ref, rows[0][2])
            if rows[0][1] == 1:
                self._wake_at(available - clock)
        return bool(rows)

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        if n <= 0 or (queues is not None and not queues):
            return []
        self._maybe_tick()
        vis = self.visibility_timeout_secs
        limits, keys = self._limits
        if limits:
            rows = self._run(lambda c: claim_limited(c, self._lq, limits, keys, n, queues,
                                                     vis))
        else:
            rows = self._claim_plain(n, queues, vis)
        if rows:
            self._wake_at(vis)  # recover these leases on time if their holder dies
        rows.sort(key=lambda r: (-r[3], r[5], r[11]))
        return [_lease(r) for r in rows]

    def _claim_plain(self, n: int, queues: Sequence[str] | None, vis: float
                     ) -> list[tuple[Any, ...]]:
        """The claim of a worker without limits: one statement (``queries.CLAIM``), or,
        while rows parked by limits (state 3) exist, ``queries.CLAIM_HELD``, which takes
        them as ready ones. Whether any exist is asked at most every
        :data:`HELD_PROBE_SECS` (and at once after a claim that met some), so such rows
        wait at most that long, and a worker without limits pays one probe a second."""
        now = time.monotonic()
        if self._held or now >= self._held_probe_at:
            row = self._run(lambda c: c.execute(self._q.any_held).fetchone())
            self._held = bool(row and row[0])
            self._held_probe_at = now + HELD_PROBE_SECS
        params: Any
        if not self._held:
            if queues is None:
                query, params = self._q.claim_all, [n, vis]
            else:
                query, params = self._q.claim_some, [list(queues), n, vis]
        elif queues is None:
            query, params = self._q.claim_held_all, {"n": n, "vis": vis}
        else:
            query = self._q.claim_held_some
            params = {"n": n, "vis": vis, "queues": list(queues)}
        return self._run(lambda c: c.execute(query, params).fetchall())

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        """Claim under ``limits`` from now on (``{}``: none); see
        :mod:`nuvom_plugins_postgres.limits`. The lock keys are computed here, once."""
        self._limits = (dict(limits), {task: lock_key(self.schema, task) for task in limits})

    @property
    def limits(self) -> dict[str, int]:
        """The limits this instance claims under (a copy)."""
        return dict(self._limits[0])

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per task: (live leases, ready rows), held-back ones included and delayed ones
        not; one scan of the table (``limits.COUNTS``), as ``stats`` is."""
        if not tasks:
            return {}
        found = {r[0]: (int(r[1]), int(r[2])) for r in self._run(
            lambda c: c.execute(self._lq.counts, (list(tasks),)).fetchall())}
        return {t: found.get(t, (0, 0)) for t in tasks}

    def ack(self, lease: Lease) -> bool:
        return self._run(lambda c: c.execute(self._q.ack, (lease.id, lease.token)).rowcount
                         ) == 1

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        params = [[le.id for le in leases], [le.token for le in leases]]
        gone = {(r[0], r[1]) for r in self._run(
            lambda c: c.execute(self._q.ack_many, params).fetchall())}
        return [(le.id, le.token) in gone for le in leases]  # by token: see ACK_MANY

    def _put_back(self, query: Any, lease: Lease, delay_secs: float,
                  body: bytes | None = None) -> bool:
        params = {"id": lease.id, "token": lease.token, "delay": max(float(delay_secs), 0.0),
                  "body": body}
        rows = self._run(lambda c: c.execute(query, params).fetchall())
        if not rows:
            return False
        if rows[0][0] == 0:
            self.notify()
        else:
            self._wake_at(delay_secs)
        return True

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        return self._put_back(self._q.retry, lease, delay_secs, body)

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        return self._put_back(self._q.release, lease, delay_secs)

    def extend(self, lease: Lease, secs: float) -> bool:
        if secs <= 0:  # claimable at once, by anyone: no need to wait for a tick
            found = self._run(lambda c: c.execute(self._q.expire, (lease.id, lease.token))
                              .fetchall())
            if found:
                self.notify()
            return bool(found)
        return self._run(lambda c: c.execute(self._q.extend, (float(secs), lease.id,
                                                               lease.token)).rowcount) == 1

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        if not leases or secs <= 0:
            return [self.extend(le, secs) for le in leases]
        params = [float(secs), [le.id for le in leases], [le.token for le in leases]]
        held = {(r[0], r[1]) for r in self._run(
            lambda c: c.execute(self._q.extend_many, params).fetchall())}
        return [(le.id, le.token) in held for le in leases]  # by token: see ACK_MANY

    def peek_state(self, job_id: str) -> JobStatus | None:
        """RUNNING while leased and the lease's deadline has not passed; RETRYING while a
        row with failed attempts waits out its delay; else QUEUED — an expired lease
        included, before or after a tick recovers it (its holder may be dead or stopped, and
        ``extend(lease, 0)`` makes a job read QUEUED at once); ``None`` if not queued (as
        for an id no push stores: see :func:`storable`)."""
        if not storable(job_id):
            return None
        row = self._run(lambda c: c.execute(self._q.peek, (job_id,)).fetchone())
        return None if row is None else JobStatus(str(row[0]))

    def peek(self, job_id: str) -> Message | None:
        """One plain ``SELECT`` of the row (no lock, no write): a row holds its message in
        every state, and ack and cancel delete it, so no row means not queued (nor can an id
        no push stores be: a NUL or lone surrogate, which psycopg could not even send)."""
        if not storable(job_id):
            return None
        row = self._run(lambda c: c.execute(self._q.message, (job_id,)).fetchone())
        return None if row is None else _message(row)

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """One ``SELECT`` (``queries.BROWSE``): filtered by queue, state and the keyset
        cursor, ordered and limited by the server; no lock, no write, no body read. States
        are ``peek_state``'s, on the server's clock (an expired lease reads QUEUED before a
        tick recovers it, a due retry QUEUED before a tick promotes it).

        Why no index serves it: see :mod:`nuvom_plugins_postgres.browse`."""
        found = page_statement(self._q, queues, states, after, limit)
        if found is None:
            return []
        query, params = found
        return [queued_job(r) for r in self._run(
            lambda c: c.execute(query, params).fetchall())]

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        """Rows not under a live lease: ready, delayed, and expired leases alike."""
        if queues is not None and not queues:
            return 0
        query, params = ((self._q.qsize_all, []) if queues is None
                         else (self._q.qsize_some, [list(queues)]))
        return int(self._run(lambda c: c.execute(query, params).fetchone()[0]))  # type: ignore[index]

    def clear(self, queues: Sequence[str] | None = None) -> int:
        if queues is not None and not queues:
            return 0
        query, params = ((self._q.clear_all, []) if queues is None
                         else (self._q.clear_some, [list(queues)]))
        return self._run(lambda c: c.execute(query, params).rowcount)

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
        return self._run(lambda c: c.execute(self._q.cancel, (job_id,)).rowcount) == 1

    def stats(self) -> QueueStats:
        """Per queue: ready (an expired lease and a due scheduled row included), delayed
        (not yet due), running (a live lease), and the oldest ready row's age, counted from
        when it became due (its enqueue, or the end of its delay or retry delay), as the
        worker's wait time is: from the enqueue, a job delayed for a day would read a day
        old the moment it is due. One scan (``STATS``)."""
        rows = self._run(lambda c: c.execute(self._q.stats).fetchall())
        stats = QueueStats()
        for queue, ready, delayed, running, age in rows:
            # max(0, ...): a due time ahead of the server's clock (a producer's) is no wait
            stats.queues[queue] = QueueCounts(
                ready=ready, delayed=delayed, running=running,
                oldest_ready_age_secs=None if age is None else max(0.0, age))
        stats.warnings = self.hygiene_warnings()
        return stats

    def hygiene_warnings(self) -> list[str]:
        """What stops PostgreSQL from keeping the queue small: autovacuum switched off (for
        the server or one of our tables), dead rows piling up in
        ``jobs`` or ``results`` (``dead_tuple_warn_ratio`` of the table and at least
        ``dead_tuple_warn_min`` rows), and sessions of this database holding a snapshot
        longer than ``xmin_warn_secs`` (vacuum cannot remove any row deleted after it was
        taken). Why in ``nuvom status``: both degrade every claim slowly and silently, long
        before anything fails. A session of another role is visible only to a superuser or
        a member of ``pg_read_all_stats``."""
        cfg = self.settings

        def run(conn: psycopg.Connection[Any]) -> tuple[Any, list[Any], list[Any]]:
            return (conn.execute(self._q.autovacuum, (self.schema,)).fetchone(),
                    conn.execute(self._q.dead_tuples, (self.schema,)).fetchall(),
                    conn.execute(self._q.old_snapshots, (cfg.xmin_warn_secs,)).fetchall())

        try:
            (server_on, tables_off), tables, sessions = self._run(run)
        except (psycopg.Error, PostgresUnavailableError) as exc:
            return [f"could not check PostgreSQL table health: {' '.join(str(exc).split())}"]
        warnings = []
        if not server_on:
            warnings.append(
                "autovacuum is off on this server (autovacuum = off): nothing removes the "
                "queue's dead rows, and every claim steps over the dead index entries left "
                "by the claims before it, slower and slower. Turn it on (ALTER SYSTEM SET "
                "autovacuum = on; SELECT pg_reload_conf()) or VACUUM "
                f"{self.schema}.jobs every minute or so.")
        for table in tables_off:
            warnings.append(
                f"autovacuum is disabled for {self.schema}.{table} (autovacuum_enabled = "
                f"false): ALTER TABLE {self.schema}.{table} RESET (autovacuum_enabled), or "
                "VACUUM it regularly yourself.")
        for table, live, dead, vacuumed in tables:
            total = live + dead
            if dead >= max(cfg.dead_tuple_warn_min, 1) and \
                    dead >= cfg.dead_tuple_warn_ratio * total:
                warnings.append(
                    f"table {self.schema}.{table} has {dead:,} dead rows ({dead / total:.0%} "
                    f"of {total:,}; last vacuum: {vacuumed or 'never'}): vacuum is behind, so "
                    "claims wade through dead index entries. Look for a session holding an "
                    "old snapshot (pg_stat_activity.backend_xmin), then run "
                    f"VACUUM {self.schema}.{table}.")
        for pid, app, state, age, xmin in sessions:
            warnings.append(
                f"session pid {pid} (application_name {app or '-'!r}, state {state or '-'!r}) "
                f"has held a snapshot (backend_xmin {xmin}) for {_duration(age)}: vacuum "
                "cannot remove any row deleted since, so the queue's tables bloat. End its "
                "transaction in that client, or SELECT pg_terminate_backend"
                f"({pid}); idle_in_transaction_session_timeout ends such sessions for you.")
        return warnings

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """Records and acks (or retries) in one transaction when ``results`` keeps its
        records in this database and schema; ``None`` otherwise (the kernel then stores
        and acks separately).

        A settlement lands if its token still holds (its row is locked ``FOR UPDATE`` first,
        so no claim or tick can take it meanwhile) and its record passes the fence; else
        nothing of it is written.
        """
        if not isinstance(results, PostgresResultBackend) or \
                results._store.key != self._store.key:
            return None
        if not settlements:
            return []
        # Checked before sending (SerializationError): a record past PostgreSQL's limits
        # made the server drop the connection, which looks like an outage (see encode_all).
        rows = encode_all([s.record for s in settlements],
                          [len(s.body) if s.retry_in is not None and s.body else 0
                           for s in settlements])
        if len({s.lease.id for s in settlements}) == len(settlements):
            landed = self._settle_distinct(settlements, rows)
        else:
            landed = self._settle_in_order(settlements, rows, results)
        delays = [s.retry_in for s, ok in zip(settlements, landed, strict=True)
                  if ok and s.retry_in is not None]
        if any(d <= 0 for d in delays):
            self.notify()
        if any(d > 0 for d in delays):
            self._wake_at(min(d for d in delays if d > 0))
        return landed

    def _settle_distinct(self, settlements: Sequence[Settlement], rows: Sequence[Row]
                         ) -> list[bool]:
        """A batch naming each job once: the one-statement settle (``queries.SETTLE``)."""
        columns = [list(col) for col in zip(*rows, strict=True)]
        params = [columns[0], [s.lease.token for s in settlements], *columns[1:],
                  [None if s.retry_in is None else max(float(s.retry_in), 0.0)
                   for s in settlements],
                  [s.body if s.retry_in is not None else None for s in settlements]]
        stored = {r[0] for r in self._run(
            lambda c: c.execute(self._q.settle, params).fetchall())}
        return [s.lease.id in stored for s in settlements]

    def _settle_in_order(self, settlements: Sequence[Settlement], rows: Sequence[Row],
                         results: PostgresResultBackend) -> list[bool]:
        """A batch naming a job more than once: statement by statement in one transaction,
        the records upserted in order (a later write of a job follows its earlier one)."""

        def run(conn: psycopg.Connection[Any]) -> list[bool]:
            landed = [False] * len(settlements)
            with conn.transaction():
                held = {r[0] for r in conn.execute(self._q.settle_held, [
                    [s.lease.id for s in settlements], [s.lease.token for s in settlements],
                ]).fetchall()}
                ok = [i for i, s in enumerate(settlements) if s.lease.id in held]
                stored = store_fenced(conn, results._upsert, [rows[i] for i in ok])
                landing = [i for i, good in zip(ok, stored, strict=True) if good]
                acks = [settlements[i].lease.id for i in landing
                        if settlements[i].retry_in is None]
                again = [settlements[i] for i in landing
                         if settlements[i].retry_in is not None]
                if acks:
                    conn.execute(self._q.settle_ack, [acks])
                if again:
                    conn.execute(self._q.settle_retry, [
                        [s.lease.id for s in again],
                        [max(float(s.retry_in or 0.0), 0.0) for s in again],
                        [s.body for s in again]]).fetchall()
                for i in landing:
                    landed[i] = True
            return landed

        return self._run(run)
