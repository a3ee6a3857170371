"""The backend SPI (version :data:`SPI_VERSION`): a few primitives per backend, conveniences
built on top.

A plugin author implements the abstract primitives (huey's storage shape) and may override
the optional ones for speed; the kernel calls the primitives and the optional calls, and the
seed's conveniences (``enqueue``, ``dequeue``, ``pop_batch``, ``set_result``, ``get_full`` …)
stay on the base classes for users and tools. Backends move
:class:`~nuvom_kernel.models.Message` and :class:`~nuvom_kernel.models.JobRecord` values;
they never import user code. The promises are checked by the contract suites in
:mod:`nuvom_kernel.testing.contracts`; ``docs/writing_plugins.md`` walks through one backend.

A queue plugin is a ``QueueBackend`` subclass with a ``name``, its ``capabilities`` and the
nine primitives, returned from a ``nuvom_register_queue_backends`` hook implementation.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from nuvom_kernel.models import (
    JobRecord,
    JobStatus,
    Lease,
    Message,
    ScheduleState,
    Settlement,
    supersedes,
)
from nuvom_kernel.views import (
    QueueCounts,
    QueueStats,
    WorkerInfo,
    newer_first,
    page_cursor,
    parse_cursor,
)
from nuvom_kernel.workflow.spi import WorkflowStore

__all__ = [
    "SPI_VERSION",
    "BackendContext",
    "Capabilities",
    "QueueBackend",
    "QueueCounts",
    "QueueStats",
    "ResultBackend",
    "Settlement",
    "WorkerInfo",
    "newer_first",
    "page_cursor",
    "parse_cursor",
    "supersedes",
]

#: The version of the promises in this module (see docs/writing_plugins.md). A backend written
#: against version 1 works with every kernel whose ``SPI_VERSION`` is 1; a change that would
#: break a backend raises the number.
SPI_VERSION = 1


@attrs.frozen
class Capabilities:
    """What a backend promises; the kernel refuses options it cannot honour, and the contract
    suite skips the tests of promises it does not make."""

    persistent: bool = False
    multiprocess_safe: bool = False
    priorities: bool = False
    delayed: bool = False
    blocking_dequeue: bool = False
    heartbeats: bool = False  # a result backend that lists live workers (``heartbeat``)
    #: queue: honours ``set_concurrency_limits`` at claim time (``@task(concurrency=N)``)
    concurrency: bool = False
    #: results: keeps schedule state with a compare-and-set (``@task(schedule=...)``)
    schedules: bool = False
    #: stores workflow graphs (:meth:`QueueBackend.workflow_transaction`) and advances them
    #: when a step settles
    workflows: bool = False

    def as_list(self) -> list[str]:
        return [f.name for f in attrs.fields(type(self)) if getattr(self, f.name)]


@attrs.frozen
class BackendContext:
    """Kernel settings a backend may need when it is built (paths, lease length).

    :param namespace: a prefix for every key, table or channel the backend creates, empty
        by default. The contract suite hands each test a fresh one, so a server-backed
        store (Redis, PostgreSQL) runs the suite on a shared server without collisions;
        file-based backends get a fresh ``data_dir`` per test instead and may ignore it.
    """

    data_dir: Path = Path(".nuvom")
    visibility_timeout_secs: float = 30.0
    namespace: str = ""


class _Backend(abc.ABC):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: ``True`` for a server store prefixing all it creates with ``context.namespace``:
    #: ``nuvom plugin test`` then builds it from the project's ``[plugins.<name>]`` (its
    #: server URL), a fresh namespace per test. Others never see the project's settings.
    namespaced: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Build the backend from its ``[plugins.<name>]`` table and the kernel's context.

        The default passes the table as keyword arguments; override to derive paths from
        ``context.data_dir`` or to validate settings with a clear error.
        """
        return cls(**dict(settings))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and file handles."""


class QueueBackend(_Backend, WorkflowStore):
    """A queue with at-least-once delivery: claimed messages are leases until acked.

    Required primitives: :meth:`push`, :meth:`claim`, :meth:`ack`, :meth:`retry`,
    :meth:`release`, :meth:`extend`, :meth:`peek_state`, :meth:`qsize`, :meth:`clear`.
    Optional (the kernel works without them, more slowly or with a feature refused):
    :meth:`ack_many`, :meth:`extend_many`, :meth:`settle_many`, :meth:`cancel`,
    :meth:`stats`, :meth:`wait_for_messages`. A backend that cannot block on new work gets
    adaptive polling from :meth:`wait_for_messages` for free; one that can (a condition,
    BLPOP, LISTEN) overrides it and declares ``blocking_dequeue``. One that stores workflow
    graphs overrides the calls of :class:`~nuvom_kernel.workflow.spi.WorkflowStore` and
    declares ``workflows``.
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
    def push(self, messages: Sequence[Message]) -> list[bool]:
        """Store every message atomically where the backend can (all or none); return, per
        message, whether it was stored.

        Idempotent per job id: a message whose id is already in the queue (waiting, delayed
        or leased) stores nothing and leaves the existing one untouched (``False``); so does
        a repeat of an id earlier in the same batch. A job id names one job for its life.
        """

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
        """Put the message back after a failed attempt, invisible for ``delay_secs``,
        optionally with a new body; its delivery count is kept and its ``failures`` grows by
        one. ``False`` (and no change) if the lease was lost."""

    @abc.abstractmethod
    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        """Return a message that was claimed but never started, visible after
        ``delay_secs`` (at once by default), with its delivery count as before the claim.
        ``False`` if the lease was lost."""

    @abc.abstractmethod
    def extend(self, lease: Lease, secs: float) -> bool:
        """Push the lease's expiry to ``now + secs`` (``secs=0`` expires it now: the
        message is claimable at once and the delivery stays counted). ``False`` if the lease
        was lost."""

    @abc.abstractmethod
    def peek_state(self, job_id: str) -> JobStatus | None:
        """Where the message stands, from the queue alone, so any process can tell a job's
        state before it has a record: RUNNING (leased, the lease not expired), RETRYING
        (waiting for its time after a failed attempt: ``failures > 0``), QUEUED (ready — an
        expired lease included — or waiting for a first run's ``available_at``); ``None``
        if the id is not in the queue."""

    @abc.abstractmethod
    def qsize(self, queues: Sequence[str] | None = None) -> int:
        """Messages waiting (ready or delayed; an expired lease is waiting, a live one not)."""

    @abc.abstractmethod
    def clear(self, queues: Sequence[str] | None = None) -> int:
        """Delete every message, leased ones included; return how many."""

    # --- optional primitives --------------------------------------------------------------

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """Ack several leases; override to do it in one transaction (the worker settles
        finished jobs in batches, so this is the drain rate's hot path)."""
        return [self.ack(lease) for lease in leases]

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        """Extend several leases; override to do it in one round trip (the worker's
        monitor extends every running job's lease at once)."""
        return [self.extend(lease, secs) for lease in leases]

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """Store every settlement's record in ``results`` and ack or retry its lease, each
        one in the same transaction as its record, refusing stale tokens and records that do
        not supersede the stored one; return per settlement whether it landed.

        Only a backend that shares one store with ``results`` can (SQLite in one file,
        PostgreSQL); it returns ``None`` for any other result backend, and the kernel then
        stores with ``results.put_many`` and acks or retries what was stored.
        """
        return None

    def cancel(self, job_id: str) -> bool:
        """Delete a message that is waiting (ready or delayed, not leased); ``True`` if it
        was removed. A leased message is not touched: its worker decides its outcome."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot cancel jobs")

    def stats(self) -> QueueStats:
        """Counts per named queue for ``nuvom status``; override to report per queue (the
        default can only say how many wait in all, under the name ``*``)."""
        return QueueStats(queues={"*": QueueCounts(ready=self.qsize())})

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        """Claim at most ``limits[task]`` messages of each task at once, counting live
        leases of every process on the store; a message held back by its limit is simply
        not claimable (no delivery counted) and others are claimed past it. Backends that
        declare the ``concurrency`` capability override it; the worker calls it at start."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot limit concurrency")

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per task: (running — live leases —, ready to claim), for ``nuvom status`` on
        concurrency-limited tasks (capability ``concurrency``)."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot count per task")

    def wait_for_messages(self, timeout: float, generation: int) -> None:
        """Block up to ``timeout`` seconds or until a push in this process bumps the
        generation counter past ``generation``."""
        with self._cond:
            if self._generation == generation:
                self._cond.wait(timeout)

    # --- conveniences ---------------------------------------------------------------------

    def enqueue(self, message: Message) -> bool:
        """Push one message and wake waiters; ``False`` if its id was already queued."""
        return self.enqueue_many([message])[0]

    def enqueue_many(self, messages: Sequence[Message]) -> list[bool]:
        """Push messages (one transaction where the backend has them) and wake waiters."""
        if not messages:
            return []
        stored = self.push(messages)
        self.notify()
        return stored

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


