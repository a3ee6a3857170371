"""The result half of the in-memory reference store: records, heartbeats and schedules in
dicts, nothing persisted.

Apart from the queue (:mod:`.memory`) because the two share nothing but the process: the
queue's ``settle_many`` only checks that its result backend is this one. What lives here
besides the backend is the copying that stands in for a real store's encoding: a record is
copied in and out as JSON would hold it, so code tested on it cannot share a list with what
is "stored", nor store what no real backend could.
"""

from __future__ import annotations

import json
import operator
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    ResultBackend,
    WorkerInfo,
    newer_first,
    read_schedule_state,
    stored_text,
)
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, ScheduleState, supersedes
from nuvom_kernel.serialization import PLAIN_TYPES

__all__ = ["IN_PROCESS", "MemoryResultBackend"]


#: Where both memory backends keep their data (:attr:`~nuvom_kernel.spi.Backend.location`):
#: said plainly, since ``nuvom status`` on the memory backend reads its own empty process,
#: never a worker's.
IN_PROCESS = "in-process memory (only this process sees it; nothing is kept after it exits)"


def _copy(record: JobRecord) -> JobRecord:
    """A deep copy: what is stored never shares a list or dict with the caller, as on a real
    backend, and holds only what JSON can (a real backend could store nothing else). A
    round trip through ``json`` did this at five times the cost and was the largest share
    of a drain on this backend (``benchmarks/overhead.py --profile``); the fields read by
    one ``attrgetter`` and passed positionally cost a third less than by name (3.6 → 2.1 µs).

    :raises SerializationError: a value JSON cannot hold, as the stored backends raise it.
    """
    values = list(_FIELDS(record))
    try:
        for i in _CONTAINERS:
            value = values[i]
            if type(value) not in PLAIN_TYPES:  # (a result of None: no call)
                values[i] = _clone(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"record of job {record.job_id} is not JSON-native ({exc}); store results in "
            "wire form (nuvom_kernel.serialization.to_wire)") from None
    return JobRecord(*values)


#: Every field of a record in ``__init__`` order; the containers among them are cloned.
_FIELD_NAMES = tuple(f.name for f in attrs.fields(JobRecord))
_FIELDS = operator.attrgetter(*_FIELD_NAMES)
_CONTAINERS = tuple(i for i, name in enumerate(_FIELD_NAMES)
                    if name in ("args", "kwargs", "options", "result", "history"))
assert all(f.init and not f.kw_only and (f.alias or f.name) == f.name
           for f in attrs.fields(JobRecord)), "_copy passes JobRecord's fields positionally"


def _clone(value: Any) -> Any:
    """``json.loads(json.dumps(value))``, without the text in between."""
    kind = type(value)
    if kind in PLAIN_TYPES:
        return value
    # The usual container holds plain values only: copied in C, then checked (a loop in the
    # function, not a comprehension, a call of its own up to Python 3.11: ~40 % less there).
    if kind is dict:
        out = value.copy()
        for k, v in out.items():
            if type(k) is not str or type(v) not in PLAIN_TYPES:
                break
        else:
            return out
        return {k if type(k) is str else _key(k):
                v if type(v) in PLAIN_TYPES else _clone(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        out = list(value)
        for v in out:
            if type(v) not in PLAIN_TYPES:
                break
        else:
            return out
        return [v if type(v) in PLAIN_TYPES else _clone(v) for v in value]
    if isinstance(value, dict | list | tuple | str | int | float):  # subclasses: as json does
        return json.loads(json.dumps(value))
    raise TypeError(f"Object of type {kind.__name__} is not JSON serializable")


def _key(key: Any) -> str:
    """A JSON object key as json writes it: a ``str`` subclass (a ``StrEnum``) as its text,
    ``1`` as ``"1"``, ``None`` as ``"null"``; any other key is refused, as json does."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, int | float):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


class MemoryResultBackend(ResultBackend):
    """A dict of records under a lock; records are copied in and out, never shared."""

    name = "memory"
    capabilities = Capabilities(heartbeats=True, schedules=True, in_process=True)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._workers: dict[str, tuple[dict[str, Any], float]] = {}  # id -> (info, expiry)
        self._schedules: dict[str, dict[str, Any]] = {}

    @property
    def location(self) -> str | None:
        return IN_PROCESS

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Decoded as the stored backends decode theirs (a test that damages an entry sees
        the same placeholder)."""
        with self._lock:
            return {k: read_schedule_state(k, v, "the memory result backend") for k, v in
                    self._schedules.items()}

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        with self._lock:
            stored = self._schedules.get(state.name)
            if previous is None:
                landed = stored is None
            elif previous.unreadable is not None:
                landed = (stored is not None
                          and stored_text(stored) == previous.unreadable.stored)
            else:
                landed = (isinstance(stored, dict)
                          and stored.get("updated_at") == previous.updated_at)
            if landed:
                self._schedules[state.name] = state.to_dict()
            return landed

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

    def known(self, job_ids: Sequence[str]) -> set[str]:
        with self._lock:
            return {job_id for job_id in job_ids if job_id in self._records}

    def query(
        self,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[JobRecord]:
        with self._lock:
            rows = [r for r in self._records.values()
                    if (status is None or r.status is status)
                    and (task is None or r.task == task)]
        return [_copy(r) for r in newer_first(rows, after, limit)]

    def purge(self, older_than: float) -> int:
        with self._lock:
            doomed = [i for i, r in self._records.items()
                      if r.status in TERMINAL_STATES and r.updated_at < older_than]
            for job_id in doomed:
                del self._records[job_id]
            return len(doomed)

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        with self._lock:
            self._workers[info.id] = (info.to_dict(), time.time() + ttl_secs)

    def live_workers(self) -> list[WorkerInfo]:
        now = time.time()
        with self._lock:
            for worker_id in [i for i, (_, expiry) in self._workers.items() if expiry <= now]:
                del self._workers[worker_id]
            live = sorted(self._workers.items())
        return [WorkerInfo.from_dict(json.loads(json.dumps(info))) for _, (info, _) in live]

    def forget_worker(self, worker_id: str) -> bool:
        with self._lock:
            return self._workers.pop(worker_id, None) is not None
