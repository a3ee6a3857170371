"""A pytest plugin giving each of the kernel's end-to-end tests its own PostgreSQL schema.

Why it exists: ``tests/conftest.py`` builds kernels with a fixed environment and no
namespace (``BackendContext.namespace`` stays empty), so on a server every test would share
the schema ``nuvom`` and see the jobs and records of the tests before it (a ``.map()`` of
10,000 counted 20,002 records). Until the kernel's fixtures hand out a namespace, run the
kernel tests with this plugin::

    PYTHONPATH=nuvom_plugins_postgres/tests python -m pytest -p kernel_e2e_isolation \\
        tests/test_runtime.py tests/test_semantics.py tests/test_worker_process.py

It writes ``[plugins.postgres] schema = "kt_<random>"`` into the test's project folder
(read by in-process kernels and by ``nuvom runworker`` started there alike) and drops the
schema after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

DSN = os.environ.get("NUVOM_TEST_POSTGRES_DSN", "host=127.0.0.1 user=postgres dbname=postgres")


@pytest.fixture(autouse=True)
def _postgres_schema_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    if "project" not in request.fixturenames:
        yield
        return
    project: Path = request.getfixturevalue("project")
    schema = f"kt_{uuid.uuid4().hex[:12]}"
    toml = project / ".nuvom_plugins.toml"
    if not toml.exists():
        toml.write_text(f'[plugins.postgres]\ndsn = "{DSN}"\nschema = "{schema}"\n')
    yield
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
