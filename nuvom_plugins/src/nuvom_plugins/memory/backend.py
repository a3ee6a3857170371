"""Memory backends: the full lease protocol in one process, nothing persisted.

The queue still stores encoded bodies (bytes), so code tested on it goes through the same
serialization path as on a persistent backend — the original Nuvom skipped it and hid bugs.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    QueueBackend,
    QueueStats,
    ResultBackend,
    newer_first,
)
from nuvom_kernel.models import (
    TERMINAL_STATES,
    JobRecord,
    JobStatus,
    Lease,
    Message,
    supersedes,
)

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]


@attrs.define
class _Entry:
    message: Message
    seq: int
    deliveries: int = 0
    token: str | None = None  # set while leased
    expires_at: float = 0.0


class MemoryJobQueue(QueueBackend):
    """Priority heap of ready messages, a heap of delayed ones, a dict of leases."""

    name = "memory"
    capabilities = Capabilities(priorities=True, delayed=True, blocking_dequeue=True)

    def __init__(self, *, visibility_timeout_secs: float = 30.0) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._ready: list[tuple[int, float, int, str]] = []
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._leased: dict[str, _Entry] = {}  # scanned for expiry; bounded by in-flight jobs

    def _schedule(self, entry: _Entry) -> None:
        msg = entry.message
        entry.seq = next(self._seq)
        if msg.available_at > time.time():
            heapq.heappush(self._delayed, (msg.available_at, entry.seq, msg.id))
        else:
            heapq.heappush(self._ready, (-msg.priority, msg.created_at, entry.seq, msg.id))

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._delayed)
            entry = self._entries.get(job_id)
            if entry is not None and entry.seq == seq and entry.token is None:
                msg = entry.message
                heapq.heappush(self._ready, (-msg.priority, msg.created_at, seq, job_id))
        expired = [e for e in self._leased.values() if e.expires_at <= now]
        for entry in expired:  # expired leases come back, delivery count kept
            self._unlease(entry)
            entry.seq = next(self._seq)
            msg = entry.message
            heapq.heappush(self._ready, (-msg.priority, msg.created_at, entry.seq, msg.id))

    def _unlease(self, entry: _Entry) -> None:
        entry.token = None
        self._leased.pop(entry.message.id, None)

    def push(self, messages: Sequence[Message]) -> list[bool]:
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
        skipped: list[tuple[int, float, int, str]] = []
        with self._lock:
            self._promote(now)
            while self._ready and len(leases) < n:
                item = heapq.heappop(self._ready)
                entry = self._entries.get(item[3])
                if entry is None or entry.seq != item[2] or entry.token is not None:
                    continue  # stale heap item
                if queues is not None and entry.message.queue not in queues:
                    skipped.append(item)
                    continue
                entry.token = uuid.uuid4().hex
                entry.deliveries += 1
                entry.expires_at = now + self.visibility_timeout_secs
                self._leased[entry.message.id] = entry
                leases.append(Lease(entry.message, entry.token, entry.deliveries,
                                    entry.expires_at))
            for item in skipped:
                heapq.heappush(self._ready, item)
        return leases

    def _held(self, lease: Lease) -> _Entry | None:
        entry = self._entries.get(lease.id)
        if entry is None or entry.token != lease.token:
            return None
        return entry

    def ack(self, lease: Lease) -> bool:
        with self._lock:
            if self._held(lease) is None:
                return False
            del self._entries[lease.id]
            self._leased.pop(lease.id, None)
            return True

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            self._unlease(entry)
            entry.message = attrs.evolve(
                entry.message,
                body=entry.message.body if body is None else body,
                available_at=time.time() + delay_secs,
                failures=entry.message.failures + 1,
            )
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
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            entry.expires_at = time.time() + secs
        if secs <= 0:
            self.notify()
        return True

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        """One lock round for every running job's lease (the monitor's heartbeat)."""
        expires_at = time.time() + secs
        with self._lock:
            held = [self._held(lease) for lease in leases]
            for entry in held:
                if entry is not None:
                    entry.expires_at = expires_at
        return [entry is not None for entry in held]

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        with self._lock:
            done = []
            for lease in leases:
                ok = self._held(lease) is not None
                if ok:
                    del self._entries[lease.id]
                    self._leased.pop(lease.id, None)
                done.append(ok)
        return done

    def _waiting(self, queues: Sequence[str] | None) -> list[_Entry]:
        return [e for e in self._entries.values()
                if e.token is None and (queues is None or e.message.queue in queues)]

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        with self._lock:
            return len(self._waiting(queues))

    def clear(self, queues: Sequence[str] | None = None) -> int:
        with self._lock:
            doomed = [i for i, e in self._entries.items()
                      if queues is None or e.message.queue in queues]
            for job_id in doomed:
                del self._entries[job_id]
                self._leased.pop(job_id, None)
            return len(doomed)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry.token is not None:
                return False
            del self._entries[job_id]
            return True

    def peek_state(self, job_id: str) -> JobStatus | None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            if entry.token is not None:
                return JobStatus.RUNNING
            if entry.message.available_at > time.time() and entry.message.failures:
                return JobStatus.RETRYING
            return JobStatus.QUEUED

    def stats(self) -> QueueStats:
        now = time.time()
        stats = QueueStats()
        with self._lock:
            for entry in self._entries.values():
                msg = entry.message
                counts = stats.of(msg.queue)
                if entry.token is not None:
                    counts.running += 1
                elif msg.available_at > now:
                    counts.delayed += 1
                else:
                    counts.ready += 1
                    age = now - msg.created_at
                    counts.oldest_ready_age_secs = max(counts.oldest_ready_age_secs or 0.0, age)
        return stats


def _copy(record: JobRecord) -> JobRecord:
    """A deep copy through JSON (records are JSON-native by contract): what is stored never
    shares a list or dict with the caller, as on a real backend."""
    return JobRecord.from_dict(json.loads(json.dumps(record.to_dict())))


class MemoryResultBackend(ResultBackend):
    """A dict of records guarded by a lock; records are copied in and out, never shared."""

    name = "memory"
    capabilities = Capabilities()

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Takes no settings: ``[plugins.memory]`` is shared with the queue, whose
        ``visibility_timeout_secs`` means nothing here."""
        return cls()

    def put(self, record: JobRecord) -> bool:
        copy = _copy(record)
        with self._lock:
            if not supersedes(copy, self._records.get(record.job_id)):
                return False
            self._records[record.job_id] = copy
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
        return _copy(record) if record else None

    def query(
        self,
        *,
        status: JobStatus | None = None,
        func_name: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[JobRecord]:
        with self._lock:
            rows = [r for r in self._records.values()
                    if (status is None or r.status is status)
                    and (func_name is None or r.func_name == func_name)]
        return [_copy(r) for r in newer_first(rows, after, limit)]

    def purge(self, older_than: float) -> int:
        with self._lock:
            doomed = [i for i, r in self._records.items()
                      if r.status in TERMINAL_STATES and r.updated_at < older_than]
            for job_id in doomed:
                del self._records[job_id]
            return len(doomed)
