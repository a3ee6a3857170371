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
The connection must reach the database the queue is configured for; the wake-up
notification is sent on it too, so workers hear of the job only when it commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import psycopg

__all__ = ["current_connection", "transaction"]

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
