"""The result backend SPI: durable job records (state, result, error, attempt history),
plus worker heartbeats and schedule state for backends that declare them. Four primitives
(``put``, ``get``, ``query``, ``purge``); the seed's conveniences (``set_result``,
``get_full``, ``list_jobs`` …) are built on them here, so no plugin writes them.
Imported by plugins as :class:`nuvom_kernel.backends.ResultBackend`.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import JobRecord, JobStatus, ScheduleState, UnreadableState
from nuvom_kernel.spi import Backend
from nuvom_kernel.views import WorkerInfo, page_cursor

__all__ = [
    "ResultBackend",
    "decode_schedule_state",
    "read_schedule_state",
    "report_unreadable",
    "stored_text",
]

log = logging.getLogger("nuvom.scheduler")


class ResultBackend(Backend):
    """Durable job records: state, result, error and attempt history.

    Required primitives: :meth:`put`, :meth:`get`, :meth:`query`, :meth:`purge`. Optional:
    :meth:`put_many` (one transaction for a batch of outcomes), :meth:`known` (which ids
    have records, in one query), :meth:`counts` and
    :meth:`counts_since`; with the ``heartbeats`` capability, :meth:`heartbeat`,
    :meth:`live_workers`, :meth:`forget_worker`.
    """

    #: Finished records older than this many seconds are deleted by every running worker
    #: (about once a minute: :mod:`nuvom_kernel.worker.expiry`), with the workflows that
    #: ended before then, as ``nuvom purge results --older-than`` does. ``0`` keeps them
    #: until that command. A backend sets it from its own ``result_ttl_secs`` setting; one
    #: whose store expires records itself (Redis key TTLs, PostgreSQL's tick) leaves it 0.
    result_ttl_secs: float = 0.0

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
        task: str | None = None,
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

    def known(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a record (a damaged one included). The
        producer asks this before ``.map(job_ids=...)`` pushes, so an id the caller chose
        is never pushed again once it finished. The default asks :meth:`get` per id;
        override with one query: over a network each ``get`` is a round trip (PostgreSQL,
        localhost: 10.7k jobs/s with ids against 27-29k/s without)."""
        found: set[str] = set()
        for job_id in dict.fromkeys(job_ids):
            try:
                if self.get(job_id) is not None:
                    found.add(job_id)
            except SerializationError:  # a record that does not decode is still there
                found.add(job_id)
        return found

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
        """Every stored schedule state by name (capability ``schedules``).

        Never fails as a whole because of one stored entry: an entry that does not decode
        is logged and returned as the placeholder of :func:`read_schedule_state` (the
        schedule goes on as a new one), so one damaged entry cannot stop every schedule."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        """Store ``state`` if the stored state of its schedule is still ``previous``
        (compared by ``updated_at``; ``None``: none stored yet), atomically; ``False`` and
        no change otherwise. The one write every scheduler races on: its winner fires the
        ticks. A ``previous`` whose ``unreadable`` is set (a placeholder) is compared by
        ``previous.unreadable.stored`` instead: the damaged entry is replaced only while it
        is still the one read."""
        raise NotImplementedError(f"result backend {self.name!r} keeps no schedule state")

    # --- conveniences ---------------------------------------------------------------------

    def set_result(self, job_id: str, result: Any, *, task: str = "") -> bool:
        """Record success of the stored run and attempt; ``result`` must already be in
        wire-safe form. ``False`` (nothing stored) over a CANCELLED record: a cancel is
        final for its run (:func:`~nuvom_kernel.models.supersedes`)."""
        record = self.get(job_id) or JobRecord(job_id=job_id, task=task,
                                               status=JobStatus.SUCCEEDED)
        record.status = JobStatus.SUCCEEDED
        record.result = result  # and no error left from an earlier failure beside it
        record.error_type = record.error_message = record.traceback = None
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

    def set_error(
        self,
        job_id: str,
        error_type: str,
        message: str,
        traceback: str | None = None,
        *,
        task: str = "",
    ) -> bool:
        """Record failure of the stored run and attempt (``False`` over a CANCELLED
        record, as :meth:`set_result`)."""
        record = self.get(job_id) or JobRecord(job_id=job_id, task=task,
                                               status=JobStatus.FAILED)
        record.status = JobStatus.FAILED
        record.error_type, record.error_message, record.traceback = error_type, message, traceback
        record.result = None  # a failed job has no result (a success's would linger)
        record.finished_at = record.updated_at = time.time()
        return self.put(record)

    def get_result(self, job_id: str) -> Any:
        """The wire-safe result of a succeeded job, else ``None``."""
        record = self.get(job_id)
        return record.result if record and record.status is JobStatus.SUCCEEDED else None

    def get_error(self, job_id: str) -> dict[str, Any] | None:
        """The error of a failed attempt as ``{"type", "message", "traceback"}``: kept on a
        job that failed, and on one retrying after a failure (its last error), else
        ``None``."""
        record = self.get(job_id)
        if record is None or record.error_type is None:
            return None
        return {"type": record.error_type, "message": record.error_message,
                "traceback": record.traceback}

    def get_full(self, job_id: str) -> dict[str, Any] | None:
        """The whole record as a plain dict (:meth:`JobRecord.to_dict
        <nuvom_kernel.models.JobRecord.to_dict>`: status, times, attempts, result or error,
        history), for tools that print or ship it; ``None`` for an id never recorded."""
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
        """Records as dicts, newest first; page on with ``after=page_cursor(last)``.
        ``status`` is a :class:`JobStatus` or its name in any case (``"failed"``)."""
        wanted = None if status is None else _status(status)
        records = self.query(status=wanted, task=task, limit=limit, after=after)
        return [r.to_dict() for r in records]


def _status(status: JobStatus | str) -> JobStatus:
    """``status`` as a :class:`JobStatus`, a name in any case taken (``"failed"``: the CLI
    takes that too); anything else refused with the names that are."""
    if isinstance(status, JobStatus):
        return status
    try:
        return JobStatus(str(status).upper())
    except ValueError:
        raise ValueError(f"status {status!r} is not a job status; use one of "
                         f"{', '.join(s.value for s in JobStatus if s is not JobStatus.UNKNOWN)}"
                         ) from None


# --- schedule state read from a store -------------------------------------------------------

#: How much of an unreadable stored value a log line quotes.
QUOTED_CHARS = 300

_IN_STATE: Any = object()  # decode_schedule_state(version=...) not given
#: (what, where, sha-256 of the stored value) this process has logged: each damage once.
_logged: set[tuple[str, str, str]] = set()
_logged_lock = threading.Lock()


def stored_text(value: object) -> str | bytes:
    """A stored value as the text that identifies it: text and bytes as they are, any other
    value (one entry of a JSON document holding many) as canonical JSON, so that two reads
    of the same entry give equal texts — what a compare-and-set on an unreadable entry
    compares (a float NaN is not equal to itself; its JSON text is)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return _json_text(value)


