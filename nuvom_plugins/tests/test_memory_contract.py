"""The memory backends pass the kernel's contract suites: a subclass and a fixture each."""

from __future__ import annotations

import pytest

from nuvom_kernel.testing.contracts import (
    BackendFactory,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_plugins.memory import MemoryJobQueue, MemoryResultBackend


class TestMemoryQueue(QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self) -> BackendFactory:
        return BackendFactory(MemoryJobQueue)


class TestMemoryResults(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(MemoryResultBackend)
