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

This module holds the queue's life (open, close, wake-ups), the maintenance tick and the
claim. The rest is split by what it does, each a base class of :class:`PostgresQueue` (a
mixin of the same object, so no call pays an extra hop) built on :mod:`.base`: push in
:mod:`.push`; ack, retry, release and extend in :mod:`.leases`; ``settle_many`` in
:mod:`.settle`; the operator's reads, ``cancel`` and ``clear`` in :mod:`.inspection`; table
health in :mod:`.hygiene`. A row's message and lease are :mod:`.rows`'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from nuvom_kernel.backends import BackendContext, Capabilities
from nuvom_kernel.models import Lease
from nuvom_plugins_postgres.hygiene import HygieneQueries
from nuvom_plugins_postgres.inspection import QueueInspection
from nuvom_plugins_postgres.leases import LeaseOperations
from nuvom_plugins_postgres.limits import LimitQueries, claim_limited, lock_key
from nuvom_plugins_postgres.push import Pushing
from nuvom_plugins_postgres.queries import Queries
from nuvom_plugins_postgres.rows import _lease
from nuvom_plugins_postgres.schema import ADVISORY_CLASS
from nuvom_plugins_postgres.settings import PostgresSettings
from nuvom_plugins_postgres.settle import QueueSettling, SettleQueries
from nuvom_plugins_postgres.store import (
    TEST_NAMESPACE_PREFIX,
    acquire,
    mark_temporary,
    release,
)
from nuvom_plugins_postgres.wakeup import listener_for, stop_listening

__all__ = ["PostgresQueue"]

#: Longest gap between two maintenance ticks of a process that keeps claiming.
TICK_MAX_SECS = 1.0
#: How often the tick also deletes finished records older than ``result_ttl_secs``.
PURGE_EVERY_SECS = 60.0
#: How often a worker without limits asks whether rows are parked by other workers' limits
#: (state 3), which it then claims as ready ones (see ``_claim_plain``).
HELD_PROBE_SECS = 1.0


class PostgresQueue(QueueInspection, QueueSettling, LeaseOperations, Pushing):
    """Jobs in ``<schema>.jobs``; every lease write is checked against its token."""

    name = "postgres"
    namespaced = True
    capabilities = Capabilities(persistent=True, multiprocess_safe=True, priorities=True,
                                delayed=True, blocking_dequeue=True, concurrency=True)
    #: The polling fallback (LISTEN wakes waiters at once; this bounds pickup while the
    #: listener reconnects).
    poll_interval_max = 0.5
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
        self._sq = SettleQueries(self.schema, self.settings.sync_lease_commits)
        self._hq = HygieneQueries(self.schema)
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
            row = self._store.row(self._q.any_held)
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
        return self._store.rows(query, params)

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
        found = {r[0]: (int(r[1]), int(r[2]))
                 for r in self._store.rows(self._lq.counts, (list(tasks),))}
        return {t: found.get(t, (0, 0)) for t in tasks}
