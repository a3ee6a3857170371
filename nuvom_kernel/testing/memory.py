"""The in-memory reference store: the full lease protocol in one process, nothing persisted.

One implementation serves three users: the ``memory`` plugin (``nuvom-plugins``) registers
these classes for single-process apps and tests; the user pytest plugin and the contract
meta-tests use them as the kernel's own reference (:mod:`.stubs`); and the broken backends
of :mod:`.fakes` each change one method of them. It passes every contract test, so a fake
that fails one proves that test can fail.

The queue still stores encoded bodies (bytes), so code tested on it goes through the same
serialization path as on a persistent backend — the original Nuvom skipped it and hid bugs.
Ready messages sit in a heap in claim order, delayed ones in a heap by due time, leases in a
dict scanned for expiry (bounded by the jobs in flight): a claim costs O(log n).

The result backend lives in :mod:`.memory_results`; both are importable from here, the path
the ``memory`` plugin registers.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from nuvom_kernel.backends import (
    Capabilities,
    QueueBackend,
    QueuedJob,
    QueueStats,
    ResultBackend,
    oldest_first,
    queue_names,
    queued_state,
)
from nuvom_kernel.models import JobStatus, Lease, Message, Settlement
from nuvom_kernel.testing.memory_results import IN_PROCESS, MemoryResultBackend, _clone
from nuvom_kernel.workflow.docstore import DocGraphTxn, ended_before, waiting_in
from nuvom_kernel.workflow.graph import GraphTxn
from nuvom_kernel.workflow.settle import advance_steps, final_steps

T = TypeVar("T")

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]


@attrs.define
class _Entry:
    message: Message
    seq: int
    deliveries: int = 0
    token: str | None = None  # set while leased
    expires_at: float = 0.0

    def claimable(self, now: float) -> bool:
        if self.token is not None:
            return self.expires_at <= now  # an expired lease is available again
        return self.message.available_at <= now


def _queued(entry: _Entry, now: float) -> QueuedJob:
    message, leased = entry.message, entry.token is not None
    state = queued_state(entry.expires_at if leased else None, message.available_at,
                         message.failures, now)
    return QueuedJob(id=message.id, task=message.task, queue=message.queue,
                     priority=message.priority, state=state, created_at=message.created_at,
                     available_at=message.available_at, failures=message.failures,
                     deliveries=entry.deliveries,
                     lease_expires_at=entry.expires_at if state is JobStatus.RUNNING else None)


class MemoryJobQueue(QueueBackend):
    """Priorities, delays, visibility timeouts and fencing, under one lock."""

    name = "memory"
    capabilities = Capabilities(priorities=True, delayed=True, blocking_dequeue=True,
                                concurrency=True, workflows=True, in_process=True)

    def __init__(self, *, visibility_timeout_secs: float = 30.0) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self.limits: dict[str, int] = {}
        self._wf_lock = threading.RLock()  # workflow documents (see workflow_transaction)
        self._wf_docs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._ready: list[tuple[Any, ...]] = []  # (*_order(entry), seq, job id)
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._leased: dict[str, _Entry] = {}
        #: copies of messages whose bodies did not decode, with why (copy_to_quarantine)
        self._quarantine: list[tuple[Message, str]] = []

    @property
    def location(self) -> str | None:
        return IN_PROCESS

    # --- internals (the fakes override some) ------------------------------------------------

    def _order(self, entry: _Entry) -> tuple[Any, ...]:
        """Claim order: higher priority first, then FIFO by ``created_at`` (then insertion)."""
        return (-entry.message.priority, entry.message.created_at)

    def _ready_push(self, entry: _Entry) -> None:
        heapq.heappush(self._ready, (*self._order(entry), entry.seq, entry.message.id))

    def _schedule(self, entry: _Entry) -> None:
        entry.seq = next(self._seq)
        if entry.message.available_at > time.time():
            heapq.heappush(self._delayed, (entry.message.available_at, entry.seq,
                                           entry.message.id))
        else:
            self._ready_push(entry)

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._delayed)
            entry = self._entries.get(job_id)
            if entry is not None and entry.seq == seq and entry.token is None:
                self._ready_push(entry)
        for entry in [e for e in self._leased.values() if e.expires_at <= now]:
            self._unlease(entry)  # an expired lease comes back, its delivery counted
            entry.seq = next(self._seq)
            self._ready_push(entry)

    def _unlease(self, entry: _Entry) -> None:
        entry.token = None
        self._leased.pop(entry.message.id, None)

    def _lease(self, entry: _Entry, now: float, token: str | None = None) -> Lease:
        entry.token = token or os.urandom(16).hex()
        entry.deliveries += 1
        entry.expires_at = now + self.visibility_timeout_secs
        self._leased[entry.message.id] = entry
        return Lease(entry.message, entry.token, entry.deliveries, entry.expires_at)

    def _held(self, lease: Lease) -> _Entry | None:
        """The entry if ``lease`` still holds it (its token was not replaced by a new claim)."""
        entry = self._entries.get(lease.id)
        if entry is None or entry.token != lease.token:
            return None
        return entry

    def _delete(self, job_id: str) -> None:
        del self._entries[job_id]
        self._leased.pop(job_id, None)

    # --- primitives -------------------------------------------------------------------------

    def push(self, messages: Sequence[Message]) -> list[bool]:
        # refused as the stored backends refuse it, before any is kept; a bytearray body
        # kept as bytes (the caller's object could change after the push)
        messages = [msg if type(msg.body) is bytes else attrs.evolve(msg, body=body)
                    for msg, body in ((m, m.checked_body()) for m in messages)]
        stored = []
        with self._lock:
            for msg in messages:
                new = msg.id not in self._entries
                if new:
                    entry = self._entries[msg.id] = _Entry(message=msg, seq=0)
                    self._schedule(entry)
                stored.append(new)
        return stored

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        now = time.time()
        leases: list[Lease] = []
        skipped: list[tuple[Any, ...]] = []
        with self._lock:
            self._promote(now)
            running = self._running_per_task() if self.limits else {}
            tokens = os.urandom(16 * max(0, min(n, len(self._ready)))).hex()  # one call per claim
            while self._ready and len(leases) < n:
                item = heapq.heappop(self._ready)
                entry = self._entries.get(item[-1])
                if entry is None or entry.seq != item[-2] or entry.token is not None:
                    continue  # stale heap item
                task = entry.message.task
                if (queues is not None and entry.message.queue not in queues) or (
                        task in self.limits and running.get(task, 0) >= self.limits[task]):
                    skipped.append(item)  # held back by its limit: not claimed, not counted
                    continue
                running[task] = running.get(task, 0) + 1
                at = 32 * len(leases)
                leases.append(self._lease(entry, now, tokens[at:at + 32]))
            for item in skipped:
                heapq.heappush(self._ready, item)
        return leases

    def ack(self, lease: Lease) -> bool:
        return self.ack_many([lease])[0]

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        with self._lock:
            held = [self._held(lease) is not None for lease in leases]
            for lease, ok in zip(leases, held, strict=True):
                if ok:
                    self._delete(lease.id)
        return held

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            self._unlease(entry)
            entry.message = attrs.evolve(
                entry.message, body=entry.message.body if body is None else body,
                available_at=time.time() + max(delay_secs, 0.0),
                failures=entry.message.failures + 1)
            self._schedule(entry)
        self.notify()
        return True

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            self._unlease(entry)
            entry.deliveries = max(0, entry.deliveries - 1)
            if delay_secs > 0:
                entry.message = attrs.evolve(entry.message,
                                             available_at=time.time() + delay_secs)
            self._schedule(entry)
        self.notify()
        return True

    def extend(self, lease: Lease, secs: float) -> bool:
        held = self.extend_many([lease], secs)[0]
        if held and secs <= 0:
            self.notify()  # claimable now
        return held

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        expires_at = time.time() + secs
        with self._lock:
            held = [self._held(lease) for lease in leases]
            for entry in held:
                if entry is not None:
                    entry.expires_at = expires_at
        return [entry is not None for entry in held]

    def peek_state(self, job_id: str) -> JobStatus | None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            return queued_state(entry.expires_at if entry.token is not None else None,
                                entry.message.available_at, entry.message.failures,
                                time.time())

    def peek(self, job_id: str) -> Message | None:
        with self._lock:
            entry = self._entries.get(job_id)
            return None if entry is None else entry.message

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        queues = queue_names(queues)
        now = time.time()
        with self._lock:
            jobs = [_queued(e, now) for e in self._entries.values()
                    if queues is None or e.message.queue in queues]
        return oldest_first(jobs, states, after, limit)

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        now = time.time()
        with self._lock:
            return sum(1 for e in self._entries.values()
                       if (e.token is None or e.expires_at <= now)
                       and (queues is None or e.message.queue in queues))

    def clear(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        with self._lock:
            doomed = [i for i, e in self._entries.items()
                      if queues is None or e.message.queue in queues]
            for job_id in doomed:
                self._delete(job_id)
            return len(doomed)

    # --- optional ---------------------------------------------------------------------------

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """With a :class:`MemoryResultBackend` (one process, one "store"): each record is
        stored only while its lease holds, and the lease acked or retried only once stored,
        under this queue's lock."""
        if not isinstance(results, MemoryResultBackend):
            return None
        landed = []
        for item in settlements:
            plain = item.retry_in is None and not item.workflow
            with self._lock:
                ok = self._held(item.lease) is not None and results.put(item.record)
                if ok and plain:  # the usual outcome: stored and acked under one lock
                    self._delete(item.lease.id)
            if ok and not plain:
                if final_steps([item]):
                    ok = advance_steps(self, results, [item])
                if ok and item.retry_in is None:
                    ok = self.ack(item.lease)
                elif ok:
                    ok = self.retry(item.lease, delay_secs=item.retry_in or 0.0,
                                    body=item.body)
            landed.append(ok)
        return landed

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        self.limits = dict(limits)

    def _running_per_task(self) -> dict[str, int]:
        running: dict[str, int] = {}
        for entry in self._leased.values():
            running[entry.message.task] = running.get(entry.message.task, 0) + 1
        return running

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        now = time.time()
        with self._lock:
            self._promote(now)
            running = self._running_per_task()
            ready: dict[str, int] = {}
            for entry in self._entries.values():
                if entry.token is None and entry.message.available_at <= now:
                    ready[entry.message.task] = ready.get(entry.message.task, 0) + 1
        return {t: (running.get(t, 0), ready.get(t, 0)) for t in tasks}

    def workflow_transaction(self, fn: Callable[[GraphTxn], T],
                             workflows: Sequence[str] = ()) -> T:
        """Workflow documents in a dict, under their own lock (released steps are pushed
        with :meth:`push`, which takes the queue's)."""
        def push(messages: list[Message]) -> None:
            self.push(messages)
            self.notify()

        with self._wf_lock:
            txn = DocGraphTxn(self._load_doc,
                              lambda doc: self._wf_docs.__setitem__(doc["flow"]["id"], doc),
                              push, workflows, self._locate_step)
            out = fn(txn)
            txn.commit()
            return out

    def _load_doc(self, flow_id: str) -> dict[str, Any] | None:
        """A copy of a workflow's document: a transaction changes what it loaded, and only
        its commit may store that (one that raises midway, as when the records of the
        steps it cancels cannot be stored, leaves the graph as it was, as on files)."""
        doc = self._wf_docs.get(flow_id)
        return None if doc is None else _clone(doc)

    def purge_workflows(self, older_than: float) -> int:
        with self._wf_lock:
            ended = [i for i, doc in self._wf_docs.items() if ended_before(doc, older_than)]
            for flow_id in ended:
                del self._wf_docs[flow_id]
            return len(ended)

    def _locate_step(self, node_id: str) -> str | None:
        return next((flow_id for flow_id, doc in self._wf_docs.items()
                     if node_id in doc["nodes"]), None)

    def waiting_steps(self) -> int:
        with self._wf_lock:
            return waiting_in(self._wf_docs.values())

    def holds(self, lease: Lease) -> bool:
        with self._lock:
            return self._held(lease) is not None

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or (entry.token is not None
                                 and entry.expires_at > time.time()):
                return False  # a live lease's job belongs to its worker; an expired one waits
            self._delete(job_id)
            return True

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            self._quarantine.append((entry.message, reason))
            return True

    def stats(self) -> QueueStats:
        """Counts per queue; a ready message's age runs from when it became due,
        ``max(created_at, available_at)`` (its enqueue, or the end of its delay or retry
        delay), as the worker's wait time does, and the oldest is the one due first."""
        now = time.time()
        stats = QueueStats()
        with self._lock:
            for entry in self._entries.values():
                msg = entry.message
                counts = stats.of(msg.queue)
                if entry.token is not None and entry.expires_at > now:
                    counts.running += 1
                elif entry.token is None and msg.available_at > now:
                    counts.delayed += 1
                else:
                    counts.ready += 1
                    # max(0, ...): a due time ahead of this clock is no wait yet
                    age = max(0.0, now - max(msg.created_at, msg.available_at))
                    counts.oldest_ready_age_secs = max(counts.oldest_ready_age_secs or 0.0, age)
            stats.quarantined = [f"job {msg.id!r} (queue {msg.queue!r}): {why}"
                                 for msg, why in self._quarantine]
        return stats
