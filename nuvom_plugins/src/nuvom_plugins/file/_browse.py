"""``FileJobQueue.browse``: one page of the queue's messages, oldest first, read from file
names and, for the page only, from file headers (never from bodies).

Why this shape: a file name already holds the queue, ``created_at`` (in whole microseconds),
the delivery and failure counts and, for ``delayed/`` and ``leased/``, the due time or lease
expiry (see :mod:`nuvom_plugins.file._names`). So the three directories are listed once,
every name is filtered by queue, state and cursor without opening a file (most by slicing
it at known places, not parsing it), and only the page's files are opened, for their
header line: the task, the real id and queue (a long one is a hash in the name), the
priority and the exact ``created_at`` the cursor carries.

Order: a name's microseconds are ``int(created_at * 1e6)``, monotonic in ``created_at``, so
a smaller microsecond is a strictly older message. Names are taken in groups of one
microsecond (a heap, so a page costs one pass over the names plus ``O(page · log n)``), and
each group is ordered exactly by ``(created_at, id)`` from its headers before the page is
cut; the cursor's own microsecond group is re-read and filtered exactly, so ties page
correctly whatever the float.

A look changes nothing: no rename, no promotion, no lease recovery. An expired lease reads
as QUEUED and a delayed file whose time has come as due, as the next claim will find them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from pathlib import Path

from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob, parse_cursor
from nuvom_plugins.file._fs import CorruptEntry, encode_name, read_header, read_message
from nuvom_plugins.file._layout import Layout
from nuvom_plugins.file._names import US, Name, listdir, parse, us

__all__ = ["browse", "name_state"]

# (created µs as 17 digits, kind, file name): unique, and ordered by creation as the digits
# are (fixed width), so the heap orders names without parsing them.
_Entry = tuple[str, str, str]


def browse(fs: Layout, queues: Sequence[str] | None, states: Collection[JobStatus] | None,
           after: str | None, limit: int, now: float) -> list[QueuedJob]:
    """One page of :meth:`~nuvom_kernel.backends.QueueBackend.browse` (see module docs).

    :raises ValueError: ``after`` is not a :attr:`QueuedJob.cursor`.
    """
    key = None if after is None else parse_cursor(after, made_by="QueuedJob.cursor")
    if key is not None and not math.isfinite(key[0]):  # no name holds such a time
        if not key[0] < 0:
            return []  # nothing is after +inf, or after NaN (as on Redis)
        key = None  # every message is after -inf
    if limit <= 0 or (queues is not None and not queues):
        return []
    wanted = None if queues is None else {encode_name(q) for q in queues}
    from_us = "" if key is None else f"{us(key[0]):017d}"
    now_us = us(now)
    entries: list[_Entry] = []
    # Why this order: a claim (any worker's, on any queue) moves due delayed files and
    # expired leases to ready/, so ready/ is listed after them: a file moved between two
    # listings is then seen twice (``seen`` folds it), never in neither. Only a message
    # claimed meanwhile (ready -> leased) may be missed, as the SPI allows.
    for kind in ("delayed", "leased", "ready"):
        entries += _names(fs, kind, wanted, states, from_us, now_us)
    heapq.heapify(entries)
    page: list[QueuedJob] = []
    seen: set[str] = set()  # encoded ids listed: a file moved between two listings
    while entries and len(page) < limit:
        group_us, group = entries[0][0], []
        while entries and entries[0][0] == group_us:
            _, kind, name = heapq.heappop(entries)
            parsed = parse(name, kind)
            if parsed is None or parsed.id in seen:
                continue  # a name that does not parse: the claim that reaches it quarantines it
            state = name_state(kind, parsed, now_us)
            if states is not None and state not in states:
                continue
            job = _job(fs.dirs[kind] / name, kind, parsed, state, int(group_us))
            if job is None or (key is not None and (job.created_at, job.id) <= key):
                continue
            seen.add(parsed.id)
            group.append(job)
        group.sort(key=lambda j: (j.created_at, j.id))
        page += group
    return page[:limit]


def _names(fs: Layout, kind: str, wanted: set[str] | None,
           states: Collection[JobStatus] | None, from_us: str, now_us: int) -> list[_Entry]:
    """The names of ``kind`` that may be in the wanted queues and states, created in
    microsecond ``from_us`` or later (``""``: any).

    Why by position and not :func:`~nuvom_plugins.file._names.parse`: parsing every name
    was most of a page's cost on a large queue, and only the page's names need it (the
    caller parses those, skipping any that do not parse). A ready name needs no parse to
    know its state (QUEUED); delayed and leased names are parsed here only when ``states``
    filters, since their state is in their name."""
    if kind == "ready" and states is not None and JobStatus.QUEUED not in states:
        return []
    names = listdir(fs.dirs[kind])
    if states is not None and kind != "ready":
        names = [n for n in names if (p := parse(n, kind)) is not None
                 and name_state(kind, p, now_us) in states]
    dots = ("ready", "delayed", "leased").index(kind)  # parts before the sort key
    found: list[_Entry] = []
    for name in names:
        o = 0  # where the sort key starts: after the due time, or the expiry and token
        for _ in range(dots):
            o = name.find(".", o) + 1
        created = name[o + 10:o + 27]
        if created >= from_us and (
                wanted is None or name[o + 34:name.find(".", o + 34)] in wanted):
            found.append((created, kind, name))
    return found


def name_state(kind: str, parsed: Name, now_us: int) -> JobStatus:
    """:func:`~nuvom_kernel.views.queued_state` from the name alone: a live lease runs, a
    failed message waiting for its retry time is retrying, everything else waits."""
    if kind == "leased":
        return JobStatus.RUNNING if parsed.when_us > now_us else JobStatus.QUEUED
    if kind == "delayed" and parsed.failures and parsed.when_us > now_us:
        return JobStatus.RETRYING
    return JobStatus.QUEUED


def _job(path: Path, kind: str, parsed: Name, state: JobStatus, created_us: int
         ) -> QueuedJob | None:
    """The listed message at ``path``, from its name and header; ``None`` when it is gone
    (claimed, acked or moved since the listing) or damaged: a header that does not decode
    or names another id or queue than the file name (the claim that reaches it quarantines
    it, as it does such files). A body's checksum is not checked: that needs the body."""
    header = read_header(path)
    if header is None:
        return None
    try:
        job_id, queue = str(header["id"]), str(header["queue"])
        priority, created_at = int(header["priority"]), float(header["created_at"])
        available_at = float(header["available_at"])
        task = str(header["task"]) if "task" in header else _legacy_task(path)
    except (KeyError, TypeError, ValueError):
        return None
    if task is None or encode_name(job_id) != parsed.id or encode_name(queue) != parsed.queue:
        return None
    if us(created_at) != created_us:
        # a name renamed by hand: its name places it, so its cursor must say the same
        created_at = created_us / US
    if kind == "delayed" and us(available_at) != parsed.when_us:
        available_at = parsed.when_us / US  # a retry delay: only the name holds it
    leased = kind == "leased" and state is JobStatus.RUNNING
    return QueuedJob(id=job_id, task=task, queue=queue, priority=priority, state=state,
                     created_at=created_at, available_at=available_at,
                     failures=parsed.failures, deliveries=parsed.deliveries,
                     lease_expires_at=parsed.when_us / US if leased else None)


def _legacy_task(path: Path) -> str | None:
    """A header written before ``task`` existed: the task its body names, as a claim reads
    it (only such old files pay for the body); ``None`` if gone or damaged."""
    try:
        return read_message(path).task
    except (FileNotFoundError, CorruptEntry):
        return None
