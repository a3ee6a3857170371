"""The backend SPI: a few abstract primitives per backend, every convenience built on top.

A plugin author implements the primitives (huey's storage shape); the kernel, the CLI and the
contract suite only ever call the conveniences, so a backend written against this module works
everywhere. Backends move :class:`~nuvom_kernel.models.Message` and
:class:`~nuvom_kernel.models.JobRecord` values; they never import user code.

A minimal queue plugin (``my_queue/plugin.py``)::

    from nuvom_kernel import hookimpl
    from nuvom_kernel.backends import QueueBackend, Capabilities

    class ListQueue(QueueBackend):
        name = "listq"
        capabilities = Capabilities(delayed=True)
        def push(self, messages): ...
        def claim(self, n, queues=None): ...
        def ack(self, lease): ...
        def retry(self, lease, *, delay_secs, body=None): ...
        def release(self, lease): ...
        def extend(self, lease, secs): ...
        def qsize(self, queues=None): ...
        def clear(self, queues=None): ...

    @hookimpl
    def nuvom_register_queue_backends():
        return [ListQueue]
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from nuvom_kernel.models import JobRecord, JobStatus, Lease, Message

__all__ = [
    "BackendContext",
    "Capabilities",
    "QueueBackend",
    "QueueStats",
    "ResultBackend",
]


@attrs.frozen
class Capabilities:
    """What a backend promises; the kernel refuses options it cannot honour, and the contract
    suite skips the tests of promises it does not make."""

    persistent: bool = False
    multiprocess_safe: bool = False
    priorities: bool = False
    delayed: bool = False
    blocking_dequeue: bool = False

    def as_list(self) -> list[str]:
        return [f.name for f in attrs.fields(type(self)) if getattr(self, f.name)]


@attrs.frozen
class BackendContext:
    """Kernel settings a backend may need when it is built (paths, lease length)."""

    data_dir: Path = Path(".nuvom")
    visibility_timeout_secs: float = 30.0


@attrs.define
class QueueStats:
    """What ``nuvom status`` shows about a queue backend; backends fill what they know."""

    depth: dict[str, int] = attrs.field(factory=dict)  # waiting messages per queue name
    delayed: int = 0
    in_flight: int = 0
    oldest_age_secs: float | None = None
    quarantined: list[str] = attrs.field(factory=list)  # one line per quarantined entry


class _Backend(abc.ABC):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Build the backend from its ``[plugins.<name>]`` table and the kernel's context.

        The default passes the table as keyword arguments; override to derive paths from
        ``context.data_dir`` or to validate settings with a clear error.
        """
        return cls(**dict(settings))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and file handles."""


class QueueBackend(_Backend):
    """A queue with at-least-once delivery: claimed messages are leases until acked.

    Primitives to implement: :meth:`push`, :meth:`claim`, :meth:`ack`, :meth:`retry`,
    :meth:`release`, :meth:`extend`, :meth:`qsize`, :meth:`clear`. A backend that cannot
    block on new work gets adaptive polling from :meth:`wait_for_messages` for free; one that
    can (a condition, BLPOP, LISTEN) overrides it and declares ``blocking_dequeue``.
    """

    #: Longest sleep between two polls of an idle queue (seconds); bounds cross-process pickup
    #: latency for backends without a blocking wait.
    poll_interval_max: ClassVar[float] = 0.1
    poll_interval_min: ClassVar[float] = 0.002

    def __init__(self, *, visibility_timeout_secs: float = 30.0) -> None:
        if visibility_timeout_secs <= 0:
            raise ValueError(
                f"visibility_timeout_secs must be > 0, got {visibility_timeout_secs}"
            )
        self.visibility_timeout_secs = visibility_timeout_secs
        self._cond = threading.Condition()
        self._generation = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        params = {"visibility_timeout_secs": context.visibility_timeout_secs, **settings}
        return cls(**params)

    # --- primitives -----------------------------------------------------------------------

    @abc.abstractmethod
    def push(self, messages: Sequence[Message]) -> None:
        """Store every message atomically where the backend can (all or none)."""

    @abc.abstractmethod
    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        """Lease up to ``n`` available messages without waiting, highest priority first,
        FIFO within a priority; ``queues=None`` means every queue. Expired leases count as
        available again (their delivery count keeps growing)."""

    @abc.abstractmethod
    def ack(self, lease: Lease) -> bool:
        """Delete the message; ``False`` (and no change) if ``lease.token`` no longer holds it."""

    @abc.abstractmethod
    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        """Put the message back, invisible for ``delay_secs``, optionally with a new body;
        its delivery count is kept. ``False`` if the lease was lost."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> bool:
        """Return a message that was claimed but never started, visible at once and with its
        delivery count as before the claim. ``False`` if the lease was lost."""

    @abc.abstractmethod
    def extend(self, lease: Lease, secs: float) -> bool:
        """Push the lease's expiry to ``now + secs``. ``False`` if the lease was lost."""

    @abc.abstractmethod
    def qsize(self, queues: Sequence[str] | None = None) -> int:
        """Messages waiting (ready or delayed, not leased)."""

    @abc.abstractmethod
    def clear(self, queues: Sequence[str] | None = None) -> int:
        """Delete every message, leased ones included; return how many."""

    # --- optional primitives --------------------------------------------------------------

    def peek_state(self, job_id: str) -> JobStatus | None:
        """Where the message stands, if the backend can tell cheaply: QUEUED, RETRYING
        (delayed) or RUNNING (leased); ``None`` if absent or unknown."""
        return None

    def cancel(self, job_id: str) -> bool:
        """Delete a message that is waiting (ready or delayed, not leased); ``True`` if it
        was removed. A leased message is not touched: its worker decides its outcome."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot cancel jobs")

    def stats(self) -> QueueStats:
        """Depth and health for ``nuvom status``; override to report more."""
        return QueueStats(depth={"*": self.qsize()})

    def wait_for_messages(self, timeout: float, generation: int) -> None:
        """Block up to ``timeout`` seconds or until a push in this process bumps the
        generation counter past ``generation``."""
        with self._cond:
            if self._generation == generation:
                self._cond.wait(timeout)

    # --- conveniences ---------------------------------------------------------------------

    def enqueue(self, message: Message) -> None:
        self.enqueue_many([message])

    def enqueue_many(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        self.push(messages)
        self.notify()

    def notify(self) -> None:
        """Wake this process's waiters; call after anything that makes a message available."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def pop_batch(
        self, n: int, timeout: float = 0.0, queues: Sequence[str] | None = None
    ) -> list[Lease]:
        """Lease up to ``n`` messages, waiting up to ``timeout`` seconds for the first one.

        Waiting polls with adaptive backoff (from ``poll_interval_min`` doubling to
        ``poll_interval_max``) and returns early when this process pushes, so an idle worker
        costs almost no CPU while in-process pickup stays immediate.
        """
        if n <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        interval = self.poll_interval_min
        while True:
            generation = self._generation
            leases = self.claim(n, queues)
            if leases:
                return leases
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self.wait_for_messages(min(interval, remaining), generation)
            interval = min(interval * 2, self.poll_interval_max)

    def dequeue(
        self, timeout: float | None = None, queues: Sequence[str] | None = None
    ) -> Lease | None:
        """Lease one message, waiting up to ``timeout`` seconds (``None``: don't wait)."""
        leases = self.pop_batch(1, timeout or 0.0, queues)
        return leases[0] if leases else None

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """Ack several leases; override to do it in one transaction (the worker settles
        finished jobs in batches, so this is the drain rate's hot path)."""
        return [self.ack(lease) for lease in leases]

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        return [self.extend(lease, secs) for lease in leases]