class ResultBackend(_Backend):
    """Durable job records: state, result, error and attempt history.

    Required primitives: :meth:`put`, :meth:`get`, :meth:`query`, :meth:`purge`. Optional:
    :meth:`put_many` (one transaction for a batch of outcomes), :meth:`counts` and
    :meth:`counts_since`; with the ``heartbeats`` capability, :meth:`heartbeat`,
    :meth:`live_workers`, :meth:`forget_worker`.
    """

    def __init__(self) -> None:
        pass

    # --- primitives -----------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, record: JobRecord) -> bool:
        """Store the record if it :func:`~nuvom_kernel.models.supersedes` the one stored
        under its ``job_id`` (or none is), atomically with that check; ``False`` and no
        change otherwise. This is what keeps a worker that lost its lease from overwriting
        the outcome of the worker that took the job over."""

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
        after: str | None = None,
    ) -> list[JobRecord]:
        """Records matching the filters, newest first: by ``updated_at``, then ``job_id``,
        both descending. ``after`` is the :func:`page_cursor` of the last record of the
        previous page (keyset paging: a page costs the same on page 1 and page 10,000)."""

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Delete terminal records whose ``updated_at`` is before the epoch ``older_than``."""

    # --- optional primitives --------------------------------------------------------------

    def put_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """Store several records, each fenced as in :meth:`put`; override to do it in one
        transaction (all or none)."""
        return [self.put(record) for record in records]

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records updated at or after the epoch ``since``, per queue and status
        (``{queue: {status: n}}``): what finished lately, for the dashboard's overview.
        The default pages through :meth:`query`; override with one indexed query."""
        totals: dict[str, dict[str, int]] = {}
        after = None
        while True:
            page = self.query(limit=1000, after=after)
            for record in page:
                if record.updated_at < since:
                    return totals
                per_queue = totals.setdefault(record.queue, {})
                per_queue[record.status.value] = per_queue.get(record.status.value, 0) + 1
            if len(page) < 1000:
                return totals
            after = page_cursor(page[-1])

    def counts(self) -> dict[str, int]:
        """Records per status, for ``nuvom status``; override with one indexed query."""
        totals: dict[str, int] = {}
        for status in JobStatus:
            after = None
            while True:
                page = self.query(status=status, limit=1000, after=after)
                if page:
                    totals[status.value] = totals.get(status.value, 0) + len(page)
                if len(page) < 1000:
                    break
                after = page_cursor(page[-1])
        return totals

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """Store ``info`` under ``info.id``, replacing that worker's previous heartbeat; it
        stays live for ``ttl_secs`` (the worker passes three intervals, so a worker that
        stops, even ``kill -9``, drops out of :meth:`live_workers` on its own). Why in the
        result backend: it is the store every host and ``nuvom status`` already share."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")

    def live_workers(self) -> list[WorkerInfo]:
        """Every worker whose last heartbeat has not expired, ordered by id (expired ones
        may be deleted on the way)."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")

    def forget_worker(self, worker_id: str) -> bool:
        """Drop a worker at once (its clean shutdown); ``True`` if it was listed."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no worker heartbeats")
    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every stored schedule state by name (capability ``schedules``)."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """Store ``state`` if the stored state of its schedule is still ``previous``
        (compared by ``updated_at``; ``None``: none stored yet), atomically; ``False`` and
        no change otherwise. The one write every scheduler races on: its winner fires the
        ticks."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    # --- conveniences ---------------------------------------------------------------------

    def set_result(self, job_id: str, result: Any, *, func_name: str = "") -> bool:
        """Record success of the stored run and attempt; ``result`` must already be in
        wire-safe form."""
        record = self.get(job_id) or JobRecord(job_id=job_id, func_name=func_name,
                                               status=JobStatus.SUCCEEDED)
        record.status = JobStatus.SUCCEEDED
        record.result = result
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

    def set_error(
        self,
        job_id: str,
        error_type: str,
        message: str,
        traceback: str | None = None,
        *,
        func_name: str = "",
    ) -> bool:
        """Record failure of the stored run and attempt."""
        record = self.get(job_id) or JobRecord(job_id=job_id, func_name=func_name,
                                               status=JobStatus.FAILED)
        record.status = JobStatus.FAILED
        record.error_type, record.error_message, record.traceback = error_type, message, traceback
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

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
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records as dicts, newest first; page on with ``after=page_cursor(last)``."""
        wanted = JobStatus(status) if status is not None else None
        records = self.query(status=wanted, func_name=task, limit=limit, after=after)
        return [r.to_dict() for r in records]
