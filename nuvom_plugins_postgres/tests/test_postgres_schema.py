"""Schema versions on the real server: an older schema is migrated in place, a newer one is
refused with a clear error, and the ``jobs_state_valid`` check (v2) refuses rows in a state
no statement reads — so PostgreSQL needs no quarantine for them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_postgres import PostgresQueue
from nuvom_plugins_postgres.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaVersionError,
    migrate,
)


@pytest.fixture
def conn(schema: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(DSN, autocommit=True) as c:
        yield c


def _at_version(conn: psycopg.Connection, schema: str, version: int) -> None:
    """Build ``schema`` as version ``version`` left it."""
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {}.version (version integer NOT NULL)").format(ident))
    for number in range(1, version + 1):
        conn.execute(sql.SQL(MIGRATIONS[number - 1]).format(s=ident))  # type: ignore[arg-type]
        conn.execute(sql.SQL("INSERT INTO {}.version VALUES (%s)").format(ident), (number,))


def test_a_v1_schema_with_jobs_is_migrated_and_keeps_them(
        conn: psycopg.Connection, schema: str, context: BackendContext,
        settings: dict[str, object]) -> None:
    _at_version(conn, schema, 1)
    conn.execute(sql.SQL(
        "INSERT INTO {}.jobs (id, queue, state, priority, created_at, available_at, task, "
        "body) VALUES ('old', 'default', 0, 0, %s, %s, 't', '\\x00')").format(
        sql.Identifier(schema)), (time.time(), time.time()))
    queue = PostgresQueue.from_settings(settings, context)
    try:
        found = conn.execute(sql.SQL("SELECT max(version) FROM {}.version").format(
            sql.Identifier(schema))).fetchone()
        assert found is not None and found[0] == SCHEMA_VERSION == 4
        assert queue.qsize() == 1 and [le.id for le in queue.claim(5)] == ["old"]
    finally:
        queue.close()


def test_a_newer_schema_is_refused_by_name(conn: psycopg.Connection, schema: str) -> None:
    _at_version(conn, schema, SCHEMA_VERSION)
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
