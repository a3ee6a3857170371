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
from psycopg.rows import tuple_row

from nuvom_kernel.errors import NuvomError

__all__ = ["IDENTITY_SQL", "WrongDatabaseError", "caller_cursor", "identity_of", "transaction"]

#: What tells one database of one cluster from any other: its name, and the cluster's system
#: identifier (made by initdb; kept across restarts and by a promoted physical replica, and
#: readable by any role). Not the server's start time: it changes at every restart, and its
#: text follows the session's TimeZone and DateStyle.
IDENTITY_SQL = ("SELECT current_database(), "
                "(SELECT system_identifier FROM pg_control_system())::text")

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


def identity_of(reader: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> tuple[str, str]:
    """The :data:`IDENTITY_SQL` row of the database ``reader`` reaches, as text (a
    tuple-row reader: the store's own connection, or a cursor on a caller's)."""
    row = reader.execute(IDENTITY_SQL).fetchone()
    return (str(row[0]), str(row[1])) if row else ("", "")


def caller_cursor(queue: tuple[str, str], queue_server: str
                  ) -> psycopg.Cursor[tuple[Any, ...]] | None:
    """A cursor on the connection of the innermost :func:`transaction` block (``None``
    outside one), with tuple rows whatever the connection's ``row_factory`` (a caller's
    ``dict_row`` broke the push's unpacking), once the connection is known to reach the
    queue's database (``queue``: its :data:`IDENTITY_SQL` row, ``queue_server`` how to name
    it). Why the check: on another database the push failed as a missing ``nuvom.jobs``
    table blamed on storage, or, where that database had Nuvom's schema too, committed a
    job no worker of this queue would run.

    :raises WrongDatabaseError: naming both databases and the setting that picks the queue's.
    """
    conn = _current.get()
    if conn is None:
        return None
    cursor = conn.cursor(row_factory=tuple_row)
    seen = _identities.get(conn)
    if seen is None:
        seen = _identities[conn] = identity_of(cursor)
    if seen != queue:
        where = (f"database {seen[0]!r}" if seen[1] == queue[1]
                 else f"database {seen[0]!r} of another PostgreSQL cluster")
        raise WrongDatabaseError(
            f"transaction(conn): conn is on {where}, but the queue is on {queue_server}; a "
            f"job pushed there would never reach this queue's workers. Open conn with the "
            f"queue's dsn ([plugins.postgres] dsn, or NUVOM_PLUGINS__POSTGRES__DSN).")
    return cursor
