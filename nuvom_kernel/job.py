"""The :class:`Job` handle: what ``.delay()`` returns and what the worker builds from each
message. Its fields are the job's data; its methods read the job's state through the kernel
the handle is bound to (models import nothing above them, so the handle is handed its kernel
instead of finding one).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Coroutine, Sequence
from datetime import datetime
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Generic, overload

import attrs

from nuvom_kernel.errors import EnqueueError, NuvomError
from nuvom_kernel.models import JobStatus, TaskOptions
from nuvom_kernel.views import QueuedJob, WorkerInfo, holders
from nuvom_kernel.worker.current import holds_a_slot

log = logging.getLogger("nuvom")

if TYPE_CHECKING:  # a bare ``Job`` means ``Job[Any]`` (PEP 696 default; typing gets it in 3.13)
    from typing_extensions import TypeVar

    R = TypeVar("R", default=Any)
else:
    from typing import TypeVar

    R = TypeVar("R")
T = TypeVar("T")

__all__ = ["Job", "not_in_a_task"]


@attrs.define(eq=False)
class Job(Generic[R]):
    """A job: one call of a task, from ``.delay()`` to its outcome; ``R`` is what the task
    returns, so ``add.delay(1, 2).get()`` is an ``int`` to a type checker when ``add`` is.

    The producer gets one back from ``.delay()``; the worker builds one from each message.
    ``refresh()`` and ``get()`` read the current state from the configured backends, so a
    handle works from any process (``nuvom_kernel.get_job(job_id)``).
    """

    id: str
    task: str  # the task's registered name
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    module: str | None = None
    options: TaskOptions = attrs.field(factory=TaskOptions)
    created_at: float = attrs.field(factory=time.time)
    enqueued_by: str = ""  # "host:pid"
    trace_id: str = ""
    failures: int = 0  # attempts of this run that ended in an error (drives the retry policy)
    history: list[dict[str, Any]] = attrs.field(factory=list)
    attempts: int = 0  # starts of the function in this run, this one included (a start
    #                    whose worker was killed counts)
    run: int = 1  # 1 for the first run; `nuvom retry job` starts the next one
    headers: dict[str, Any] = attrs.field(factory=dict)  # schedule tick, trace context, links
    status: JobStatus = JobStatus.QUEUED
    result: Any = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    deadline: float | None = None  # monotonic; set while running with a timeout
    _kernel: Any = attrs.field(default=None, repr=False, alias="kernel")

    @property
    def queue(self) -> str:
        """The named queue the job waits in (its task's, or ``apply_async(queue=...)``)."""
        return self.options.queue

    @property
    def scheduled_for(self) -> datetime | None:
        """The tick this job was fired for (timezone-aware UTC), ``None`` if not scheduled."""
        tick = self.headers.get("scheduled_for")
        return datetime.fromisoformat(tick) if tick else None

    @property
    def priority(self) -> int:
        """Higher runs first (its task's, or ``apply_async(priority=...)``)."""
        return self.options.priority

    def time_remaining(self) -> float | None:
        """Seconds left before this attempt's timeout (``None`` without a timeout)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def _bound(self) -> Any:
        """The kernel this handle reads through. ``.delay()``, ``.map()``, ``get_job()`` and
        the worker bind every handle they make (models import nothing above them, so a
        handle cannot find the process's kernel by itself)."""
        if self._kernel is None:
            raise NuvomError(
                f"this Job handle ({self.id}) is not bound to a kernel: get handles from "
                "task.delay(), task.map() or nuvom_kernel.get_job(job_id) (a handle "
                "unpickled in another process: send its id and call get_job(id) there)")
        return self._kernel

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its kernel (a process's backends and plugins, which do not
        pickle: the error named a closure deep inside them); the unpickled handle says to
        bind it with ``get_job(id)``. A copy in this process keeps it (``copy.copy`` and
        ``copy.deepcopy``)."""
        state = {field.name: getattr(self, field.name) for field in attrs.fields(Job)}
        state["_kernel"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __copy__(self) -> Job[R]:
        return attrs.evolve(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Job[R]:
        import copy

        clone: Job[R] = object.__new__(type(self))
        clone.__setstate__({**copy.deepcopy(self.__getstate__(), memo),
                            "_kernel": self._kernel})
        return clone

    def refresh(self) -> Job[R]:
        """Reload status, result, error and attempts from the backends; returns ``self``."""
        self._bound().refresh_job(self)
        return self

    def cancel(self) -> bool:
        """Cancel this job if it has not started; ``True`` if it is now CANCELLED."""
        return bool(self._bound().cancel(self))

    # An ``async def`` task's jobs are ``Job[Coroutine[..., T]]`` (what calling it inline
    # gives; pyright says ``types.CoroutineType``, which the invariant ``R`` does not match
    # to ``Coroutine``); what they settle with, so what ``get()`` returns, is ``T``.
    @overload
    def get(self: Job[Coroutine[Any, Any, T]], timeout: float | None = None,
            poll_secs: float = 0.05, *, allow_in_task: bool = False) -> T: ...

    @overload
    def get(self: Job[CoroutineType[Any, Any, T]], timeout: float | None = None,
            poll_secs: float = 0.05, *, allow_in_task: bool = False) -> T: ...

    @overload
    def get(self, timeout: float | None = None, poll_secs: float = 0.05, *,
            allow_in_task: bool = False) -> R: ...

    def get(self, timeout: float | None = None, poll_secs: float = 0.05, *,
            allow_in_task: bool = False) -> Any:
        """Wait for the outcome and return the task's value (``None`` when the task has
        ``store_result=False``).

        :raises nuvom_kernel.JobFailedError: the job ended FAILED (carries the remote
            exception's type, message and traceback).
        :raises nuvom_kernel.JobCancelledError: it was cancelled before it ran.
        :raises nuvom_kernel.UnknownJobError: no backend knows the id.
        :raises TimeoutError: no outcome within ``timeout`` seconds.
        :raises nuvom_kernel.NuvomError: called inside a task (see :meth:`_not_in_task`)
            unless ``allow_in_task``.
        """
        check_wait(timeout, poll_secs)
        if not allow_in_task:
            self._not_in_task()
        return self._bound().wait_for(self, timeout=timeout, poll_secs=poll_secs)

    def _not_in_task(self) -> None:
        not_in_a_task(f"job {self.id} ({self.task})")

    @overload
    async def get_async(self: Job[Coroutine[Any, Any, T]], timeout: float | None = None,
                        poll_secs: float = 0.05, *, allow_in_task: bool = False) -> T: ...

    @overload
    async def get_async(self: Job[CoroutineType[Any, Any, T]], timeout: float | None = None,
                        poll_secs: float = 0.05, *, allow_in_task: bool = False) -> T: ...

    @overload
    async def get_async(self, timeout: float | None = None, poll_secs: float = 0.05, *,
                        allow_in_task: bool = False) -> R: ...

    async def get_async(self, timeout: float | None = None, poll_secs: float = 0.05, *,
                        allow_in_task: bool = False) -> Any:
        """:meth:`get` for asyncio callers: waits without blocking the event loop (each
        poll reads the backend from a thread, then sleeps on the loop). Refused inside a
        task unless ``allow_in_task``, as :meth:`get` is."""
        import asyncio

        check_wait(timeout, poll_secs)
        if not allow_in_task:
            self._not_in_task()
        kernel = self._bound()
        deadline = None if timeout is None else time.monotonic() + timeout
        stall = StoreStall()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.to_thread(kernel.wait_for, self, 0.0, poll_secs,
                                               stall=stall)
            except TimeoutError:
                if left is not None and left <= 0:
                    raise still_waiting(self, timeout, kernel) from None
            except EnqueueError as exc:
                if left is not None and left <= 0:
                    raise
                stall.failed(self, exc, timeout)
            await asyncio.sleep(poll_secs if left is None else min(poll_secs, left))


def not_in_a_task(what: str) -> None:
    """Refuse to wait for ``what`` inside a task a worker runs, as Celery does: the waiting
    task holds its slot, and once every slot waits for a job no slot is left to run it (with
    one thread, at once); the worker hangs and a first signal cannot drain it. Eager mode
    runs each job as it is enqueued, on its caller's thread: waiting there is fine.

    :raises NuvomError: the calling code runs as a job in a worker's slot.
    """
    running = holds_a_slot()
    if running is not None:
        raise NuvomError(
            f"task {running.task!r} (job {running.id}) waits for {what} with get(): a task "
            "waiting for another job holds its worker slot, and when every slot waits, "
            "nothing runs the jobs they wait for. Chain the steps instead (chain(first.s(...), "
            "then.s()), or group(...).then(...)); or pass allow_in_task=True when other "
            "workers are sure to serve that queue")


class StoreStall:
    """One wait's polls (``get()``, ``get_async()``) across a store that stops answering.

    Why: a store away for a moment while a caller waited (a Redis or PostgreSQL restart, a
    failover) made ``get()`` raise for jobs that then succeeded (2 of 20,000 across a 4 s
    Redis outage), which their callers took for failures. A store that answered once in
    the wait is waited for, with one warning; one that never answered (a wrong URL, a
    server down) is said at once. With no timeout, the wait lasts as long as the outage.
    """

    def __init__(self) -> None:
        self.answered = False  # a poll of this wait read the store
        self.warned = False

    def failed(self, job: Job[Any], exc: EnqueueError, timeout: float | None) -> None:
        """A poll could not read the store: go on waiting, or raise ``exc`` if it never
        answered this wait."""
        if not self.answered:
            raise exc
        if not self.warned:
            self.warned = True
            log.warning("job %s: its state cannot be read now (%s); still waiting%s", job.id,
                        exc, "" if timeout is None else f" until the timeout ({timeout} s)")


def check_wait(timeout: Any, poll_secs: Any) -> None:
    """Refuse a wait ``get()`` cannot keep: a ``nan`` timeout, never past, waited for the
    outcome however long it took; ``"1"`` failed adding it to the clock; ``-1`` timed out
    at once saying the job was "still QUEUED after -1 s"."""
    for name, value, fits, what in (
            ("timeout", timeout, timeout is None or (_real(timeout) and timeout >= 0),
             "a number of seconds >= 0, or None to wait as long as the job takes"),
            ("poll_secs", poll_secs, _real(poll_secs) and 0 < poll_secs < math.inf,
             "a number of seconds > 0 (how often the store is asked)")):
        if not fits:
            raise (ValueError if _real(value) else TypeError)(
                f"get({name}=...) takes {what}; got {value!r}")


def _real(value: Any) -> bool:
    """A number of seconds: numpy's included, ``True`` not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def still_waiting(job: Job[Any], timeout: float | None, kernel: Any) -> TimeoutError:
    """What ``get()`` and ``get_async()`` raise when ``timeout`` passed: the job's state and
    the usual cause of a job that never starts, named from the live workers' heartbeats.

    Why: a program run from another folder (a web app started by systemd elsewhere)
    enqueues into that folder's new store, and the message asked "is a worker running?"
    while one plainly ran, on the project's store. It names the store now, and what its
    live workers serve."""
    if job.status is not JobStatus.QUEUED:
        hint = ""
    else:
        hint = queued_hint(job.options.queue, kernel) or (
            "; is a worker running (`nuvom runworker`) on the same backend, serving queue "
            f"{job.options.queue!r}?")
    return TimeoutError(f"job {job.id} ({job.task}) is still {job.status} after {timeout} s"
                        f"{hint}")


def live_workers(kernel: Any) -> list[Any] | None:
    """The live workers, or ``None`` where the result backend keeps no heartbeats."""
    if not type(kernel.results).capabilities.heartbeats:
        return None
    return list(kernel.results.live_workers())


def running_on(kernel: Any) -> dict[str, WorkerInfo]:
    """The live worker running each job, as of its last heartbeat: a lease does not say who
    holds it. Empty where the result backend keeps no heartbeats or cannot be read now: a
    listing of the queue must not fail because the result store does."""
    try:
        return holders(live_workers(kernel) or [])
    except Exception:
        return {}


def workers_of(kernel: Any, jobs: Sequence[QueuedJob]) -> dict[str, str]:
    """The id of the live worker running each RUNNING job of ``jobs`` (``nuvom list jobs``,
    the dashboard's ``/queued``); heartbeats are read only for a page that has one."""
    running = [j.id for j in jobs if j.state is JobStatus.RUNNING]
    held = running_on(kernel) if running else {}
    return {job_id: held[job_id].id for job_id in running if job_id in held}


def serving(workers: list[Any], queue: str) -> list[Any]:
    """Those of ``workers`` that serve ``queue`` (one started without ``--queue`` serves
    every queue)."""
    return [w for w in workers if not w.queues or queue in w.queues]


def queued_hint(queue: str, kernel: Any) -> str | None:
    """Why a QUEUED job may not start, from the store's live workers; ``None`` where the
    result backend keeps no heartbeats (or cannot be read: a hint is never an error)."""
    try:
        workers = live_workers(kernel)
    except Exception:
        return None
    if workers is None:
        return None
    # the heartbeats are the result store's: named too where it is not the queue's
    store = kernel.queue.location or f"queue backend {kernel.queue.name!r}"
    beats = kernel.results.location or f"result backend {kernel.results.name!r}"
    if beats != store:
        store = f"{store}, its heartbeats read from {beats}"
    if not workers and type(kernel.queue).capabilities.in_process:  # no other process
        return (f"; no worker runs on this store ({store}): start one in this process "
                "(`nuvom_kernel.Worker`, or the `nuvom_worker` test fixture)")
    if not workers:
        return (f"; no live worker runs on this store ({store}): start one with `nuvom "
                "runworker` where it uses the same store (the same folder and NUVOM_* "
                "settings: the working directory decides where the store is)")
    served_by = serving(workers, queue)
    if not served_by:
        served = sorted({q for w in workers for q in w.queues})
        return (f"; the live workers on this store ({store}) serve queue(s) "
                f"{', '.join(served)}, not {queue!r}: start one with `nuvom runworker "
                f"--queue {queue}`")
    return (f"; {len(served_by)} live worker(s) on this store ({store}) serve queue "
            f"{queue!r}: busy with other jobs, or this one waits for its delay, a "
            "concurrency limit or a retry (`nuvom status`, `nuvom inspect job`)")
