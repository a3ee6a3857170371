"""The data every part of Nuvom agrees on: job states, queue messages, leases, job records.

Backends never see user objects: a queue backend moves :class:`Message` values (an id, a few
routing fields and an opaque ``body``), and a result backend stores :class:`JobRecord` values
whose fields are all JSON-native. Keeping both shapes here, in one module, is what lets every
backend report the same states (see ``docs/architecture.md``).
"""

from __future__ import annotations

import enum
import time
from typing import Any

import attrs

from nuvom_kernel.errors import NuvomError

__all__ = [
    "TERMINAL_STATES",
    "Backoff",
    "Job",
    "JobRecord",
    "JobStatus",
    "Lease",
    "Message",
    "Settlement",
    "TaskOptions",
    "supersedes",
]


class JobStatus(str, enum.Enum):
    """One state machine for every backend.

    ``QUEUED → RUNNING → SUCCEEDED | FAILED``, ``RUNNING → RETRYING → QUEUED`` and
    ``QUEUED → CANCELLED``. ``UNKNOWN`` is what a lookup of an id never seen returns: it is
    never stored.
    """

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:  # "SUCCEEDED", not "JobStatus.SUCCEEDED", in logs and tables
        return self.value


TERMINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Backoff(str, enum.Enum):
    """How the delay between failed attempts grows."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"


@attrs.frozen(cache_hash=True)  # hashed per enqueue (options_to_wire's cache key)
class TaskOptions:
    """Everything ``@task(...)`` accepts besides the function; copied into every job."""

    retries: int = 0
    retry_delay_secs: float | None = None  # None: take the configured default
    backoff: Backoff = Backoff.FIXED
    backoff_max_secs: float = 3600.0
    jitter: bool = True
    timeout_secs: float | None = None
    store_result: bool = True
    queue: str = "default"
    priority: int = 0
    description: str | None = None
    tags: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.timeout_secs is not None and self.timeout_secs <= 0:
            raise ValueError(f"timeout_secs must be > 0 or None, got {self.timeout_secs}")
        if self.retry_delay_secs is not None and self.retry_delay_secs < 0:
            raise ValueError(f"retry_delay_secs must be >= 0, got {self.retry_delay_secs}")


@attrs.frozen
class Message:
    """What a queue backend stores: routing fields it may index, and a body it must not parse.

    :param id: the job id; unique per queue backend.
    :param body: the encoded job, opaque to the backend.
    :param queue: the named queue this message waits in.
    :param priority: higher runs first; FIFO within one priority.
    :param available_at: epoch seconds before which the message must not be handed out
        (retry delays, scheduling). ``0`` means now.
    :param created_at: epoch seconds of the first enqueue; FIFO order within a priority.
    :param task: the task's name, readable without decoding the body (claim-time limits,
        stats per task). Backends store and return it; they need not index it.
    :param failures: attempts of this message that ended in an exception or a timeout.
        The backend keeps it: ``0`` on push, one more on every ``retry``. With the lease's
        ``deliveries`` it tells, before the body is decoded, how many deliveries produced no
        outcome at all (a worker crashed or was killed), which ``max_deliveries`` bounds.
    """

    id: str
    body: bytes
    queue: str = "default"
    priority: int = 0
    available_at: float = 0.0
    created_at: float = attrs.field(factory=time.time)
    task: str = ""
    failures: int = 0


@attrs.frozen
class Lease:
    """A claimed message: the holder must ack, retry or release it before ``expires_at``.

    :param token: the fencing token of this claim. Backends compare it on ack, retry, extend
        and release, so a worker that lost its lease cannot overwrite the next holder's work.
    :param deliveries: how many times this message has been claimed since it was pushed,
        this claim included (a ``release`` takes its claim back). It keeps counting across
        retries and crash recoveries, and is the job's *attempt* number in its current run:
        result writes are fenced by ``(run, attempt)``.
    """

    message: Message
    token: str
    deliveries: int
    expires_at: float

    @property
    def id(self) -> str:
        return self.message.id


@attrs.define
class JobRecord:
    """The durable state of one job as a result backend keeps it; JSON-native fields only.

    ``result`` holds the value in its wire-safe form (see :mod:`nuvom_kernel.serialization`);
    ``history`` holds one dict per finished attempt (attempt, status, error, started_at,
    finished_at) so the final failure keeps every earlier one.

    ``run`` (1 for the first; ``nuvom retry job`` starts the next), ``attempts`` (the lease's
    delivery count, so the attempt that wrote the record) and ``token`` (the lease's fencing
    token) fence writes: a result backend never lets a record replace one it does not
    :func:`supersede`.
    """

    job_id: str
    func_name: str
    status: JobStatus
    queue: str = "default"
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    module: str | None = None  # where the task lives; lets `nuvom retry job` re-enqueue it
    options: dict[str, Any] = attrs.field(factory=dict)  # the job's TaskOptions, wire form
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    attempts: int = 0
    max_retries: int = 0
    history: list[dict[str, Any]] = attrs.field(factory=list)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = attrs.field(factory=time.time)  # ordering key for newest-first lists
    worker: str | None = None  # "host:pid"
    trace_id: str | None = None
    run: int = 1
    token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A shallow dict (nested lists and dicts are shared, not copied): backends encode it
        at once, and a recursive ``attrs.asdict`` per job was a visible share of the drain."""
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        values = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        values["status"] = JobStatus(values["status"])
        return cls(**values)


_RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(JobRecord))


def supersedes(new: JobRecord, old: JobRecord | None) -> bool:
    """Whether a result backend may replace ``old`` with ``new`` (the fencing rule).

    Why: a worker that lost its lease (paused, stalled past the visibility timeout) still
    finishes its attempt and tries to record it, possibly after the worker that took the job
    over recorded a newer outcome. Records are ordered by ``(run, attempts)``: a later run or
    a later attempt of the same run replaces an earlier one, never the reverse; within one
    attempt, a terminal record is never replaced by a non-terminal one (a RETRYING written
    late must not undo a SUCCEEDED). Every backend applies this rule atomically with its
    write (under its lock, in its transaction, in its script).
    """
    if old is None:
        return True
    if (new.run, new.attempts) != (old.run, old.attempts):
        return (new.run, new.attempts) > (old.run, old.attempts)
    return not (old.status in TERMINAL_STATES and new.status not in TERMINAL_STATES)


@attrs.frozen
class Settlement:
    """One outcome to settle: store ``record``, then ack ``lease`` — or, with ``retry_in``
    set, put the message back for another attempt after that many seconds (with ``body``,
    the re-encoded envelope, when given). The record is fenced (:func:`supersedes`) and the
    ack or retry by the lease's token; nothing is acked whose record was refused."""

    lease: Lease
    record: JobRecord
    retry_in: float | None = None
    body: bytes | None = None


@attrs.define(eq=False)
class Job:
    """A job: one call of a task, from ``.delay()`` to its outcome.

    The producer gets one back from ``.delay()``; the worker builds one from each message.
    ``refresh()`` and ``get()`` read the current state from the configured backends, so a
    handle works from any process (``nuvom_kernel.get_job(job_id)``).
    """

    id: str
    func_name: str
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
        return self.options.queue

    @property
    def priority(self) -> int:
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
                "task.delay(), task.map() or nuvom_kernel.get_job(job_id)")
        return self._kernel

    def refresh(self) -> Job:
        """Reload status, result, error and attempts from the backends; returns ``self``."""
        self._bound().refresh_job(self)
        return self

    def cancel(self) -> bool:
        """Cancel this job if it has not started; ``True`` if it is now CANCELLED."""
        return bool(self._bound().cancel(self))

    def get(self, timeout: float | None = None, poll_secs: float = 0.05) -> Any:
        """Wait for the outcome and return the task's value (``None`` when the task has
        ``store_result=False``).

        :raises nuvom_kernel.JobFailedError: the job ended FAILED (carries the remote
            exception's type, message and traceback).
        :raises nuvom_kernel.JobCancelledError: it was cancelled before it ran.
        :raises nuvom_kernel.UnknownJobError: no backend knows the id.
        :raises TimeoutError: no outcome within ``timeout`` seconds.
        """
        return self._bound().wait_for(self, timeout=timeout, poll_secs=poll_secs)

    async def get_async(self, timeout: float | None = None, poll_secs: float = 0.05) -> Any:
        """:meth:`get` for asyncio callers: waits without blocking the event loop (each
        poll reads the backend from a thread, then sleeps on the loop)."""
        import asyncio

        kernel = self._bound()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.to_thread(kernel.wait_for, self, 0.0, poll_secs)
            except TimeoutError:
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {self.id} had no outcome within {timeout} s"
                                       ) from None
            await asyncio.sleep(poll_secs if left is None else min(poll_secs, left))
