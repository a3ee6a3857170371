"""The kernel's shared contract suites, run against the SQLite backends."""

from __future__ import annotations

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


class TestSQLiteResultContract(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(SQLiteResultBackend)
