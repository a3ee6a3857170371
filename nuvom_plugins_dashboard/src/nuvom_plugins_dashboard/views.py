"""What each page shows, read from the backends on every request (no state of its own).

Why stateless: a dashboard that keeps its own copy (Flower) loses it on restart and disagrees
across hosts; reading the queue and result backends answers the same from any process on any
host that shares them. Why keyset pages: a page costs one index range scan whether it is the
first or the ten-thousandth, so the jobs page stays fast with a million records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import pprint
import re
import time
from collections.abc import Mapping
from typing import Any

import attrs

from nuvom_kernel.backends import page_cursor
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobRecord, JobStatus, Message
from nuvom_kernel.serialization import from_wire

__all__ = ["CLIP_CHARS", "RECORD_STATES", "BadRequest", "JobDetail", "JobFilter", "JobPage",
           "Overview", "QueueRow", "clip", "digest", "format_time", "impossible_job_id",
           "job_detail", "list_jobs", "live_workers", "overview", "printable", "schedules"]

#: Rows per jobs page.
PAGE_SIZE = 50
#: Records a page filtered by queue reads at most: the result SPI filters by status and task,
#: not queue, so the queue filter is applied to pages of records; the budget keeps one
#: request bounded however rare the queue is, and the page links on from where it stopped.
QUEUE_SCAN_BUDGET = 5000
#: The windows of the overview's "done" and "failed" columns, in minutes.
WINDOWS = (5, 60)
#: The states a job record can hold, what ``/jobs`` filters on. A record is written when an
#: attempt settles (or a retry or a cancel decides), never while one runs: RUNNING is the
#: queue's to say (a job's page asks it; the overview counts running jobs per queue).
RECORD_STATES = tuple(s for s in JobStatus if s not in (JobStatus.RUNNING, JobStatus.UNKNOWN))
#: Characters of one value (arguments, result, error, traceback) a job's page shows before
#: "show all": a 200,000-character argument made a 420 KB page that every visit re-sent.
CLIP_CHARS = 10_000
#: Longest stored value (as JSON) a job's page shows decoded: a larger one is shown in its
#: stored form, as before (decoding and formatting 15 MB took seconds per page view).
PRETTY_CHARS = 1_000_000


def format_time(value: float | str | None) -> str:
    """An epoch, or an ISO 8601 text with an offset (what ``schedule_rows`` gives), as
    every page shows a time: UTC, labelled, to the millisecond (``2026-03-29 01:00:00.000
    UTC``).

    Why UTC and one function: the pages used to disagree (``/schedules`` in UTC with
    ``+00:00``, ``/jobs`` and the overview in the server's zone with none), so a tick's job
    and the tick itself looked hours apart; UTC is what ``nuvom schedule list`` prints too.
    """
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time this dashboard knows: shown as it came
        if when.tzinfo is None:
            return value  # no zone to convert from: never guess one
    else:
        try:
            when = dt.datetime.fromtimestamp(value, dt.timezone.utc)
        except (OverflowError, ValueError, OSError):  # inf, NaN, an epoch in milliseconds
            return repr(value)  # a hand-edited row: shown as stored, never a 500
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} UTC"


def digest(value: Any) -> str:
    """A short fingerprint of what a live section shows (its data, without the parts that
    change on every read such as "as of"): the page sends it back with each refresh, and an
    unchanged section is not swapped, so focus and a text selection inside it survive."""
    return hashlib.sha256(repr(value).encode("utf-8", "backslashreplace")).hexdigest()[:20]


def clip(text: str, limit: int | None = CLIP_CHARS) -> tuple[str, int]:
    """``text`` cut to its first ``limit`` characters (``None``: whole), and how many were
    left out (0 when none)."""
    if limit is None or len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


class BadRequest(ValueError):
    """A query parameter the dashboard cannot use; the message says which and what works."""


def printable(text: str) -> str:
    """``text`` fit for a UTF-8 page: a lone surrogate (text a program decoded with
    ``surrogateescape``, such as a file name from ``os.listdir``) shows as its ``\\udcXX``
    escape and a NUL as ``\\x00``, where either would fail or vanish in the page; other
    text is returned as it is (the same object)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _no_nul(name: str, value: str | None) -> str | None:
    """Refuse a NUL at the edge: no task, queue or job id holds one, and PostgreSQL refuses
    it in any query (a 500 instead of an empty answer)."""
    if value is not None and "\x00" in value:
        raise BadRequest(f"{name} holds a NUL character (\\x00), which no job, task or queue "
                         "name does")
    return value


#: A number as a page link writes one (a cursor's time, ``since``: ``repr`` of a float):
#: plain decimal digits. ``float()`` also reads ``inf``, ``nan``, ``5_0`` and `` 5``,
#: which no page link holds.
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def checked_cursor(after: str, link: str = "the page's 'older »' link",
                   start: str = "the newest job") -> None:
    """Refuse a page cursor no page link makes: no ``|``, a NUL, or a time that is not a
    finite number written as ``repr`` writes one.

    Why strict: a time the store can order against but no record holds made a wrong page
    with no word of it — ``inf|x`` (after every time) showed the first page of ``/jobs`` as
    if it were a later one and an empty ``/queued``, and ``nan`` orders against no time, so
    each store answered it its own way (an empty page on SQLite, page 1 on PostgreSQL).

    :param link: the page's link that carries its cursors, named in the refusal.
    :param start: where the page starts without ``after``, named in the refusal.
    :raises BadRequest: saying what is wrong with it and how to page instead.
    """
    _no_nul("after", after)
    head, sep, _ = after.partition("|")
    if not sep:
        why = "it has no '|' between a time and a job id"
    elif _finite(head) is None:  # (1e999 reads as inf: no finite number either)
        why = f"its time {head!r} is not a finite number in digits (such as 1712345678.25)"
    else:
        return
    raise BadRequest(f"after: malformed page cursor {after!r}: {why}. A cursor is "
                     f"'<time>|<job id>' as {link} writes it: follow that link, or drop "
                     f"after= to start at {start}")


def _finite(value: str) -> float | None:
    """``value`` as a number if it is a finite one written in digits, else ``None``."""
    number = float(value) if _NUMBER.fullmatch(value) else math.nan
    return number if math.isfinite(number) else None


def _since(params: Mapping[str, str]) -> float | None:
    """The window of ``/jobs``: ``since`` (an epoch, what the page's own links carry) or
    ``minutes`` (the last N minutes, from now: what the overview's counts link to, so
    its section reads the same on every refresh and is not swapped for a moved epoch).

    :raises BadRequest: either one not a number, ``minutes`` not positive, or both given.
    """
    since, minutes = params.get("since") or None, params.get("minutes") or None
    if since is not None and minutes is not None:
        raise BadRequest("give since (an epoch) or minutes (the last N minutes), not both")
    if since is not None:
        if (epoch := _finite(since)) is None:
            raise BadRequest(f"since={since!r} is not a time; use an epoch in seconds, such "
                             "as 1712345678.25, or drop since= to list every time")
        return epoch
    if minutes is None:
        return None
    if (span := _finite(minutes)) is None or span <= 0:
        raise BadRequest(f"minutes={minutes!r} is not a number of minutes; use a positive "
                         "number, such as 5, or drop minutes= to list every time")
    return max(0.0, time.time() - span * 60)  # (1e308 minutes: since the epoch, not -inf)


def impossible_job_id(job_id: str) -> bool:
    """Whether no job can have this id (the kernel refuses a NUL in one), so the page
    answers 404 without asking a backend that would refuse the query."""
    return "\x00" in job_id


def _status(value: str | None) -> JobStatus | None:
    if not value:
        return None
    try:
        status = JobStatus(value.upper())
    except ValueError:
        status = JobStatus.UNKNOWN
    if status is JobStatus.RUNNING:
        raise BadRequest(
            "status=running lists nothing: a job record is written when an attempt settles, "
            "never while it runs, so no record is RUNNING. The overview counts running jobs "
            "per queue, and a job's own page says RUNNING while it runs")
    if status not in RECORD_STATES:
        valid = ", ".join(s.value.lower() for s in RECORD_STATES)
        raise BadRequest(f"status={value!r} is not a job state; use one of {valid}")
    return status


@attrs.frozen
class JobFilter:
    """The filters of ``/jobs`` (query ``status``, ``task``, ``queue``, and ``since`` or
    ``minutes``: records updated since then); bulk actions act on exactly the jobs a filter
    lists."""

    status: JobStatus | None = None
    task: str | None = None
    queue: str | None = None
    since: float | None = None  # an epoch: only records updated at or after it

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> JobFilter:
        """:raises BadRequest: an unknown status, a NUL in a name, a bad window."""
        return cls(status=_status(params.get("status")),
                   task=_no_nul("task", params.get("task") or None),
                   queue=_no_nul("queue", params.get("queue") or None),
                   since=_since(params))

    def params(self) -> dict[str, str]:
        """The query parameters that reproduce this filter (for links and forms): a window
        as ``since``, its epoch, so every page of it and its bulk actions keep one window."""
        found = {"status": self.status.value.lower() if self.status else None,
                 "task": self.task, "queue": self.queue,
                 "since": None if self.since is None else repr(self.since)}
        return {k: v for k, v in found.items() if v}

    def in_window(self, record: JobRecord) -> bool:
        """Whether ``record`` was updated at or after ``since`` (as ``counts_since``)."""
        return self.since is None or record.updated_at >= self.since

    def matches(self, record: JobRecord) -> bool:
        return ((self.status is None or record.status is self.status)
                and (self.task is None or record.task == self.task)
                and (self.queue is None or record.queue == self.queue)
                and self.in_window(record))


@attrs.frozen
class JobPage:
    """One page of ``/jobs``: ``next_cursor`` continues it (``None`` on the last page);
    ``scanned`` records were read to fill it and ``budget_hit`` says the queue filter
    stopped at :data:`QUEUE_SCAN_BUDGET` before filling the page."""

    records: list[JobRecord]
    next_cursor: str | None
    scanned: int
    budget_hit: bool = False


def list_jobs(results: Any, flt: JobFilter, after: str | None = None,
              limit: int = PAGE_SIZE, budget: int = QUEUE_SCAN_BUDGET) -> JobPage:
    """Newest first, after the cursor ``after``. The result SPI has no time filter, so a
    window (``flt.since``) ends the listing at the first record older than it: the query
    is newest first by ``updated_at``, so every later one is older too.

    :raises BadRequest: ``after`` is not a cursor this dashboard made.
    """
    if after is not None:
        checked_cursor(after)
    status, task = flt.status, flt.task
    if flt.queue is None:  # the backend filters everything: one indexed query
        page = results.query(status=status, task=task, limit=limit + 1, after=after)
        page = list(itertools.takewhile(flt.in_window, page))
        more = len(page) > limit
        page = page[:limit]
        return JobPage(page, page_cursor(page[-1]) if more else None, len(page))
    found: list[JobRecord] = []
    scanned = 0
    cursor = after
    chunk = max(limit * 4, 200)
    while scanned < budget:
        want = min(chunk, budget - scanned)
        page = results.query(status=status, task=task, limit=want, after=cursor)
        for record in page:
            if not flt.in_window(record):  # and so is every later one
                return JobPage(found, None, scanned)
            scanned += 1
            if flt.matches(record):
                found.append(record)
                if len(found) > limit:  # one more than shown: a next page is not empty
                    return JobPage(found[:limit], page_cursor(found[limit - 1]), scanned)
        if len(page) < want:  # no older records
            return JobPage(found, None, scanned)
        cursor = page_cursor(page[-1])
    return JobPage(found, cursor, scanned, budget_hit=True)


@attrs.frozen
class QueueRow:
    """One named queue on the overview."""

    name: str
    ready: int = 0
    delayed: int = 0
    running: int = 0
    oldest_age_secs: float | None = None
    done: tuple[int, ...] = (0,) * len(WINDOWS)  # SUCCEEDED per window of WINDOWS
    failed: tuple[int, ...] = (0,) * len(WINDOWS)  # FAILED per window


@attrs.frozen
class Overview:
    queue_backend: str
    result_backend: str
    queues: list[QueueRow]
    quarantined: int
    warnings: list[str]
    generated_at: float


def overview(kernel: Any, now: float | None = None) -> Overview:
    """Per queue: ready, delayed, running, oldest ready age (the queue backend's
    ``stats()``), and SUCCEEDED / FAILED records per window (``counts_since``)."""
    now = time.time() if now is None else now
    stats = kernel.queue.stats()
    recent = [kernel.results.counts_since(now - minutes * 60) for minutes in WINDOWS]
    names = set(stats.queues) | {q for window in recent for q in window}
    rows = []
    for name in sorted(names):
        counts = stats.queues.get(name)
        rows.append(QueueRow(
            name=name,
            ready=counts.ready if counts else 0,
            delayed=counts.delayed if counts else 0,
            running=counts.running if counts else 0,
            oldest_age_secs=counts.oldest_ready_age_secs if counts else None,
            done=tuple(w.get(name, {}).get(JobStatus.SUCCEEDED.value, 0) for w in recent),
            failed=tuple(w.get(name, {}).get(JobStatus.FAILED.value, 0) for w in recent)))
    return Overview(queue_backend=kernel.queue.name, result_backend=kernel.results.name,
                    queues=rows, quarantined=len(stats.quarantined),
                    warnings=list(stats.warnings), generated_at=now)


@attrs.frozen
class JobDetail:
    """``/jobs/<id>``: the state from the queue then the record (as ``nuvom inspect job``),
    and the stored record for arguments, outcome, history and timings (``None`` while a job
    waits for its first run: only the queue knows it then)."""

    job_id: str
    status: JobStatus
    record: JobRecord | None
    #: The workflow this job is a step of (its graph still stored), else ``None``.
    workflow: str | None = None
    #: Without a record: its message while the queue holds it (priority, due time) and
    #: what its body says as a record would (task, queue, arguments), as ``nuvom inspect
    #: job`` shows them; the page showed only the state.
    message: Message | None = None
    queued: JobRecord | None = None

    @property
    def due_at(self) -> float | None:
        """When its queued message is due, ``None`` if it is due now (or not queued)."""
        at = self.message.available_at if self.message is not None else 0.0
        return at if at > time.time() else None

    @property
    def shown(self) -> JobRecord | None:
        """The record, else what the queued message says."""
        return self.record if self.record is not None else self.queued

    @property
    def finished(self) -> bool:
        """FAILED or CANCELLED with a record: what could run again."""
        return self.record is not None and self.status in (JobStatus.FAILED,
                                                           JobStatus.CANCELLED)

    @property
    def can_retry(self) -> bool:
        """Whether *Retry* would be accepted: a finished job that is no workflow step
        (``dispatcher.rerun`` refuses a step; it runs again inside its workflow only, see
        :attr:`workflow_retry`)."""
        return self.finished and self.workflow is None

    @property
    def workflow_retry(self) -> str | None:
        """For a finished workflow step, the command that runs it again with the steps
        depending on it (what the kernel's refusal tells, offered before it refuses)."""
        if not self.finished or self.workflow is None:
            return None
        return f"nuvom workflow retry {self.workflow} --from {self.job_id}"

    @property
    def can_cancel(self) -> bool:
        """Whether *Cancel* would be accepted: only a job that has not started."""
        return self.status in (JobStatus.QUEUED, JobStatus.RETRYING)

    def allows(self, action: str) -> bool:
        """Whether ``action`` (``retry``, ``cancel``) would be accepted now, so a
        confirmation page offers only what the POST will do."""
        return self.can_retry if action == "retry" else self.can_cancel

    @property
    def run(self) -> int | None:
        """The run its record is at (``None`` without one): a retry form carries it, and the
        POST refuses when the job moved on to another run since the page was shown."""
        return self.record.run if self.record is not None else None

    def clipped(self, field: str, full: bool = False) -> tuple[str, int]:
        """:meth:`pretty` (``args``, ``kwargs``, ``result``) or a text field (``traceback``,
        ``error_message``) cut to :data:`CLIP_CHARS` unless ``full``; and how many
        characters were left out."""
        if field in ("traceback", "error_message"):
            text = printable(str(getattr(self.shown, field, None) or ""))
        else:
            text = self.pretty(field)
        return clip(text, None if full else CLIP_CHARS)

    def pretty(self, field: str) -> str:
        """A value of the record (``args``, ``kwargs``, ``result``) as the task saw or
        returned it, the way Python writes it (``(1, 2)``, ``datetime.date(2026, 1, 2)``,
        ``b'...'``): the stored form's type tags were what a user had to read before, and
        ``get()`` and ``nuvom inspect job`` show the decoded value too. Non-ASCII text as
        it is, a lone surrogate as its ``\\udcXX`` escape (it has no UTF-8 form: the page
        could not be sent). A value that does not decode (stored by a newer release, or
        by hand) is shown in its stored JSON, saying so; so is one over
        :data:`PRETTY_CHARS`."""
        shown = self.shown
        value = getattr(shown, field) if shown is not None else None
        stored = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
        if len(stored) > PRETTY_CHARS:  # formatting it would cost seconds, to be clipped
            return printable(stored)
        try:
            shown = from_wire(value)
        except Exception as exc:
            return printable(f"(stored form; it does not decode: {type(exc).__name__}: {exc})\n"
                             + stored)
        return printable(pprint.pformat(shown, width=100, sort_dicts=True))


def job_detail(kernel: Any, job_id: str) -> JobDetail:
    """The job's state now (queue, then record: ``Kernel.state_of``), its record and its
    workflow if a step. Values are not decoded here, so a record whose values do not decode
    still has its page (the values say why), not the 503 of a store that cannot be read."""
    status, record = kernel.state_of(Job(id=job_id, task="", kernel=kernel))
    workflow = None
    if kernel.queue.capabilities.workflows:
        from nuvom_kernel.workflow.steps import workflow_of

        workflow = workflow_of(kernel, job_id)
    message, queued = _queued(kernel, job_id) if record is None \
        and status is not JobStatus.UNKNOWN else (None, None)
    return JobDetail(job_id=job_id, status=status, record=record, workflow=workflow,
                     message=message, queued=queued)


def _queued(kernel: Any, job_id: str) -> tuple[Message | None, JobRecord | None]:
    """The job's message (``peek``, optional: ``None`` without it) and its body as a
    record in ``status`` (``None`` if it does not decode: its worker will fail it)."""
    try:
        message = kernel.queue.peek(job_id)
    except NotImplementedError:
        return None, None
    if message is None:
        return None, None
    try:
        envelope = Envelope.from_message(message, kernel.serializer)
    except SerializationError:
        return message, None
    return message, envelope.record(JobStatus.QUEUED, attempts=0)


def schedules(kernel: Any) -> list[dict[str, Any]]:
    """The rows of ``nuvom schedule list`` (next run, last run and its status, missed and
    skipped ticks)."""
    from nuvom_kernel.scheduler import schedule_rows

    return schedule_rows(kernel)


def live_workers(results: Any) -> list[Any] | None:
    """The workers whose heartbeats have not expired, or ``None`` when the result backend
    keeps no heartbeats (the page says so instead of showing an empty list)."""
    if not getattr(type(results).capabilities, "heartbeats", False):
        return None
    return list(results.live_workers())