class ResultBackend(_Backend):
    """Durable job records: state, result, error and attempt history.

    Primitives to implement: :meth:`put`, :meth:`get`, :meth:`query`, :meth:`purge`.
    """

    def __init__(self) -> None:
        pass

    # --- primitives -----------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, record: JobRecord) -> None:
        """Insert or replace the record with this ``job_id``."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` for an id never stored."""

    @abc.abstractmethod
    def query(
        self,
        *,
        status: JobStatus | None = None,
        func_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Records matching the filters, newest ``updated_at`` first."""

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Delete terminal records whose ``updated_at`` is before the epoch ``older_than``."""

    def counts(self) -> dict[str, int]:
        """Records per status, for ``nuvom status``; override with one indexed query."""
        totals: dict[str, int] = {}
        for status in JobStatus:
            offset, page = 0, 1000
            while True:
                got = len(self.query(status=status, limit=page, offset=offset))
                totals[status.value] = totals.get(status.value, 0) + got
                if got < page:
                    break
                offset += page
        return {k: v for k, v in totals.items() if v}

    def put_many(self, records: Sequence[JobRecord]) -> None:
        """Store several records; override to do it in one transaction (all or none)."""
        for record in records:
            self.put(record)

    # --- conveniences ---------------------------------------------------------------------

    def set_result(self, job_id: str, result: Any, *, func_name: str = "") -> None:
        """Record success; ``result`` must already be in wire-safe form."""
        record = self.get(job_id) or JobRecord(job_id=job_id, func_name=func_name,
                                               status=JobStatus.SUCCEEDED)
        record.status = JobStatus.SUCCEEDED
        record.result = result
        record.finished_at = record.updated_at = time.time()
        self.put(record)

    def set_error(
        self,
        job_id: str,
        error_type: str,
        message: str,
        traceback: str | None = None,
        *,
        func_name: str = "",
    ) -> None:
        record = self.get(job_id) or JobRecord(job_id=job_id, func_name=func_name,
                                               status=JobStatus.FAILED)
        record.status = JobStatus.FAILED
        record.error_type, record.error_message, record.traceback = error_type, message, traceback
        record.finished_at = record.updated_at = time.time()
        self.put(record)

    def get_result(self, job_id: str) -> Any:
        """The wire-safe result of a succeeded job, else ``None``."""
        record = self.get(job_id)
        return record.result if record and record.status is JobStatus.SUCCEEDED else None

    def get_error(self, job_id: str) -> dict[str, Any] | None:
        record = self.get(job_id)
        if record is None or record.error_type is None:
            return None
        return {"type": record.error_type, "message": record.error_message,
                "traceback": record.traceback}

    def get_full(self, job_id: str) -> dict[str, Any] | None:
        record = self.get(job_id)
        return record.to_dict() if record else None

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        wanted = JobStatus(status) if status is not None else None
        records = self.query(status=wanted, func_name=task, limit=limit, offset=offset)
        return [r.to_dict() for r in records]
