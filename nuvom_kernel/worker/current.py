"""The job the calling code runs as: ``current_job()`` and the block that sets it.

A module of its own, importing only the ``Job`` model: a process-pool child
(:mod:`.child`) sets it around each call and must start without importing the pool.
"""

from __future__ import annotations

from contextvars import ContextVar

from nuvom_kernel.job import Job

__all__ = ["bind_job", "current_job"]

# A context variable, not a thread-local: coroutines of the asyncio pool share one thread,
# and asyncio.gather's children inherit their parent's context.
_current: ContextVar[Job | None] = ContextVar("nuvom_current_job", default=None)


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
