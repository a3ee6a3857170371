"""The data every part of Nuvom agrees on: job states, queue messages, leases, job records.

Backends never see user objects: a queue backend moves :class:`Message` values (an id, a few
routing fields and an opaque ``body``), and a result backend stores :class:`JobRecord` values
whose fields are all JSON-native. Keeping both shapes here, in one module, is what lets every
backend report the same states (DESIGN.md §3).
"""

from __future__ import annotations

import enum
import time
from typing import Any

import attrs

__all__ = [
    "TERMINAL_STATES",
    "Backoff",
    "Job",
    "JobRecord",
    "JobStatus",
    "Lease",
    "Message",
    "TaskOptions",
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


@attrs.frozen
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
    """

    id: str
    body: bytes
    queue: str = "default"
    priority: int = 0
    available_at: float = 0.0
    created_at: float = attrs.field(factory=time.time)


@attrs.frozen
class Lease:
    """A claimed message: the holder must ack, retry or release it before ``expires_at``.

    :param token: the fencing token of this claim. Backends compare it on ack, retry, extend
        and release, so a worker that lost its lease cannot overwrite the next holder's work.
    :param deliveries: how many times this message has been claimed, this claim included;
        it keeps counting across retries and crash recoveries.
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
    failures: int = 0  # attempts that ended in an error (drives the retry policy)
    history: list[dict[str, Any]] = attrs.field(factory=list)
    attempts: int = 0  # deliveries so far, this one included (crash re-runs count)
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

    def refresh(self) -> Job:
        """Reload status, result, error and attempts from the backends; returns ``self``."""
        from nuvom_kernel.kernel import get_kernel

        kernel = self._kernel or get_kernel()
        kernel.refresh_job(self)
        return self

    def cancel(self) -> bool:
        """Cancel this job if it has not started; ``True`` if it is now CANCELLED."""
        from nuvom_kernel.kernel import get_kernel

        return bool((self._kernel or get_kernel()).cancel(self))

    def get(self, timeout: float | None = None, poll_secs: float = 0.05) -> Any:
        """Wait for the outcome and return the task's value.

        :raises nuvom_kernel.errors.JobFailedError: the job ended FAILED (carries the remote
            exception's type, message and traceback).
        :raises TimeoutError: no outcome within ``timeout`` seconds.
        """
        from nuvom_kernel.kernel import get_kernel

        kernel = self._kernel or get_kernel()
        return kernel.wait_for(self, timeout=timeout, poll_secs=poll_secs)
