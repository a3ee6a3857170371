"""The only ``Test*`` subclasses of the contracts: run against whatever the runner resolved.

``nuvom plugin test`` passes this file to pytest explicitly (so its name does not need to
match ``test_*.py``) together with ``-p nuvom_kernel.testing.contracts.runner``, which
parametrizes the ``nuvom_*_target`` arguments with every backend class of the named plugins.
"""

from __future__ import annotations

from typing import Any

import pytest

from nuvom_kernel.discovery import Discoverer
from nuvom_kernel.testing.contracts import (
    BackendFactory,
    DiscovererContract,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_kernel.testing.contracts.targets import Target


class TestInstalledQueue(QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self, nuvom_queue_target: Target, nuvom_settings: Any
                           ) -> BackendFactory:
        return BackendFactory(nuvom_queue_target.cls, nuvom_settings(nuvom_queue_target))


class TestInstalledResults(ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self, nuvom_result_target: Target,
                            nuvom_settings: Any) -> BackendFactory:
        return BackendFactory(nuvom_result_target.cls, nuvom_settings(nuvom_result_target))


class TestInstalledDiscoverer(DiscovererContract):
    @pytest.fixture
    def discoverer(self, nuvom_discoverer_target: Target) -> Discoverer:
        return nuvom_discoverer_target.cls()  # type: ignore[no-any-return]
