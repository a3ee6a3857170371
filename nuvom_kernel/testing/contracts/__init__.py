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

import importlib
import sys
from typing import TYPE_CHECKING, Any

_MODULES = ("_support", "_queue_base", "queue_leases", "queue_retries", "queue_state",
            "queue_removal", "queue_concurrency", "queue_workflows", "queue_browse",
            "queue_limits", "queue", "heartbeats", "results", "discovery", "schedule_damage")
#: What this package exports, by module. Loaded on first use: the suites need pytest, but
#: ``targets`` (what ``nuvom plugin new`` and ``nuvom plugin test`` resolve before any
#: test runs) must import where pytest is not installed, so those commands can say so.
_EXPORTS = {"BackendFactory": "_support", "make_message": "_support",
            "make_record": "_support", "requires": "_support", "wait_until": "_support",
            "DiscovererContract": "discovery", "QueueBackendContract": "queue",
            "ResultBackendContract": "results", "check_damaged_entry": "schedule_damage"}

try:
    import pytest
except ImportError:
    pass
else:
    # Plain ``assert`` in an installed package is only explained by pytest if the module
    # is registered for rewriting before its first import.
    if not any(f"{__name__}.{m}" in sys.modules for m in _MODULES):
        pytest.register_assert_rewrite(*(f"{__name__}.{m}" for m in _MODULES))

if TYPE_CHECKING:
    from nuvom_kernel.testing.contracts._support import (
        BackendFactory,
        make_message,
        make_record,
        requires,
        wait_until,
    )
    from nuvom_kernel.testing.contracts.discovery import DiscovererContract
    from nuvom_kernel.testing.contracts.queue import QueueBackendContract
    from nuvom_kernel.testing.contracts.results import ResultBackendContract
    from nuvom_kernel.testing.contracts.schedule_damage import check_damaged_entry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "BackendFactory",
    "DiscovererContract",
    "QueueBackendContract",
    "ResultBackendContract",
    "check_damaged_entry",
    "make_message",
    "make_record",
    "requires",
    "wait_until",
]
