"""What the PostgreSQL tests share besides fixtures: the test server's DSN and schema cleanup.

A module of its own, not ``conftest``: with several plugin test folders in one pytest run,
``import conftest`` finds whichever folder's conftest came first on ``sys.path``.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql

from nuvom_kernel.models import Lease, Message
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_postgres.schema import MIGRATIONS

DSN = os.environ.get("NUVOM_TEST_POSTGRES_DSN", "host=127.0.0.1 user=postgres dbname=postgres")


def drop_schema(schema: str, dsn: str = DSN) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def messages_of(task: str, n: int, **fields: object) -> list[Message]:
    """``n`` contract messages of ``task`` (the limit tests' backlogs)."""
    return [make_message(task=task, **fields) for _ in range(n)]  # type: ignore[arg-type]


def ids_of(leases: list[Lease]) -> list[str]:
    return [le.id for le in leases]


def schema_at_version(conn: psycopg.Connection[Any], schema: str, version: int) -> None:
    """Build ``schema`` as version ``version`` left it (the migration tests' start)."""
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {}.version (version integer NOT NULL)").format(ident))
    for number in range(1, version + 1):
        conn.execute(sql.SQL(MIGRATIONS[number - 1]).format(s=ident))  # type: ignore[arg-type]
        conn.execute(sql.SQL("INSERT INTO {}.version VALUES (%s)").format(ident), (number,))
