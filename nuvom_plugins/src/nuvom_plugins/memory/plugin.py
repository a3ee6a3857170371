"""Registers the memory backends (entry point ``memory`` in the ``nuvom`` group)."""

from __future__ import annotations

import attrs

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.values import Seconds
from nuvom_plugins.memory import MemoryJobQueue, MemoryResultBackend


@attrs.frozen
class MemorySettings:
    """``[plugins.memory]``: the result backend takes no settings.

    :param visibility_timeout_secs: the queue's lease length; default the kernel's setting.
    """

    visibility_timeout_secs: Seconds = 30.0  # (finite, at most 366 days)


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [MemoryJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [MemoryResultBackend]


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    return {"memory": MemorySettings}