def _json_text(value: object) -> str:
    """``value`` as canonical JSON text, or its ``repr`` where JSON cannot say it."""
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _json_kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _shown(value: object) -> str:
    """``value`` in a message: its JSON kind, and its JSON text (short) when that says more
    (``a string ("soon")``; ``null`` alone)."""
    kind = _json_kind(value)
    if value is None or isinstance(value, bool):
        return kind
    text = _json_text(value)
    return f"{kind} ({text[:60]}{'…' if len(text) > 60 else ''})"


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def decode_schedule_state(name: str, value: object, *, version: Any = _IN_STATE
                          ) -> ScheduleState:
    """The :class:`ScheduleState` stored for schedule ``name``: ``value`` is its JSON text
    (``str`` or ``bytes``) or the decoded JSON value.

    Every field is checked, not only parsed: a state the scheduler would choke on later
    (``last_tick`` a string) must be refused here, where the entry can still be named.
    ``version`` is what the backend's compare-and-set compares when it keeps it beside the
    state (SQLite's and PostgreSQL's ``updated_at`` column, Redis's ``sched:v``): it becomes
    the state's ``updated_at``, so the next compare-and-set matches the stored row. Not
    given, the state's own ``updated_at`` is that version.

    :raises ValueError: saying what is wrong, without the stored text (the caller has it).
    """
    data: object = value
    if isinstance(value, str | bytes | bytearray):
        if not value.strip():
            raise ValueError("empty: no state is stored")
        try:
            data = json.loads(value)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"a JSON object was expected, found {_json_kind(data)}")
    stored_name = data.get("name", name)
    if stored_name != name:
        raise ValueError(f"it is stored under {name!r} but names schedule {stored_name!r}")
    for field in ("last_tick", "last_run", "last_job_id", "fired", "missed", "skipped"):
        if field not in data:
            continue  # the default of ScheduleState
        got, counted = data[field], field in ("fired", "missed", "skipped")
        if counted:
            ok, wanted = isinstance(got, int) and not isinstance(got, bool), "an integer"
        elif field == "last_job_id":
            ok, wanted = got is None or isinstance(got, str), "a string or null"
        else:
            ok, wanted = got is None or _is_number(got), "a finite number or null"
        if not ok:
            raise ValueError(f"its {field} is {_shown(got)}, not {wanted}")
    if version is _IN_STATE:
        version = data.get("updated_at")
        if not _is_number(version):
            raise ValueError(f"its updated_at is {_shown(version)}, not a finite number")
    elif version is None:
        raise ValueError("its version (updated_at, kept beside the state) is missing")
    elif not _is_number(version):
        raise ValueError(f"its version (updated_at, kept beside the state) is "
                         f"{_shown(version)}, not a finite number")
    fields = {k: v for k, v in data.items() if k not in ("name", "updated_at")}
    return ScheduleState.from_dict({**fields, "name": name, "updated_at": float(version)})


