"""The memory backends pass the kernel's contract suites: a subclass and a fixture each."""

from __future__ import annotations

import pytest

from nuvom_kernel.backends import BackendContext
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


def test_result_backend_ignores_the_queues_settings() -> None:
    """``[plugins.memory]`` is one table for both backends: a lease length set for the
    queue must not break building the result backend."""
    built = MemoryResultBackend.from_settings({"visibility_timeout_secs": 5.0},
                                              BackendContext())
    assert isinstance(built, MemoryResultBackend)
