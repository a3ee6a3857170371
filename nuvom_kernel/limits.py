"""Concurrency limits (``@task(concurrency=N)``): collected here, enforced by the queue.

A limit is enforced where jobs are claimed, by the backend, counting live leases of every
process on the store: a job held back by its task's limit is simply not claimable, so it
consumes no attempt and no retry and logs nothing, and other tasks' jobs are claimed past it.
The worker tells its queue backend the limits before its first claim; they come from the
tasks the process imported and from the discovery manifest (``nuvom discover tasks``
records a literal ``concurrency=``), so a worker knows them before it imports anything. A
process pool's worker imports no task module, its children do: they report each task's
limit with every job they run, so it learns them as a thread pool learns them by importing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nuvom_kernel.discovery import read_manifest
from nuvom_kernel.errors import BackendCapabilityError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nuvom_kernel.kernel import Kernel

__all__ = ["apply_limits", "concurrency_limits"]

log = logging.getLogger("nuvom.worker")


def concurrency_limits(kernel: Kernel, reported: Mapping[str, int | None] | None = None
                       ) -> dict[str, int]:
    """Task name → limit: the manifest's, overridden by what a process pool's children
    ``reported`` (``None``: no limit) and by the tasks this process imported (the code the
    worker runs is newer than a manifest discovered before it changed)."""
    limits: dict[str, int] = {}
    try:
        manifest = read_manifest(kernel.data_dir) or {}
    except ValueError:
        manifest = {}
    for entry in manifest.get("tasks", []):
        limit = (entry.get("options") or {}).get("concurrency")
        if type(limit) is int and limit >= 1:
            limits[entry["name"]] = limit
    registry = kernel.registry
    imported = {name: options.concurrency for name in registry.names()
                if (options := getattr(registry.get(name), "options", None)) is not None}
    for overrides in (dict(reported or {}), imported):  # (a copy: children report meanwhile)
        for name, limit in overrides.items():
            if limit is None:  # the task's code has no limit: the manifest's is lifted
                limits.pop(name, None)
            else:
                limits[name] = limit
    return limits


def apply_limits(kernel: Kernel, applied: dict[str, int] | None = None,
                 reported: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """Hand the limits to the queue backend unless they equal ``applied`` (what it was
    given last); refuse them if it cannot enforce them. Returns the limits."""
    limits = concurrency_limits(kernel, reported)
    queue = kernel.queue
    if limits == (applied or {}):
        return limits
    if not queue.capabilities.concurrency:
        raise BackendCapabilityError(
            f"queue backend {queue.name!r} cannot limit concurrency, so concurrency= of "
            f"task(s) {', '.join(sorted(limits))} cannot be honoured; use a backend that "
            "declares 'concurrency' (sqlite, file, redis, postgres, memory) or drop the option")
    queue.set_concurrency_limits(limits)
    log.info("concurrency limits: %s", ", ".join(f"{k}={v}" for k, v in sorted(limits.items())))
    return limits
