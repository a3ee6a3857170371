"""Reusable contract test suites for backends and discoverers.

A plugin's whole conformance test is a subclass plus one fixture::

    import pytest
    from nuvom_kernel.testing.contracts import BackendFactory, QueueBackendContract
    from my_plugin.queue import MyQueue

    class TestMyQueue(QueueBackendContract):
        @pytest.fixture
        def make_queue_backend(self):
            return BackendFactory(MyQueue)

The bases end in ``Contract`` so pytest never collects them by accident; your ``Test*``
subclass is what runs. ``nuvom plugin test NAME`` runs the same classes against an installed
plugin.
"""

from __future__ import annotations

import sys

import pytest

_MODULES = ("_support", "_queue_base", "queue_concurrency", "queue", "heartbeats", "results",
            "discovery")
# Plain ``assert`` in an installed package is only explained by pytest if the module is
# registered for rewriting before its first import.
if not any(f"{__name__}.{m}" in sys.modules for m in _MODULES):
    pytest.register_assert_rewrite(*(f"{__name__}.{m}" for m in _MODULES))

from nuvom_kernel.testing.contracts._support import (  # noqa: E402
    BackendFactory,
    make_message,
    make_record,
    requires,
    wait_until,
)
from nuvom_kernel.testing.contracts.discovery import DiscovererContract  # noqa: E402
from nuvom_kernel.testing.contracts.queue import QueueBackendContract  # noqa: E402
from nuvom_kernel.testing.contracts.results import ResultBackendContract  # noqa: E402

__all__ = [
    "BackendFactory",
    "DiscovererContract",
    "QueueBackendContract",
    "ResultBackendContract",
    "make_message",
    "make_record",
    "requires",
    "wait_until",
]
