"""Schema versions on the real server: an older schema is migrated in place, a newer one is
refused with a clear error, and the ``jobs_state_valid`` check (v2) refuses rows in a state
no statement reads — so PostgreSQL needs no quarantine for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from pg_support import DSN, schema_at_version
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend, SchemaOwnerError
from nuvom_plugins_postgres.schema import (
    ADVISORY_CLASS,
    SCHEMA_VERSION,
    SchemaVersionError,
    migrate,
)


@pytest.fixture
def conn(schema: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(DSN, autocommit=True) as c:
        yield c



def _old_job(conn: psycopg.Connection, schema: str) -> None:
    """One waiting job, written as a version of the plugin before this one would have."""
    conn.execute(sql.SQL(
        "INSERT INTO {}.jobs (id, queue, state, priority, created_at, available_at, task, "
        "body) VALUES ('old', 'default', 0, 0, %s, %s, 't', '\\x00')").format(
        sql.Identifier(schema)), (time.time(), time.time()))


def test_a_v1_schema_with_jobs_is_migrated_and_keeps_them(
        conn: psycopg.Connection, schema: str, context: BackendContext,
        settings: dict[str, object]) -> None:
    schema_at_version(conn, schema, 1)
    _old_job(conn, schema)
    queue = PostgresQueue.from_settings(settings, context)
    try:
        found = conn.execute(sql.SQL("SELECT max(version) FROM {}.version").format(
            sql.Identifier(schema))).fetchone()
        assert found is not None and found[0] == SCHEMA_VERSION == 7
        assert queue.qsize() == 1 and [le.id for le in queue.claim(5)] == ["old"]
    finally:
        queue.close()


def test_a_newer_schema_is_refused_by_name(conn: psycopg.Connection, schema: str) -> None:
    schema_at_version(conn, schema, SCHEMA_VERSION)
    conn.execute(sql.SQL("INSERT INTO {}.version VALUES (%s)").format(
        sql.Identifier(schema)), (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=f"{schema}.*version {SCHEMA_VERSION + 1}"):
        migrate(conn, schema)


@pytest.mark.parametrize(("state", "extra"), [
    (7, {}), (-1, {}),
    (1, {}),  # scheduled, no due time: never promoted
    (2, {"token": "t"}),  # leased, no deadline: never recovered
    (2, {"lease_expires_at": "now()"}),  # leased by nobody
])
def test_rows_in_impossible_states_are_refused(
        queue: PostgresQueue, conn: psycopg.Connection, schema: str, state: int,
        extra: dict[str, str]) -> None:
    names = ", ".join(extra)
    values = ", ".join("%s" for _ in extra)
    statement = sql.SQL(
        "INSERT INTO {}.jobs (id, queue, state, priority, created_at, available_at, task, "
        "body" + (", " + names if extra else "") + ") VALUES ('bad', 'default', %s, 0, 1.0, "
        "1.0, 't', '\\x00'" + (", " + values if extra else "") + ")").format(
        sql.Identifier(schema))
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_state_valid"):
        conn.execute(statement, [state, *extra.values()])
    queue.enqueue(make_message())
    assert queue.qsize() == 1, "the queue works on beside the refused row"


# --- the namespace that owns a schema (v5) ----------------------------------------------

def _colliding(context: BackendContext) -> BackendContext:
    """A namespace that differs from ``context``'s but folds to the same schema
    (``pgtest-1a2b`` and ``PGTEST_1a2b`` are both ``nuvom_pgtest_1a2b``)."""
    return BackendContext(visibility_timeout_secs=30.0,
                          namespace=context.namespace.replace("-", "_").upper())


def _owner(conn: psycopg.Connection, schema: str) -> list[tuple[object, ...]]:
    return conn.execute(sql.SQL("SELECT namespace FROM {}.owner").format(
        sql.Identifier(schema))).fetchall()


def test_a_namespace_folding_onto_another_ones_schema_is_refused(
        conn: psycopg.Connection, schema: str, context: BackendContext,
        settings: dict[str, object]) -> None:
    first = PostgresQueue.from_settings(settings, context)
    try:
        first.enqueue(make_message())
        other = _colliding(context)
        assert other.namespace != context.namespace
        # this process's store is cached: the check must not be skipped for it…
        with pytest.raises(SchemaOwnerError) as refused:
            PostgresResultBackend.from_settings(settings, other)
    finally:
        first.close()
    with pytest.raises(SchemaOwnerError):  # …nor for a fresh open
        PostgresQueue.from_settings(settings, other)
    text = str(refused.value)
    for said in (repr(schema), f"belongs to namespace {context.namespace!r}",
                 f"namespace is {other.namespace!r}", "folded", "NUVOM_NAMESPACE",
                 "NUVOM_PLUGINS__POSTGRES__SCHEMA"):
        assert said in text, said
    assert _owner(conn, schema) == [(context.namespace,)]
    again = PostgresQueue.from_settings(settings, context)  # its owner opens it as before
    try:
        assert again.qsize() == 1
    finally:
        again.close()
    # No namespace: the schema named outright (an operator's tool), neither claimed nor
    # refused.
    named = PostgresQueue.from_settings({**settings, "schema": schema}, BackendContext())
    try:
        assert named.schema == schema and named.qsize() == 1
    finally:
        named.close()
    assert _owner(conn, schema) == [(context.namespace,)]


def test_a_v4_schema_is_adopted_by_the_first_namespace_that_opens_it(
        conn: psycopg.Connection, schema: str, context: BackendContext,
        settings: dict[str, object]) -> None:
    schema_at_version(conn, schema, 4)
    _old_job(conn, schema)
    queue = PostgresQueue.from_settings(settings, context)
    try:
        assert queue.qsize() == 1, "the upgraded deployment keeps its queue"
    finally:
        queue.close()
    assert _owner(conn, schema) == [(context.namespace,)]
    with pytest.raises(SchemaOwnerError, match=f"belongs to namespace {context.namespace!r}"):
        PostgresQueue.from_settings(settings, _colliding(context))


def test_two_namespaces_claiming_a_new_schema_at_once_leave_one_owner(
        conn: psycopg.Connection, schema: str, context: BackendContext) -> None:
    """Under the migration lock: the second claim finds the first one's row."""
    other = _colliding(context).namespace
    migrate(conn, schema)  # created without a namespace: no owner yet
    assert _owner(conn, schema) == []
    with psycopg.connect(DSN, autocommit=True) as second:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                         (ADVISORY_CLASS, f"{schema}:migrate"))
            result: dict[str, BaseException | None] = {}

            def claim() -> None:
                try:
                    migrate(second, schema, other)
                    result["error"] = None
                except BaseException as exc:  # reported below
                    result["error"] = exc

            racer = threading.Thread(target=claim)
            racer.start()
            deadline = time.monotonic() + 10.0
            while not conn.execute(  # the racer waits on our lock
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND pid = %s", (second.info.backend_pid,)).fetchone():
                assert time.monotonic() < deadline, "the racer never waited on the lock"
            conn.execute(sql.SQL("INSERT INTO {}.owner (namespace) VALUES (%s)").format(
                sql.Identifier(schema)), (context.namespace,))
        racer.join(10.0)
    assert isinstance(result["error"], SchemaOwnerError)
    assert _owner(conn, schema) == [(context.namespace,)]
