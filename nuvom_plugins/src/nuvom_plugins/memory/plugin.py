"""Registers the memory backends (entry point ``memory`` in the ``nuvom`` group)."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_plugins.memory.backend import MemoryJobQueue, MemoryResultBackend


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [MemoryJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [MemoryResultBackend]
