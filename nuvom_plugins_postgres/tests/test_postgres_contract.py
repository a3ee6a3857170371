"""The kernel's shared contract suites, run against the real PostgreSQL server.

Each test gets a fresh namespace from the suite, so its own schema; the schema is dropped
when the test ends (and, for ``nuvom plugin test``, when the process exits).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_support import DSN, drop_schema

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import (
    BackendFactory,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend
from nuvom_plugins_postgres.settings import schema_name


@pytest.fixture(autouse=True)
def _drop_test_schema(backend_context: BackendContext) -> Iterator[None]:
    yield
    drop_schema(schema_name("nuvom", backend_context.namespace))


class TestPostgresQueueContract(QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self) -> BackendFactory:
        return BackendFactory(PostgresQueue, {"dsn": DSN})

    @pytest.fixture
    def settle_results(self, backend_context: BackendContext
                       ) -> Iterator[PostgresResultBackend]:
        """Records in the queue's own schema: what ``settle_many`` settles in one
        transaction."""
        results = PostgresResultBackend.from_settings({"dsn": DSN}, backend_context)
        yield results
        results.close()


class TestPostgresResultContract(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(PostgresResultBackend, {"dsn": DSN})
