"""Running jobs: the pool (:mod:`.pool`), its lease monitor (:mod:`.monitor`) and the one
settle path every outcome takes (:mod:`.settle`).

The pool is imported on first use of ``Worker`` (PEP 562): a process-pool child
(:mod:`.child`) lives in this package and starts without it (its start-up is what
``--max-tasks-per-child`` pays per replacement).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nuvom_kernel.worker.current import current_job

if TYPE_CHECKING:
    from nuvom_kernel.worker.pool import Worker

__all__ = ["Worker", "current_job"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        value = importlib.import_module("nuvom_kernel.worker.pool").Worker
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nuvom_kernel.worker' has no attribute {name!r}")
