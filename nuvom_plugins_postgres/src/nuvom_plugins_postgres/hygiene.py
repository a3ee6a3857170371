"""Table health for ``nuvom status``: what stops PostgreSQL from keeping the queue small
(autovacuum off, dead rows piling up, a session holding an old snapshot), as warnings
``PostgresQueue.stats`` reports.

Why apart from the reads of :mod:`.inspection`: these read the server's catalogue and
statistics views (``pg_class``, ``pg_stat_user_tables``, ``pg_stat_activity``), not the
queue's rows, and word advice for an operator; their statements are bound here by the
queue's :class:`~nuvom_plugins_postgres.queries.Binder`. :class:`TableHygiene` is a base
class of the queue (a mixin of the same object).
"""

from __future__ import annotations

from typing import Any

import psycopg

from nuvom_plugins_postgres.base import QueueBase
from nuvom_plugins_postgres.queries import Binder
from nuvom_plugins_postgres.store import PostgresUnavailableError

__all__ = ["HygieneQueries", "TableHygiene"]

# Hygiene for ``nuvom status``: the activity counters of our two tables (PG 15 flushes them
# asynchronously, within about a second of each session's transaction), and client sessions
# of this database whose snapshot is older than a threshold. Only this database's sessions
# count: vacuum of an ordinary table ignores other databases' snapshots; autovacuum workers
# and walsenders report no transaction start to age from.
DEAD_TUPLES = """
SELECT relname, n_live_tup, n_dead_tup,
       to_char(greatest(last_autovacuum, last_vacuum), 'YYYY-MM-DD HH24:MI:SS TZ')
FROM pg_catalog.pg_stat_user_tables
WHERE schemaname = %s AND relname IN ('jobs', 'results')
ORDER BY relname
"""
# Is anything going to vacuum our tables? The server-wide switch, and tables of ours whose
# own ``autovacuum_enabled`` is false.
AUTOVACUUM = """
SELECT current_setting('autovacuum') = 'on',
       coalesce(array_agg(c.relname::text ORDER BY c.relname)
                FILTER (WHERE EXISTS (
                    SELECT 1 FROM unnest(c.reloptions) AS o
                    WHERE lower(o) ~ '^autovacuum_enabled=(false|off|no|0|f|n)$')), '{{}}')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname IN ('jobs', 'results')
"""
OLD_SNAPSHOTS = """
SELECT pid, coalesce(application_name, ''), coalesce(state, ''),
       extract(epoch FROM clock_timestamp() - coalesce(xact_start, query_start))::float8,
       backend_xmin::text
FROM pg_catalog.pg_stat_activity
WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND datname = current_database()
  AND coalesce(xact_start, query_start) < clock_timestamp() - %s * interval '1 second'
ORDER BY coalesce(xact_start, query_start)
LIMIT 10
"""


class HygieneQueries:
    """The statements above bound to one schema."""

    def __init__(self, schema: str) -> None:
        bind = Binder(schema)
        self.dead_tuples, self.old_snapshots = bind(DEAD_TUPLES), bind(OLD_SNAPSHOTS)
        self.autovacuum = bind(AUTOVACUUM)


def _duration(secs: float) -> str:
    """``4 h 12 min``, ``7 min 30 s``, ``42 s``: a snapshot's age as an operator reads it."""
    secs = int(secs)
    if secs >= 3600:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    if secs >= 60:
        return f"{secs // 60} min {secs % 60} s"
    return f"{secs} s"


class TableHygiene(QueueBase):
    """``hygiene_warnings`` of :class:`~nuvom_plugins_postgres.queue.PostgresQueue` (see the
    module docstring)."""

    _hq: HygieneQueries  # set by PostgresQueue.__init__

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
            return (conn.execute(self._hq.autovacuum, (self.schema,)).fetchone(),
                    conn.execute(self._hq.dead_tuples, (self.schema,)).fetchall(),
                    conn.execute(self._hq.old_snapshots, (cfg.xmin_warn_secs,)).fetchall())

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
