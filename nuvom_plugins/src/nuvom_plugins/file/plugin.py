"""Entry point ``nuvom: file``: registers the file queue and result backends."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_plugins.file.queue import FileJobQueue
from nuvom_plugins.file.results import FileResultBackend


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [FileJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [FileResultBackend]
