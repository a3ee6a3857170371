"""The data every part of Nuvom agrees on: job states, queue messages, leases, job records.

Backends never see user objects: a queue backend moves :class:`Message` values (an id, a few
routing fields and an opaque ``body``), and a result backend stores :class:`JobRecord` values
whose fields are all JSON-native. Keeping both shapes here, in one module, is what lets every
backend report the same states (see ``docs/architecture.md``).
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any

import attrs

__all__ = [
    "TERMINAL_STATES",
    "Backoff",
    "JobRecord",
    "JobStatus",
    "Lease",
    "Message",
    "ScheduleState",
    "Settlement",
    "StepFailed",
    "TaskOptions",
    "UnreadableState",
    "supersedes",
]


class JobStatus(str, enum.Enum):
    """One state machine for every backend.

    ``QUEUED → RUNNING → SUCCEEDED | FAILED``, ``RUNNING → RETRYING → QUEUED`` and
    ``QUEUED | RETRYING → CANCELLED``. ``UNKNOWN`` is what a lookup of an id never seen
    returns: it is never stored.
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
    concurrency: int | None = None  # most jobs of the task running at once, all workers
    unique: bool = False  # .delay() with equal arguments returns the unfinished job
    unique_for: float | None = None  # ... or a finished one, for this many seconds
    expires_secs: float | None = None  # not started this long after enqueue: fail, unrun

    def __attrs_post_init__(self) -> None:
        if self.concurrency is not None and (type(self.concurrency) is not int
                                             or self.concurrency < 1):
            raise ValueError(f"concurrency must be an int >= 1 or None, got "
                             f"{self.concurrency!r}")
        if self.unique_for is not None and not 0 < self.unique_for < math.inf:
            raise ValueError(f"unique_for must be > 0 seconds, got {self.unique_for!r}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        # (`not a < x < b`: also refuses NaN, which every comparison calls false)
        if self.expires_secs is not None and not 0 < self.expires_secs < math.inf:
            raise ValueError(f"expires_secs must be a finite number > 0, or None for no "
                             f"expiry; got {self.expires_secs}")
        if self.timeout_secs is not None and not 0 < self.timeout_secs < math.inf:
            raise ValueError(f"timeout_secs must be a finite number > 0, or None for no "
                             f"limit; got {self.timeout_secs}")
        if self.retry_delay_secs is not None and not 0 <= self.retry_delay_secs < math.inf:
            raise ValueError(f"retry_delay_secs must be a finite number >= 0, got "
                             f"{self.retry_delay_secs}")
        if not 0 <= self.backoff_max_secs < math.inf:
            raise ValueError(f"backoff_max_secs must be a finite number >= 0, got "
                             f"{self.backoff_max_secs}")


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

    def checked_body(self) -> bytes:
        """The body as ``bytes``, once the two fields every backend stores as given are
        checked: a message a backend would store broken fails its push, naming the message.

        :raises TypeError: the body is not bytes-like.
        :raises ValueError: the id is not a non-empty string.
        """
        body = self.body
        if type(body) is not bytes:
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"message {self.id!r}: body must be bytes, got "
                                f"{type(body).__name__}")
            body = bytes(body)
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"message id must be a non-empty string, got {self.id!r}")
        return body


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
    task: str  # the task's registered name
    status: JobStatus
    queue: str = "default"
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    module: str | None = None  # where the task lives; lets `nuvom retry job` re-enqueue it
    options: dict[str, Any] = attrs.field(factory=dict)  # queue + non-default options
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

    @property
    def run_secs(self) -> float | None:
        """How long its last attempt ran; ``None`` if none did. Why not ``finished_at -
        started_at`` alone: a job cancelled while it waited out a retry delay keeps its
        attempt's ``started_at`` and finishes at the cancel, and read as having run until
        then; its history's last attempt says how long that one ran."""
        if self.status is JobStatus.CANCELLED:
            last = self.history[-1] if isinstance(self.history, list) and self.history else {}
            if not isinstance(last, dict):  # a hand-edited record
                return None
            start, end = last.get("started_at"), last.get("finished_at")
        else:
            start, end = self.started_at, self.finished_at
        if not isinstance(start, int | float) or not isinstance(end, int | float):
            return None
        return float(end) - float(start)

    def to_dict(self) -> dict[str, Any]:
        """A shallow dict (nested lists and dicts are shared, not copied): backends encode it
        at once, and a recursive ``attrs.asdict`` per job was a visible share of the drain."""
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        values = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        if "task" not in values and "func_name" in data:  # stored before the field's rename
            values["task"] = data["func_name"]
        values["status"] = JobStatus(values["status"])
        for name in _RECORD_TIMES:  # a hand-edited row ('yesterday') failed every reader
            value = values.get(name)  # later, with a TypeError, in arithmetic
            if value is not None and (type(value) is bool or not isinstance(value, int | float)):
                raise ValueError(f"{name} is {value!r}, not a time (epoch seconds)")
        for name in _RECORD_COUNTS:
            if name in values and type(values[name]) is not int:
                raise ValueError(f"{name} is {values[name]!r}, not a whole number")
        return cls(**values)


_RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(JobRecord))
_RECORD_TIMES = ("created_at", "started_at", "finished_at", "updated_at")
_RECORD_COUNTS = ("attempts", "max_retries", "run")


def supersedes(new: JobRecord, old: JobRecord | None) -> bool:
    """Whether a result backend may replace ``old`` with ``new`` (the fencing rule).

    Why: a worker that lost its lease (paused, stalled past the visibility timeout) still
    finishes its attempt and tries to record it, possibly after the worker that took the job
    over recorded a newer outcome. Records are ordered by ``(run, attempts)``: a later run or
    a later attempt of the same run replaces an earlier one, never the reverse; within one
    attempt, a terminal record is never replaced by a non-terminal one (a RETRYING written
    late must not undo a SUCCEEDED). Every backend applies this rule atomically with its
    write (under its lock, in its transaction, in its script).

    A CANCELLED record is final for its run: only a later run (``nuvom retry job``) or
    another CANCELLED replaces it. A worker cut off past its lease still finishes its
    attempt, and the job may be cancelled while it sits in its queue again; where the
    queue and the records are separate stores, nothing else stops that late outcome from
    being stored over the operator's cancel (a higher attempt of the same run, or the same
    attempt ending), and the job, never acked, read SUCCEEDED though it was cancelled.
    """
    if old is None:
        return True
    if (old.status is JobStatus.CANCELLED and new.run == old.run
            and new.status is not JobStatus.CANCELLED):
        return False
    if (new.run, new.attempts) != (old.run, old.attempts):
        return (new.run, new.attempts) > (old.run, old.attempts)
    return not (old.status in TERMINAL_STATES and new.status not in TERMINAL_STATES)


@attrs.frozen
class UnreadableState:
    """A stored schedule state that could not be decoded, as read.

    Why it is kept on the placeholder a backend returns instead (see
    :func:`nuvom_kernel.result_backend.read_schedule_state`): ``stored`` is what the
    compare-and-set that replaces the entry checks is still there — the entry's own
    ``updated_at`` cannot be trusted, it is part of what is unreadable — so two workers
    that read the same damaged entry replace it once; ``problem`` and ``where`` say what
    was wrong and in which store (``nuvom schedule list`` shows them).
    """

    problem: str
    where: str
    #: The entry exactly as stored (a column's text or bytes, a Redis value), or, for a
    #: value decoded from a larger document (the file backend's JSON file), its canonical
    #: JSON text (:func:`~nuvom_kernel.result_backend.stored_text`).
    stored: str | bytes


@attrs.define
class ScheduleState:
    """What a result backend keeps per schedule (see :mod:`nuvom_kernel.scheduler`).

    ``last_tick`` (epoch seconds) is how far the schedule has been handled: every tick up
    to it was fired, missed or skipped. Advancing it is a compare-and-set, which is what
    lets any number of workers run the scheduler and fire each tick once.

    ``unreadable`` is never stored: it marks the placeholder a backend returns for an entry
    it could not decode (the schedule goes on as a new one; the compare-and-set that
    replaces the entry compares ``unreadable.stored`` instead of ``updated_at``).
    """

    name: str
    last_tick: float | None = None
    last_job_id: str | None = None
    last_run: float | None = None  # the tick of ``last_job_id``
    fired: int = 0
    missed: int = 0
    skipped: int = 0
    updated_at: float = attrs.field(factory=time.time)
    unreadable: UnreadableState | None = attrs.field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """The stored fields (``unreadable`` describes a read, it is not state)."""
        return attrs.asdict(self, filter=lambda field, _: field.name != "unreadable")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleState:
        names = {f.name for f in attrs.fields(cls)} - {"unreadable"}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.frozen
class Settlement:
    """One outcome to settle: store ``record``, then ack ``lease`` — or, with ``retry_in``
    set, put the message back for another attempt after that many seconds (with ``body``,
    the re-encoded envelope, when given). The record is fenced (:func:`supersedes`) and the
    ack or retry by the lease's token; nothing is acked whose record was refused.
    ``workflow`` names the workflow of a step: its final outcome advances the graph."""

    lease: Lease
    record: JobRecord
    retry_in: float | None = None
    body: bytes | None = None
    workflow: str | None = None


@attrs.frozen
class StepFailed:
    """What a workflow step with ``on_failure("continue")`` passes to its dependents in
    place of its result: the failed step's job id and its last error."""

    job_id: str
    error_type: str | None
    message: str | None
