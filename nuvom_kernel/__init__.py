"""Nuvom's microkernel: models, hook specs, plugin manager, config, dispatcher, worker, CLI.

Importing this package has no side effects: it loads no plugin, reads no file and touches no
environment variable. The kernel is built on first use (``.delay()``, ``get_job()``, the CLI).
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("nuvom")
"""Marker for hook implementations, in plugins and in the kernel's own modules."""

__version__ = "0.1.0"

from nuvom_kernel.backends import SPI_VERSION  # noqa: E402
from nuvom_kernel.errors import (  # noqa: E402
    JobCancelledError,
    JobFailedError,
    NuvomError,
    UnknownJobError,
)
from nuvom_kernel.kernel import Kernel, get_job, get_kernel, set_kernel, use_kernel  # noqa: E402
from nuvom_kernel.models import Job, JobStatus  # noqa: E402
from nuvom_kernel.task import Task, task  # noqa: E402
from nuvom_kernel.worker import Worker, current_job  # noqa: E402

__all__ = [
    "SPI_VERSION",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobStatus",
    "Kernel",
    "NuvomError",
    "Task",
    "UnknownJobError",
    "Worker",
    "__version__",
    "current_job",
    "get_job",
    "get_kernel",
    "hookimpl",
    "set_kernel",
    "task",
    "use_kernel",
]
