"""What backends report: queue counts for ``nuvom status``, pages of job records, and pages of
the messages in a queue (``QueueBackend.browse``).

Plain data and pure functions shared by every backend, so each reports the same shape and
pages the same way; they live apart from the SPI classes only to keep each module short.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs

from nuvom_kernel.models import JobRecord, JobStatus

__all__ = ["RUNNING_LISTED", "QueueCounts", "QueueStats", "QueuedJob", "WorkerInfo", "holders",
           "newer_first", "oldest_first", "page_cursor", "parse_cursor", "quarantine_line",
           "queued_state"]


@attrs.define
class QueueCounts:
    """One named queue: ``ready`` (claimable now), ``delayed`` (waiting for their time: a
    retry delay or ``delay_secs``), ``running`` (leased) and ``oldest_ready_age_secs``:
    how long the ready message waiting longest has waited since it became due, ``now -
    max(created_at, available_at)`` (its enqueue, or the end of its delay or retry delay),
    ``0`` for a due time ahead of the backend's clock, ``None`` when none is ready.

    Why since due and not since the enqueue: a job delayed for a day would read a day old,
    and fire backlog alerts, the moment it is due, and a retried job as old as its first
    enqueue; this is the worker's wait time (``Outcome.due_at``) for a job still waiting.
    The message due first is not necessarily the head of the claim order (which sorts by
    ``created_at``: a retried message keeps its place)."""

    ready: int = 0
    delayed: int = 0
    running: int = 0
    oldest_ready_age_secs: float | None = None


def quarantine_line(job_id: str, queue: str, at: float, reason: str, kept_as: str) -> str:
    """One ``QueueStats.quarantined`` line of a backend that keeps its quarantine in a table
    or keys (SQLite, Redis, PostgreSQL), worded alike so that an operator reads one shape
    whatever the store: which job, when (this machine's local time), why, and ``kept_as``:
    where the copy is kept to be read back."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"job {job_id!r} (queue {queue!r}) quarantined {when}: {reason}; {kept_as}"


@attrs.define
class QueueStats:
    """What ``nuvom status`` (and later metrics and the dashboard) show about a queue
    backend: counts per named queue, one line per quarantined entry, and ``warnings``: one
    sentence per problem the backend sees in its store that will hurt the queue if left
    alone (PostgreSQL: dead rows piling up, a session holding back vacuum), saying what to
    do. Empty by default; ``nuvom status`` prints each as a ``warning:`` line."""

    queues: dict[str, QueueCounts] = attrs.field(factory=dict)
    quarantined: list[str] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)

    def of(self, queue: str) -> QueueCounts:
        """The counts of ``queue``, created empty on first use (for backends filling in)."""
        counts = self.queues.get(queue)
        if counts is None:
            counts = self.queues[queue] = QueueCounts()
        return counts

    @property
    def depth(self) -> dict[str, int]:
        """Waiting messages (ready or delayed) per queue."""
        return {q: c.ready + c.delayed for q, c in self.queues.items() if c.ready + c.delayed}

    @property
    def delayed(self) -> int:
        return sum(c.delayed for c in self.queues.values())

    @property
    def in_flight(self) -> int:
        return sum(c.running for c in self.queues.values())

    @property
    def oldest_age_secs(self) -> float | None:
        ages = [c.oldest_ready_age_secs for c in self.queues.values()
                if c.oldest_ready_age_secs is not None]
        return max(ages) if ages else None


#: Most jobs a heartbeat lists in ``WorkerInfo.running`` (an asyncio pool may run
#: thousands: the heartbeat stays small, and the longest-running are the ones asked about).
RUNNING_LISTED = 100


def holders(workers: Sequence[WorkerInfo]) -> dict[str, WorkerInfo]:
    """The live worker running each job its heartbeat lists (``WorkerInfo.running``); of
    two listing one job (a lease that expired under a stuck attempt, and its new holder),
    the one that started it last."""
    found: dict[str, WorkerInfo] = {}
    for worker in workers:
        for job_id, started in worker.running.items():
            if job_id not in found or started > found[job_id].running[job_id]:
                found[job_id] = worker
    return found


