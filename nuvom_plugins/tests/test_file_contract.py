"""The kernel's shared contract suites, run against the file backends and the AST scanner."""

from __future__ import annotations

import pytest

from nuvom_kernel.testing.contracts import (
    BackendFactory,
    DiscovererContract,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_plugins.discovery import AstDiscoverer
from nuvom_plugins.file import FileJobQueue, FileResultBackend


class TestFileQueueContract(QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self) -> BackendFactory:
        return BackendFactory(FileJobQueue, {"fsync": False})


class TestFileResultContract(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(FileResultBackend)


class TestAstDiscovererContract(DiscovererContract):
    @pytest.fixture
    def discoverer(self) -> AstDiscoverer:
        return AstDiscoverer()
