"""Enqueue inside the caller's transaction: jobs that commit (or roll back) with your data.

::

    with psycopg.connect(dsn) as conn:          # not autocommit: one transaction
        conn.execute("INSERT INTO orders ...")
        with nuvom_plugins_postgres.transaction(conn):
            send_receipt.delay(order_id)        # INSERTed on conn, not on the pool
    # committed: the order and its job exist; an exception instead: neither does

Why a context variable: ``.delay()`` goes through the kernel, which knows nothing of
connections; the queue backend looks here before it borrows a pooled connection. A context
variable is per thread and per asyncio task, so other threads keep enqueueing on the pool.
The connection must reach the database the queue is configured for (checked once per
connection: a job stored in another database that has Nuvom's schema is one no worker of
this queue ever sees); the wake-up notification is sent on it too, so workers hear of the
job only when it commits.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import psycopg

from nuvom_kernel.errors import NuvomError

__all__ = ["IDENTITY_SQL", "WrongDatabaseError", "check_same_database", "current_connection",
           "transaction"]

#: What tells one database of one server from any other: its name, and when its server
#: started (a second server with a database of the same name started at another moment).
IDENTITY_SQL = "SELECT current_database(), pg_postmaster_start_time()::text"

#: Each caller's connection's identity, read once (the connection is not ours to keep).
_identities: weakref.WeakKeyDictionary[psycopg.Connection[Any], tuple[str, str]] = (
    weakref.WeakKeyDictionary())


class WrongDatabaseError(NuvomError):
    """:func:`transaction` was given a connection to another database than the queue's."""

_current: ContextVar[psycopg.Connection[Any] | None] = ContextVar(
    "nuvom_postgres_transaction", default=None)


@contextlib.contextmanager
def transaction(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """Route every push of the PostgreSQL queue backend in this block to ``conn``.

    Nothing is committed here: the caller's transaction decides. With an autocommit
    connection outside ``conn.transaction()``, each push commits at once, as on the pool.
    """
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"transaction() needs an open psycopg 3 Connection, got "
                        f"{type(conn).__name__}")
    token = _current.set(conn)
    try:
        yield conn
    finally:
        _current.reset(token)


def current_connection() -> psycopg.Connection[Any] | None:
    """The connection of the innermost :func:`transaction` block, if any."""
    return _current.get()


def check_same_database(conn: psycopg.Connection[Any], queue: tuple[str, str],
                        queue_server: str) -> None:
    """Refuse to push on ``conn`` unless it reaches the queue's database (``queue``: its
    :data:`IDENTITY_SQL` row, ``queue_server`` how to name it). Why: on another database
    the push failed as a missing ``nuvom.jobs`` table blamed on storage, or, where that
    database had Nuvom's schema too, committed a job no worker of this queue would run.

    :raises WrongDatabaseError: naming both databases and the setting that picks the queue's.
    """
    seen = _identities.get(conn)
    if seen is None:
        row = conn.execute(IDENTITY_SQL).fetchone()
        seen = (str(row[0]), str(row[1])) if row else ("", "")
        _identities[conn] = seen
    if seen != queue:
        where = (f"database {seen[0]!r}" if seen[1] == queue[1]
                 else f"database {seen[0]!r} of another server (started {seen[1]})")
        raise WrongDatabaseError(
            f"transaction(conn): conn is on {where}, but the queue is on {queue_server}; a "
            f"job pushed there would never reach this queue's workers. Open conn with the "
            f"queue's dsn ([plugins.postgres] dsn, or NUVOM_PLUGINS__POSTGRES__DSN).")
