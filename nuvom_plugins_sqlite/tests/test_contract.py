"""The kernel's shared contract suites, run against the SQLite backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nuvom_kernel.testing.contracts import (
    BackendFactory,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend


class TestSQLiteQueueContract(QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self) -> BackendFactory:
        return BackendFactory(SQLiteJobQueue)

    @pytest.fixture
    def settle_results(self, queue_backend: SQLiteJobQueue) -> Iterator[SQLiteResultBackend]:
        """Records in the queue's own file: what ``settle_many`` settles in one transaction."""
        results = SQLiteResultBackend(queue_backend.path)
        yield results
        results.close()


class TestSQLiteResultContract(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(SQLiteResultBackend)