@attrs.define
class WorkerInfo:
    """What a worker says about itself in each heartbeat: ``nuvom status`` lists it under
    ``"workers"``, metrics and the dashboard read it. JSON-native fields only, so every
    result backend stores it as one JSON object (:meth:`to_dict`).

    :param id: unique per worker process for its life (``host:pid:<random>``; a pid is
        reused, a restarted worker is a new one).
    :param pool: the pool kind: ``thread``, ``process`` or ``asyncio``.
    :param slots: jobs it can run at once; ``busy_slots`` are running one now.
    :param heartbeat_at: epoch seconds of this heartbeat (the worker's clock).
    :param heartbeat_secs: its interval; a result backend drops a worker that missed three.
    :param reports: what it measures about itself, e.g. ``abandoned_threads`` (stuck in
        timed-out jobs) and ``heartbeat_lag_secs`` (how late this heartbeat woke: a
        starved interpreter or a stalled host shows here first), and with the asyncio pool
        ``loop_lag_secs`` (how long its event loop went without answering, lately).
    :param running: the jobs it runs now, job id to start (epoch seconds, its clock), the
        longest-running :data:`RUNNING_LISTED` (``busy_slots`` counts them all): which
        worker holds a job, for ``nuvom list jobs`` and ``inspect job``, as of a heartbeat.
    """

    id: str
    host: str
    pid: int
    pool: str = "thread"
    slots: int = 0
    busy_slots: int = 0
    queues: list[str] = attrs.field(factory=list)  # empty: every queue
    started_at: float = 0.0
    version: str = ""
    heartbeat_at: float = 0.0
    heartbeat_secs: float = 5.0
    reports: dict[str, Any] = attrs.field(factory=dict)
    running: dict[str, float] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        """Keys this kernel does not know are ignored (a newer worker may send more)."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def page_cursor(record: JobRecord | Mapping[str, Any]) -> str:
    """The keyset cursor after ``record`` in newest-first order: ``"<updated_at>|<job_id>"``
    (``repr`` of the float round-trips exactly)."""
    if isinstance(record, JobRecord):
        return f"{record.updated_at!r}|{record.job_id}"
    return f"{float(record['updated_at'])!r}|{record['job_id']}"


def parse_cursor(cursor: str, *, made_by: str = "page_cursor()") -> tuple[float, str]:
    """``(updated_at, job_id)`` of a :func:`page_cursor`; records strictly *older* than it
    (smaller ``updated_at``, or equal and smaller ``job_id``) form the next page. Also
    ``(created_at, job_id)`` of a :attr:`QueuedJob.cursor` (``made_by`` names it).

    :raises ValueError: naming the malformed cursor.
    """
    head, sep, job_id = cursor.partition("|")
    try:
        if not sep:
            raise ValueError
        return float(head), job_id
    except ValueError:
        raise ValueError(f"malformed page cursor {cursor!r}: expected '<time>|<job_id>' "
                         f"as returned by {made_by}") from None


def newer_first(records: Sequence[JobRecord], after: str | None, limit: int
                ) -> list[JobRecord]:
    """One page of ``records`` in query order: for backends that filter in Python (memory,
    files), so every one pages exactly the same way."""
    ordered = sorted(records, key=lambda r: (r.updated_at, r.job_id), reverse=True)
    if after is not None:
        key = parse_cursor(after)
        ordered = [r for r in ordered if (r.updated_at, r.job_id) < key]
    return ordered[:max(limit, 0)]


@attrs.frozen
class QueuedJob:
    """A message in a queue, as :meth:`~nuvom_kernel.backends.QueueBackend.browse` lists it:
    what an operator asks of a queue (what runs, what waits, what is due when), without its
    body, which can be large and is read with ``nuvom inspect job``.

    :param state: as ``peek_state`` says: RUNNING (a live lease), RETRYING (waiting for its
        time after a failed attempt) or QUEUED (ready, an expired lease included, or
        waiting for a first run's ``available_at``).
    :param deliveries: claims of this message so far (a release gives one back).
    :param lease_expires_at: a RUNNING message's lease deadline, else ``None``.
    """

    id: str
    task: str
    queue: str
    priority: int
    state: JobStatus
    created_at: float
    available_at: float
    failures: int = 0
    deliveries: int = 0
    lease_expires_at: float | None = None

    @property
    def cursor(self) -> str:
        """Where the next page starts: ``browse(after=page[-1].cursor)``."""
        return f"{self.created_at!r}|{self.id}"

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["state"] = self.state.value
        return data


def queued_state(leased_until: float | None, available_at: float, failures: int,
                 now: float) -> JobStatus:
    """A stored message's state as ``peek_state`` reports it: ``leased_until`` is its
    lease's deadline, ``None`` when no claim holds it."""
    if leased_until is not None:
        return JobStatus.RUNNING if leased_until > now else JobStatus.QUEUED
    if available_at > now and failures:
        return JobStatus.RETRYING
    return JobStatus.QUEUED


def oldest_first(jobs: Sequence[QueuedJob], states: Collection[JobStatus] | None,
                 after: str | None, limit: int) -> list[QueuedJob]:
    """One page of ``jobs`` in browse order (``created_at``, then id): for backends that
    filter in Python (memory, files), so every one pages exactly the same way."""
    key = None if after is None else parse_cursor(after, made_by="QueuedJob.cursor")
    chosen = [j for j in jobs if (states is None or j.state in states)
              and (key is None or (j.created_at, j.id) > key)]
    chosen.sort(key=lambda j: (j.created_at, j.id))
    return chosen[:max(limit, 0)]
