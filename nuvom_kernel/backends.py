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
This module holds the queue SPI; the result SPI (:mod:`.result_backend`) and what both share
(:mod:`.spi`: version, capabilities, context) live beside it and are re-exported here, the
one import path for plugins.
"""

from __future__ import annotations

import abc
import numbers
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from nuvom_kernel.errors import NuvomError
from nuvom_kernel.models import (
    JobStatus,
    Lease,
    Message,
    Settlement,
    supersedes,
)
from nuvom_kernel.result_backend import (
    ResultBackend,
    decode_schedule_state,
    read_schedule_state,
    report_unreadable,
    stored_text,
)
from nuvom_kernel.spi import SPI_VERSION, Backend, BackendContext, Capabilities
from nuvom_kernel.views import (
    QueueCounts,
    QueuedJob,
    QueueStats,
    WorkerInfo,
    newer_first,
    oldest_first,
    page_cursor,
    parse_cursor,
    queued_state,
)
from nuvom_kernel.workflow.spi import WorkflowStore

__all__ = [
    "SPI_VERSION",
    "BackendContext",
    "Capabilities",
    "QueueBackend",
    "QueueCounts",
    "QueueStats",
    "QueuedJob",
    "ResultBackend",
    "Settlement",
    "WorkerInfo",
    "check_pop_args",
    "decode_schedule_state",
    "newer_first",
    "oldest_first",
    "page_cursor",
    "parse_cursor",
    "queue_names",
    "queued_state",
    "read_schedule_state",
    "report_unreadable",
    "stored_text",
    "supersedes",
]


def queue_names(queues: str | Sequence[str] | None) -> Sequence[str] | None:
    """``queues`` as a backend filters by it: one name given as a string is that queue.

    Why: a ``str`` is a ``Sequence[str]`` of its letters, so ``qsize("emails")`` counted
    the one-letter queues ``e``, ``m``, … (0, on SQLite and the file queue) and, where a
    name was tested with ``in``, matched every queue whose name is part of it: the memory
    queue's ``clear("emails")`` deleted queue ``mail``'s jobs too. Every ``queues``
    parameter of the queue SPI goes through it, conveniences and primitives alike (but
    ``claim``, which the kernel calls with a tuple: :meth:`QueueBackend.pop_batch` does it
    there)."""
    return (queues,) if isinstance(queues, str) else queues


def check_pop_args(n: Any, timeout: Any) -> None:
    """Refuse what :meth:`QueueBackend.pop_batch` cannot read, in its words: a ``"2"`` was
    a ``TypeError`` from a comparison, ``2.5`` an ``IntegrityError`` from SQLite's claim,
    and a ``nan`` timeout, never past its deadline, waited forever on an empty queue. For
    a backend that overrides ``pop_batch``, called where the argument types are not the
    usual ``int`` and ``float`` (one type test each, on the worker's claim path)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # (numpy's ints too)
        raise TypeError(f"pop_batch: n is how many messages to lease, a whole number; "
                        f"got {n!r}")
    what = ("pop_batch/dequeue: timeout is how many seconds to wait for a message, a "
            f"number (0: don't wait); got {timeout!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(what)
    if timeout != timeout:
        raise ValueError(what)


class QueueBackend(Backend, WorkflowStore):
    """A queue with at-least-once delivery: claimed messages are leases until acked.

    Required primitives: :meth:`push`, :meth:`claim`, :meth:`ack`, :meth:`retry`,
    :meth:`release`, :meth:`extend`, :meth:`peek_state`, :meth:`qsize`, :meth:`clear`.
    Optional (the kernel works without them, more slowly or with a feature refused):
    :meth:`ack_many`, :meth:`extend_many`, :meth:`settle_many`, :meth:`cancel`,
    :meth:`peek`, :meth:`browse`, :meth:`stats`, :meth:`copy_to_quarantine`,
    :meth:`wait_for_messages`. A backend that
    cannot block on new work gets adaptive polling from :meth:`wait_for_messages` for free;
    one that can (a condition, BLPOP, LISTEN) overrides it and declares
    ``blocking_dequeue``. One that stores workflow graphs overrides the calls of
    :class:`~nuvom_kernel.workflow.spi.WorkflowStore` and declares ``workflows``.
    """

    #: Longest sleep between two polls of an idle queue (seconds); bounds cross-process pickup
    #: latency for backends without a blocking wait.
    poll_interval_max: ClassVar[float] = 0.1
    poll_interval_min: ClassVar[float] = 0.002
    #: :meth:`push` reads a large batch a chunk at a time, on the calling thread, each chunk
    #: after starting to store the one before (SQLite, PostgreSQL, Redis). The kernel then
    #: encodes a ``.map()``'s messages as they are read, so one chunk is stored while the
    #: next is encoded. Its ``nuvom_before_enqueue`` observers have seen every job before
    #: :meth:`push` is called (but see :attr:`observed_as_read`): reading runs no plugin
    #: code but the serializer, so the push may hold its locks while it reads. ``False``:
    #: :meth:`push` gets a list, every message encoded first.
    streams_push: ClassVar[bool] = False
    #: With :attr:`streams_push`: :meth:`push` holds no lock while it reads (PostgreSQL,
    #: Redis: the lock is the server's), so the kernel builds the jobs too as they are read
    #: and shows each run to the ``nuvom_before_enqueue`` observers (which may use the
    #: queue, even enqueue) just before: more of a ``.map()`` overlaps the server's inserts.
    observed_as_read: ClassVar[bool] = False

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

        With :attr:`streams_push`, ``messages`` of a ``.map()`` is built as it is read
        (read it from the calling thread; reading again returns the same messages).
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
        """Messages waiting (ready or delayed; an expired lease is waiting, a live one not).
        ``queues`` (here, in :meth:`clear` and in :meth:`browse`) may be one name as a
        string: pass it through :func:`queue_names`."""

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
        monitor extends every running job's lease at once).

        Every lease is tried, then the first error is raised: a fault on one lease (a busy
        file, a dropped connection) must not leave the leases after it unextended, to lapse
        and run twice, while the monitor waits to retry the round."""
        held: list[bool] = []
        error: Exception | None = None
        for lease in leases:
            try:
                held.append(self.extend(lease, secs))
            except Exception as exc:
                error = error or exc
                held.append(False)
        if error is not None:
            raise error
        return held

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
        """Delete a message that is waiting (ready or delayed, not leased) or whose lease
        expired (no worker holds it until one claims it again); ``True`` if it was removed.
        A message under a live lease is not touched: its worker decides its outcome. Atomic
        against a claim; after it, the expired lease's ``ack`` and ``extend`` are refused."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot cancel jobs")

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        """Keep a copy of the leased message as stored (its body byte for byte) in this
        backend's quarantine, listed by :meth:`stats` in ``quarantined`` with ``reason``;
        ``True`` if copied, ``False`` (and no change) if ``lease.token`` no longer holds it.
        The lease and the message are left as they are.

        Optional. The kernel calls it for a message whose body it cannot decode (written by
        hand or by another tool), before it records the job FAILED and acks it as any
        failure: without it the record says why, but the bytes are gone with the ack.
        """
        raise NotImplementedError(f"queue backend {self.name!r} keeps no quarantine")

    def peek(self, job_id: str) -> Message | None:
        """The message ``job_id`` as stored now (waiting, delayed or leased), without claiming
        it; ``None`` if the id is not in the queue. ``failures`` is the stored count.

        Optional. The kernel reads it where a job has no record yet: ``cancel`` records a
        job cancelled before its first run with its task, arguments and options (so ``nuvom
        retry job`` can run it again), and ``get_job()`` of a waiting job fills in what it
        is. Without it both know only the job's id and state."""
        raise NotImplementedError(f"queue backend {self.name!r} cannot peek at messages")

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """One page of the messages in ``queues`` (``None``: every queue), waiting, delayed
        and leased, oldest first (``created_at``, then id); page on with
        ``after=page[-1].cursor``. ``states`` keeps the messages in one of those states
        (RUNNING, RETRYING, QUEUED: see :class:`~nuvom_kernel.views.QueuedJob`). Nothing is
        claimed or changed. A message that stays put while the pages are read is listed
        exactly once; one pushed, claimed or removed meanwhile may or may not be.

        Optional. ``nuvom list jobs`` lists with it and ``nuvom purge queue`` finds the jobs
        it cancels; without it both are refused.

        :raises ValueError: ``after`` is not a cursor this method returned.
        """
        raise NotImplementedError(f"queue backend {self.name!r} cannot list its messages")

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
        if type(stored) is not list or len(stored) != len(messages):  # a plugin's bug:
            # said here, naming it, not as a TypeError in the caller's `stored[0]`
            raise NuvomError(
                f"queue backend {self.name!r} ({type(self).__module__}."
                f"{type(self).__qualname__}) returned {stored!r:.80} from push() of "
                f"{len(messages)} message(s); push must return a list of one bool per "
                "message (True: stored, False: its id was queued already). The messages "
                "may have been stored. `nuvom plugin test` checks a backend against this.")
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
        if type(n) is not int or type(timeout) not in (float, int) or timeout != timeout:
            check_pop_args(n, timeout)
        if n <= 0:
            return []
        queues = queue_names(queues)
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
