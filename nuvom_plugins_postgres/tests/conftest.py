"""Shared fixtures: every test gets its own schema on the real server, dropped afterwards.

The server is the machine's PostgreSQL (``NUVOM_TEST_POSTGRES_DSN``, default
``host=127.0.0.1 user=postgres dbname=postgres``); tests never mock it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_support import DSN, drop_schema

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend


@pytest.fixture
def settings() -> dict[str, object]:
    """A ``[plugins.postgres]`` table on the test server."""
    return {"dsn": DSN}


@pytest.fixture
def context() -> BackendContext:
    return BackendContext(visibility_timeout_secs=30.0,
                          namespace=f"pgtest-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def schema(context: BackendContext) -> Iterator[str]:
    """The schema this test's backends use; dropped after the test."""
    name = f"nuvom_{context.namespace.replace('-', '_')}"
    yield name
    drop_schema(name)


@pytest.fixture
def queue(settings: dict[str, object], context: BackendContext, schema: str
          ) -> Iterator[PostgresQueue]:
    q = PostgresQueue.from_settings(settings, context)
    assert q.schema == schema
    yield q
    q.close()


@pytest.fixture
def results(settings: dict[str, object], context: BackendContext, schema: str
            ) -> Iterator[PostgresResultBackend]:
    r = PostgresResultBackend.from_settings(settings, context)
    yield r
    r.close()


@pytest.fixture
def kernel(tmp_path: Path, schema: str) -> Iterator[Kernel]:
    """A kernel whose queue and results are this test's schema, set as the current one."""
    k = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
        "NUVOM_PLUGINS__POSTGRES__DSN": DSN, "NUVOM_PLUGINS__POSTGRES__SCHEMA": schema})
    with use_kernel(k):
        yield k
    k.close()


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection of the test's own, outside the queue's pool."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        yield conn
