"""The job the calling code runs as: ``current_job()`` and the block that sets it.

A module of its own, importing nothing of the kernel at run time: a process-pool child
(:mod:`.child`) sets it around each call and must start without importing the pool, and
the ``Job`` handle reads it (``get()`` inside a task).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the handle's module asks this one whether a task holds a slot
    from nuvom_kernel.job import Job

__all__ = ["bind_job", "current_job", "holds_a_slot", "in_a_pool"]

# A context variable, not a thread-local: coroutines of the asyncio pool share one thread,
# and asyncio.gather's children inherit their parent's context.
_current: ContextVar[Job | None] = ContextVar("nuvom_current_job", default=None)
# Set on the threads a started pool runs tasks on (and in a process-pool child): a task
# there holds one of the worker's slots while it runs. Eager mode runs a job on its
# caller's thread, which holds none.
_pooled: ContextVar[bool] = ContextVar("nuvom_in_a_pool", default=False)


def in_a_pool() -> None:
    """Mark the calling thread as one a pool runs tasks on (its context, and so the
    coroutines and ``to_thread`` calls started from it)."""
    _pooled.set(True)


def holds_a_slot() -> Job | None:
    """The job the calling code runs as when it holds a worker's slot (``None`` outside a
    pool's task): waiting there for another job can leave no slot to run it."""
    return _current.get() if _pooled.get() else None


def current_job() -> Job | None:
    """The job the calling task is running as (``None`` outside a worker); use
    ``current_job().time_remaining()`` to stop cooperatively before a timeout."""
    return _current.get()


class bind_job:  # lower case: used like contextlib.suppress
    """``current_job()`` is ``job`` inside the block (restored after: a task that runs
    another in eager mode gets its own job back). A class, not ``@contextmanager``: it is
    entered once per job, and the generator version cost three times as much."""

    __slots__ = ("_job", "_token")

    def __init__(self, job: Job) -> None:
        self._job = job

    def __enter__(self) -> Job:
        self._token = _current.set(self._job)
        return self._job

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)
