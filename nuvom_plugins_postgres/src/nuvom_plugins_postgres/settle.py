"""``settle_many`` of :class:`~nuvom_plugins_postgres.queue.PostgresQueue`: a batch of
outcomes stored and their leases acked or put back in one transaction.

When the result backend keeps its records in the same database and schema, a job is then
never recorded finished but still queued, and the batch costs one round trip (:data:`SETTLE`)
where it names each job once. Why apart from the lease bookkeeping of :mod:`.leases`: this
path spans both backends' tables, through the result backend's fence (``results.KEEP_NEWER``, as
``results._UPSERT``), with statements of its own, bound here by
:class:`~nuvom_plugins_postgres.queries.Binder`. :class:`QueueSettling` is a base class of
the queue (a mixin of the same object), so the settler's call goes through no extra hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from nuvom_kernel.backends import ResultBackend, Settlement
from nuvom_plugins_postgres.base import QueueBase
from nuvom_plugins_postgres.queries import Binder
from nuvom_plugins_postgres.results import (
    KEEP_NEWER,
    PostgresResultBackend,
    Row,
    encode_all,
    store_fenced,
)

__all__ = ["QueueSettling", "SettleQueries"]

# settle_many: lock the rows whose token still holds, then ack or put back the landed ones.
SETTLE_HELD = """
SELECT j.id FROM {s}.jobs j JOIN unnest(%b::text[], %b::text[]) AS t(id, token)
  ON j.id = t.id AND j.token = t.token
WHERE {lease}
FOR UPDATE OF j
"""
SETTLE_ACK = "DELETE FROM {s}.jobs WHERE id = ANY(%b::text[])"
SETTLE_RETRY = """
UPDATE {s}.jobs j SET
    state = CASE WHEN t.delay > 0 THEN 1 ELSE 0 END,
    due_at = CASE WHEN t.delay > 0 THEN clock_timestamp() + (t.delay * interval '1 second') END,
    available_at = extract(epoch FROM clock_timestamp())::float8 + t.delay,
    token = NULL, lease_expires_at = NULL, failures = j.failures + 1,
    body = COALESCE(t.body, j.body)
FROM unnest(%b::text[], %b::float8[], %b::bytea[]) AS t(id, delay, body)
WHERE j.id = t.id
RETURNING j.state
"""

# settle_many in one statement when the batch names each job once (the usual case): lock the
# rows whose token still holds, upsert their records through the result backend's fence
# (``results.KEEP_NEWER``, as ``results._UPSERT``), then ack or put back exactly the jobs whose
# record landed. One round trip instead of five (BEGIN, lock, upsert, ack, COMMIT); the
# data-modifying CTEs run to completion whether or not the outer query reads them, all in
# the statement's one transaction, and ``held`` locks before anything is written.
SETTLE = """
WITH t AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::int[],
                         %b::int[], %b::bool[], %b::float8[], %b::text[], %b::float8[],
                         %b::bytea[])
      AS t(job_id, token, status, func_name, run, attempts, terminal, updated_at, data,
           retry_in, body)),
held AS MATERIALIZED (
    SELECT j.id FROM {s}.jobs j JOIN t ON j.id = t.job_id AND j.token = t.token
    WHERE {lease}
    FOR UPDATE OF j),
stored AS (
    INSERT INTO {s}.results AS r
           (job_id, status, func_name, run, attempts, terminal, updated_at, data)
    SELECT t.job_id, t.status, t.func_name, t.run, t.attempts, t.terminal, t.updated_at,
           t.data
    FROM t JOIN held ON held.id = t.job_id
""" + KEEP_NEWER + """
    RETURNING r.job_id),
acked AS (
    DELETE FROM {s}.jobs j USING stored, t
    WHERE j.id = stored.job_id AND t.job_id = stored.job_id AND t.retry_in IS NULL
    RETURNING j.id),
retried AS (
    UPDATE {s}.jobs j SET
        state = CASE WHEN t.retry_in > 0 THEN 1 ELSE 0 END,
        due_at = CASE WHEN t.retry_in > 0
                      THEN clock_timestamp() + (t.retry_in * interval '1 second') END,
        available_at = extract(epoch FROM clock_timestamp())::float8 + t.retry_in,
        token = NULL, lease_expires_at = NULL, failures = j.failures + 1,
        body = COALESCE(t.body, j.body)
    FROM stored, t
    WHERE j.id = stored.job_id AND t.job_id = stored.job_id AND t.retry_in IS NOT NULL
    RETURNING j.state),
woke AS (SELECT count(pg_notify({chan}, '')) AS n
         FROM (SELECT 1 FROM retried WHERE retried.state = 0 LIMIT 1) AS ready)
SELECT stored.job_id, woke.n FROM stored, woke
"""


class SettleQueries:
    """The statements above bound to one schema (and its notification channel)."""

    def __init__(self, schema: str, sync_lease_commits: bool = False) -> None:
        bind = Binder(schema, sync_lease_commits)
        self.settle = bind(SETTLE)
        self.held, self.ack = bind(SETTLE_HELD), bind(SETTLE_ACK)
        self.retry = bind(SETTLE_RETRY, notifying=True)


class QueueSettling(QueueBase):
    """``settle_many`` of :class:`~nuvom_plugins_postgres.queue.PostgresQueue` (see the module
    docstring)."""

    _sq: SettleQueries  # set by PostgresQueue.__init__

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
        """A batch naming each job once: the one-statement settle (:data:`SETTLE`)."""
        columns = [list(col) for col in zip(*rows, strict=True)]
        params = [columns[0], [s.lease.token for s in settlements], *columns[1:],
                  [None if s.retry_in is None else max(float(s.retry_in), 0.0)
                   for s in settlements],
                  [s.body if s.retry_in is not None else None for s in settlements]]
        stored = {r[0] for r in self._store.rows(self._sq.settle, params)}
        return [s.lease.id in stored for s in settlements]

    def _settle_in_order(self, settlements: Sequence[Settlement], rows: Sequence[Row],
                         results: PostgresResultBackend) -> list[bool]:
        """A batch naming a job more than once: statement by statement in one transaction,
        the records upserted in order (a later write of a job follows its earlier one)."""

        def run(conn: psycopg.Connection[Any]) -> list[bool]:
            landed = [False] * len(settlements)
            with conn.transaction():
                held = {r[0] for r in conn.execute(self._sq.held, [
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
                    conn.execute(self._sq.ack, [acks])
                if again:
                    conn.execute(self._sq.retry, [
                        [s.lease.id for s in again],
                        [max(float(s.retry_in or 0.0), 0.0) for s in again],
                        [s.body for s in again]]).fetchall()
                for i in landing:
                    landed[i] = True
            return landed

        return self._run(run)
