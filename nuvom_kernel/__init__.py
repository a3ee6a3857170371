"""Nuvom's microkernel: models, hook specs, plugin manager, config, producer, worker, CLI.

Importing this package has no side effects: it loads no plugin, reads no file and touches no
environment variable. The kernel is built on first use (``.delay()``, ``get_job()``, the CLI).
Names are imported on first access, so a plugin's ``from nuvom_kernel import hookimpl``
loads the markers only, not the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nuvom_kernel.markers import hookimpl

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "SPI_VERSION": "backends",
    "Job": "job",
    "JobStatus": "models",
    "JobCancelledError": "errors",
    "JobFailedError": "errors",
    "NoRetry": "errors",
    "NuvomError": "errors",
    "Retry": "errors",
    "UnknownJobError": "errors",
    "ChildKilledError": "errors",
    "JobExpiredError": "errors",
    "JobTimeoutError": "errors",
    "SerializationError": "errors",
    "UnknownTaskError": "errors",
    "Kernel": "kernel",
    "get_job": "kernel",
    "get_kernel": "kernel",
    "set_kernel": "kernel",
    "use_kernel": "kernel",
    "Task": "task",
    "cron": "schedules",
    "every": "schedules",
    "task": "task",
    "Worker": "worker",
    "current_job": "worker",
    "StepFailed": "models",
    "Workflow": "workflow",
    "chain": "workflow",
    "get_workflow": "workflow",
    "group": "workflow",
}

__all__ = [
    "SPI_VERSION",
    "ChildKilledError",
    "Job",
    "JobCancelledError",
    "JobExpiredError",
    "JobFailedError",
    "JobStatus",
    "JobTimeoutError",
    "Kernel",
    "NoRetry",
    "NuvomError",
    "Retry",
    "SerializationError",
    "StepFailed",
    "Task",
    "UnknownJobError",
    "UnknownTaskError",
    "Worker",
    "Workflow",
    "__version__",
    "chain",
    "cron",
    "current_job",
    "every",
    "get_job",
    "get_kernel",
    "get_workflow",
    "group",
    "hookimpl",
    "set_kernel",
    "task",
    "use_kernel",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nuvom_kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nuvom_kernel.{module}"), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from nuvom_kernel.backends import SPI_VERSION
    from nuvom_kernel.errors import (
        ChildKilledError,
        JobCancelledError,
        JobExpiredError,
        JobFailedError,
        JobTimeoutError,
        NoRetry,
        NuvomError,
        Retry,
        SerializationError,
        UnknownJobError,
        UnknownTaskError,
    )
    from nuvom_kernel.job import Job
    from nuvom_kernel.kernel import Kernel, get_job, get_kernel, set_kernel, use_kernel
    from nuvom_kernel.models import JobStatus, StepFailed
    from nuvom_kernel.schedules import cron, every
    from nuvom_kernel.task import Task, task
    from nuvom_kernel.worker import Worker, current_job
    from nuvom_kernel.workflow import Workflow, chain, get_workflow, group
