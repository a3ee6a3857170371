"""One connection pool per process, database and schema, shared by the queue and the
result backend built on it.

Why shared: the queue's ``settle_many`` may store a record and ack its lease in one
transaction only when the result backend writes to the same database and schema; sharing one
:class:`Store` makes that a cheap identity check, and a worker opens one pool, not two.

Why the first connection is opened by hand, not by the pool: a pool that cannot connect only
says it timed out; libpq's own error says *why* (refused, bad password, no such database),
which is what :class:`PostgresUnavailableError` reports, with the DSN's password masked.

Why pools are per process: a connection must never cross ``fork()`` (both processes would
talk on one socket); a forked child builds its own pool and never closes its parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg_pool import ConnectionPool, PoolTimeout

from nuvom_kernel.clock import server_offset
from nuvom_kernel.errors import EnqueueError
from nuvom_plugins_postgres.schema import migrate
from nuvom_plugins_postgres.settings import PostgresSettings, connect_kwargs, masked_dsn
from nuvom_plugins_postgres.txn import identity_of

__all__ = ["PostgresUnavailableError", "Store", "acquire", "check_idle_connection",
           "mark_temporary", "release", "unreachable"]

log = logging.getLogger("nuvom.postgres")

T = TypeVar("T")


class PostgresUnavailableError(EnqueueError):
    """The server cannot be reached or refuses us; the message names the DSN (password
    masked) and what to check. An :class:`EnqueueError`, so ``.delay()`` raises it as is and
    every ``nuvom`` command prints it as one line."""


def _advice(text: str) -> str:
    low = text.lower()
    if "password" in low or "authentication" in low:
        return ("check the user and password (in the DSN, PGPASSWORD or ~/.pgpass) and the "
                "server's pg_hba.conf")
    if "database" in low and "does not exist" in low:
        return "create the database (createdb NAME) or fix dbname in the DSN"
    if "role" in low and "does not exist" in low:
        return "create the role (createuser NAME) or fix the user in the DSN"
    return ("check that the server is running and that host and port (DSN, PGHOST, PGPORT) "
            "reach it from this machine")


def unreachable(dsn: str, exc: BaseException) -> PostgresUnavailableError:
    """The one-line error for a connection that failed with ``exc``."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return PostgresUnavailableError(
        f"cannot use PostgreSQL at dsn={masked_dsn(dsn)}: {reason}; {_advice(reason)} "
        "([plugins.postgres] dsn, or NUVOM_PLUGINS__POSTGRES__DSN).")


def connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` says the connection is gone (the client lost it: no SQLSTATE; a
    connection exception, class 08; the server shutting down or terminating the session,
    57P01-57P03), not that a statement failed on a live one (a lock timeout, a cancelled
    query, a full disk: also ``OperationalError``), which a retry would only repeat."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on every checkout, without a round trip when it can tell locally.

    Why not ``ConnectionPool.check_connection``: it sends an empty query on every checkout,
    a second round trip for every one-statement call (~150 µs here, on each claim, ack and
    enqueue). A connection idle in the pool has nothing to read: if its socket is readable,
    the server spoke first — a FATAL before closing (``pg_terminate_backend``, a shutdown)
    or the close itself — and only then is the round trip made, which raises on a dead
    session so the pool replaces it. A silently half-open socket is found by the statement
    itself (keepalives, ``tcp_user_timeout``), and :meth:`Store.run` retries once.
    """
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


class Store:
    """A pool over one database, with Nuvom's schema migrated on it."""

    def __init__(self, settings: PostgresSettings, namespace: str = "") -> None:
        self.settings = settings
        self.dsn = settings.dsn
        self.schema = settings.schema
        self.pid = os.getpid()
        self.users = 0
        #: Namespaces this store has claimed the schema for (see ``schema.migrate``).
        self.claimed = {namespace} if namespace else set[str]()
        try:
            with psycopg.connect(self.dsn, autocommit=True,
                                 **connect_kwargs(f"nuvom-migrate {self.schema}")) as conn:
                self.created = migrate(conn, self.schema, namespace) is None
                #: This database's :data:`~nuvom_plugins_postgres.txn.IDENTITY_SQL` row: a
                #: caller's connection (``transaction(conn)``) must give the same.
                self.identity = identity_of(conn)
                self.database = self.identity[0]
                before = time.time()
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8"
                                   ).fetchone()  # always one row
                after = time.time()
                #: The server's clock minus this process's (seconds), as a push last used
                #: it (``PostgresQueue.push``): first estimated here.
                self.clock_skew: float | None = (None if row is None
                                                 else server_offset(row[0], before, after))
                #: The server libpq chose, for :attr:`location` when the DSN is empty.
                self.server = (f"host={conn.info.host} port={conn.info.port} "
                               f"dbname={self.database} user={conn.info.user}")
        except psycopg.OperationalError as exc:
            raise unreachable(self.dsn, exc) from exc
        self.pool = ConnectionPool(
            self.dsn, min_size=1, max_size=settings.pool_size, open=True,
            kwargs={"autocommit": True, **connect_kwargs(f"nuvom {self.schema}")},
            check=check_idle_connection, reconnect_timeout=3600.0,
            name=f"nuvom-{self.schema}")

    def claim(self, namespace: str) -> None:
        """Claim the schema for ``namespace`` too, when another backend of this process
        opened the store under a different (or no) namespace: the cached store must not
        let a colliding namespace past the check its own open would have made.

        :raises SchemaOwnerError: the schema belongs to another namespace.
        """
        if namespace and namespace not in self.claimed:
            with self.connection() as conn:
                migrate(conn, self.schema, namespace)
            self.claimed.add(namespace)

    def on_server(self, epoch: float) -> float:
        """A time read on this process's clock, as the server's clock reads it."""
        return epoch + (self.clock_skew or 0.0)

    @property
    def location(self) -> str:
        """The DSN (its password masked) and the schema, as ``nuvom status`` shows them;
        an empty DSN (libpq's ``PG*`` defaults) shows the server libpq chose instead. The
        schema holds the namespace, so a mistyped one shows as a schema no worker uses."""
        where = masked_dsn(self.dsn) if self.dsn else f"libpq defaults ({self.server})"
        return f"{where}, schema {self.schema}"

    @property
    def key(self) -> tuple[str, str]:
        """What two stores must share for one transaction to span them."""
        return (self.database, self.schema)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; wrap several statements in
        ``conn.transaction()``. A connection the server dropped is replaced by the pool's
        check on the next checkout; the failing call raises (callers retry or report)."""
        with self.pool.connection(timeout=30.0) as conn:
            yield conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a pooled connection, once more on a fresh one if the server dropped
        the first mid-statement (a terminated backend, a restart's ``terminating connection
        due to administrator command``, which the checkout's test cannot see coming). Only
        for calls that are safe to repeat: reads, token-checked or fenced writes, upserts.

        :raises PostgresUnavailableError: the server cannot be reached (no connection within
            the pool's timeout, or the retry's connection lost too): an ``EnqueueError``
            naming the DSN, which a waiting ``Job.get()`` waits out and the worker's loops
            report in one line. Any other error (a lock timeout, a full disk, a statement
            the server refused) is raised as it is, and not repeated.
        """
        try:
            with self.connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            if isinstance(exc, PoolTimeout):  # waited 30 s for a connection: down, not lost
                raise unreachable(self.dsn, exc) from exc
            if not connection_lost(exc):
                raise
            log.warning("PostgreSQL connection lost (%s); retrying once on a new one",
                        " ".join(str(exc).split()))
        # A restart terminates every session at once: test the idle ones first, or the retry
        # may take another that is about to be dropped (a hunt saw a scheduler read fail
        # twice in one fast restart). The pool replaces the broken ones, so the retry waits
        # for a connection made after the server came back.
        self.pool.check()
        try:
            with self.connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            if isinstance(exc, PoolTimeout) or connection_lost(exc):
                raise unreachable(self.dsn, exc) from exc
            raise

    def rows(self, query: bytes | sql.Composed, params: Params | None = None) -> list[Any]:
        """Every row ``query`` returns, run by :meth:`run` (so only for a statement that is
        safe to repeat). Why these three: most calls of both backends are one statement and
        its rows, first row or row count; each keeps :meth:`run`'s retry on a lost
        connection in force without a ``lambda`` written out at every call."""
        return self.run(lambda conn: conn.execute(query, params).fetchall())

    def row(self, query: bytes | sql.Composed, params: Params | None = None) -> Any | None:
        """The first row ``query`` returns (``None``: none), run by :meth:`run`."""
        return self.run(lambda conn: conn.execute(query, params).fetchone())

    def changed(self, query: bytes | sql.Composed, params: Params | None = None) -> int:
        """How many rows ``query`` changed (its ``rowcount``), run by :meth:`run`."""
        return self.run(lambda conn: conn.execute(query, params).rowcount)

    def close(self) -> None:
        if self.pid == os.getpid():
            self.pool.close(timeout=2.0)


_stores: dict[tuple[int, str, str], Store] = {}
_lock = threading.Lock()
#: Schemas of contract-suite namespaces, dropped when the process that created them exits.
_temporary: set[tuple[str, str]] = set()
_created: set[tuple[str, str]] = set()
_OWNER = os.getpid()
TEST_NAMESPACE_PREFIX = "nuvom-test-"


def mark_temporary(dsn: str, schema: str) -> None:
    """Drop ``schema`` at exit if this process creates it: the contract suite hands each
    test a fresh namespace (``nuvom-test-…``) and has no teardown hook for server-side
    storage, so without this every run of ``nuvom plugin test postgres`` would leave a
    schema per test behind. A test whose subprocesses may be the first to use the server
    (the kernel's end-to-end tests) must use another prefix and drop its schemas itself,
    or a producer's or worker's exit would drop them from under the test."""
    _temporary.add((dsn, schema))


@atexit.register
def _drop_temporary() -> None:
    if os.getpid() != _OWNER:
        return
    for dsn, schema in sorted(_temporary & _created):
        try:
            with psycopg.connect(dsn, autocommit=True, **connect_kwargs("nuvom-cleanup")) as c:
                c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
        except psycopg.Error as exc:  # pragma: no cover - server gone at exit
            log.warning("could not drop test schema %s: %s", schema, exc)


def acquire(settings: PostgresSettings, namespace: str = "") -> Store:
    """The process's store for this DSN and schema, opened (and migrated) on first use, and
    claimed for ``namespace`` (the core setting; ``""``: none).

    :raises SchemaOwnerError: the schema belongs to another namespace.
    """
    key = (os.getpid(), settings.dsn, settings.schema)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(settings, namespace)
            if store.created:
                _created.add((settings.dsn, settings.schema))
        else:
            store.claim(namespace)
        store.users += 1
        return store


def release(store: Store) -> None:
    """Drop one user of ``store``; the last one closes its pool."""
    with _lock:
        store.users -= 1
        if store.users > 0:
            return
        _stores.pop((store.pid, store.dsn, store.schema), None)
    store.close()