def report_unreadable(what: str, where: str, problem: str, stored: str | bytes,
                      then: str) -> None:
    """Log at ERROR that ``what`` stored in ``where`` is unreadable: ``problem``, the stored
    text (quoted, the first :data:`QUOTED_CHARS` characters: the log keeps what the next
    write replaces) and ``then``, what happens next.

    Once per process for each distinct damaged value: a scheduler reads every state each
    second, and a line a second would bury everything else."""
    digest = hashlib.sha256(stored if isinstance(stored, bytes)
                            else stored.encode("utf-8", "surrogatepass")).hexdigest()
    with _logged_lock:
        if (what, where, digest) in _logged:
            return
        _logged.add((what, where, digest))
    text: str | bytes = stored
    if isinstance(stored, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            text = stored.decode()  # quoted as text when it is; as bytes (b'...') if not
    quoted = repr(text[:QUOTED_CHARS])
    if len(text) > QUOTED_CHARS:
        quoted += f" (the first {QUOTED_CHARS} of {len(text)})"
    log.error("%s in %s is unreadable: %s. Stored: %s. %s", what, where, problem, quoted,
              then)


def read_schedule_state(name: str, value: object, where: str, *, version: Any = _IN_STATE
                        ) -> ScheduleState:
    """:func:`decode_schedule_state`, or, for an entry that does not decode, a placeholder
    the scheduler can go on from: a state with no last tick (the schedule fires from its
    next tick, as a new one would) whose ``unreadable`` holds what was wrong, ``where`` it
    is and the stored value, which the backend's compare-and-set compares to replace the
    damaged entry atomically. The entry is logged (:func:`report_unreadable`).

    Why not skip the entry, or raise: skipped, the schedule would look new and its insert
    would fail forever against the stored row, so it never fired again; raised, one
    damaged entry stopped every schedule of every worker, and ``nuvom schedule list``."""
    try:
        return decode_schedule_state(name, value, version=version)
    except ValueError as exc:
        stored = stored_text(value)
        report_unreadable(f"the state of schedule {name!r}", where, str(exc), stored,
                          "It is treated as no state yet: the schedule fires from its next "
                          "tick, and that run's state replaces the entry")
        return ScheduleState(name, updated_at=0.0,
                             unreadable=UnreadableState(str(exc), where, stored))
