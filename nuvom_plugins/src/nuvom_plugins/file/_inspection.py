"""The file queue's read side: counts, ``stats``, ``browse``, ``peek`` and ``peek_state``,
and the operator's ``cancel`` and ``clear`` (the layout: :mod:`.queue`).

Why a module of its own: none of it is on a job's path. A look lists directories and reads
names (a header only where a name cannot say), renames nothing, and counts an expired lease
or a due delayed file as waiting by the times in their names; the claim, which moves them,
is :mod:`.queue`. :class:`QueueInspection` is a base class of
:class:`~nuvom_plugins.file.queue.FileJobQueue` and uses the state its ``__init__`` sets
(declared below) and its cached listings (``_refreshed``).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from nuvom_kernel.backends import QueueStats, queue_names
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.views import QueuedJob
from nuvom_plugins.file import _browse
from nuvom_plugins.file._fs import (
    CorruptEntry,
    decode_name,
    encode_name,
    hashed,
    read_message,
    read_queue_name,
)
from nuvom_plugins.file._leases import LeaseOperations
from nuvom_plugins.file._names import US, Cache, listdir, parse, us
from nuvom_plugins.file.errors import writes
from nuvom_plugins.file.limits import Slots

__all__ = ["QueueInspection"]

#: Most message files ``stats`` reads per queue to find the ready message due first (see
#: :meth:`QueueInspection._earliest_due`): one, unless delayed or retried messages lead it.
_OLDEST_READS = 64
#: Files ``stats`` lists per long (hashed) queue name whose real name it does not know yet,
#: to read it from the first one still there (see :meth:`QueueInspection._queue_names`).
_NAME_READS = 8
#: Long queue names an instance remembers (a bound on its memory, not a cost).
_NAMES_KEPT = 4096


class QueueInspection(LeaseOperations):
    """The read side of :class:`~nuvom_plugins.file.queue.FileJobQueue`."""

    # set by FileJobQueue.__init__
    _lock: threading.RLock  # caches and the lease-scan clock
    _caches: dict[str, Cache]
    _slots: Slots
    _hashed_names: dict[str, str]  # hashed queue (file names) -> real name

    if TYPE_CHECKING:
        def _refreshed(self, kind: str, now: float) -> Cache:
            """FileJobQueue's cached listing of ``kind``."""
            raise NotImplementedError

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        now = time.time()
        live = self._slots.live_tokens(now)
        ready: dict[str, int] = {}
        for name in listdir(self._dirs["ready"]):
            task = self._slots.task_of(self._dirs["ready"] / name)
            if task is not None:
                ready[task] = ready.get(task, 0) + 1
        return {t: (self._slots.running(t, now, live), ready.get(t, 0)) for t in tasks}

    def _settle(self, now: float) -> None:
        """Bring the directories up to date before a look: finish committed batches (cheap
        when there are none). Expired leases are left to the next claim (a look never
        renames); inspection counts them as waiting by the expiry in their names."""
        with self._lock:
            self._fs.drain_committed()

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        now = time.time()
        self._settle(now)
        expired = sum(1 for _, parsed in self._fs.matching("leased", queues)
                      if parsed.when_us <= us(now))
        return (len(self._fs.matching("ready", queues)) + len(self._fs.matching("delayed", queues))
                + expired)

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """From one listing of each directory, filtered by name; only the page's files are
        opened, for their header line (:mod:`nuvom_plugins.file._browse`). Nothing moves:
        committed batches are finished first, as every look does."""
        queues = queue_names(queues)
        now = time.time()
        self._settle(now)
        return _browse.browse(self._fs, queues, states, after, limit, now)

    @writes("queue", "clearing the queue removes its files there")
    def clear(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        removed = 0
        freed = []
        for kind in ("ready", "delayed", "leased"):
            for name, parsed in self._fs.matching(kind, queues):
                with contextlib.suppress(FileNotFoundError):
                    self._fs.remove(self._dirs[kind] / name)
                    removed += 1
                    freed.append(parsed.id)
        self._fs.free_ids(freed, wait=True)
        with self._lock:
            for cache in self._caches.values():
                cache.mark = None
        return removed

    def _waiting(self, wanted: str, now: float) -> list[tuple[str, str]]:
        """(kind, name) of the delayed and ready files that may hold encoded id ``wanted``,
        from the cached listings (indexed by id on first use); callers confirm each one."""
        found = []
        for kind in ("delayed", "ready"):
            cache = self._refreshed(kind, now)
            if cache.ids is None:
                cache.ids = {}
                for name in cache.names:
                    parsed = parse(name, kind)
                    if parsed is not None:
                        cache.ids.setdefault(parsed.id, []).append(name)
            found += [(kind, name) for name in cache.ids.get(wanted, ())]
        return found

    def peek_state(self, job_id: str) -> JobStatus | None:
        """Leased files are listed (in-flight only); ready and delayed names come from the
        cached listings and are confirmed with one ``stat``. A message moving between
        directories during the look is found on the second pass. A delayed message is
        RETRYING only once it has failed (its name counts failures) and until its due time
        (a claim moves it to ``ready/`` later); a first run waiting for its
        ``available_at`` is QUEUED."""
        wanted = encode_name(job_id)
        for _ in range(2):
            now = time.time()
            self._settle(now)
            with self._lock:
                lease = next((p for _, p in self._fs.matching("leased", None)
                              if p.id == wanted), None)
                if lease is not None:  # an expired lease is waiting for a worker
                    return _browse.name_state("leased", lease, us(now))
                for kind, name in self._waiting(wanted, now):
                    if os.path.exists(self._dirs[kind] / name):
                        parsed = parse(name, kind)
                        return (JobStatus.QUEUED if parsed is None
                                else _browse.name_state(kind, parsed, us(now)))
        return None

    def peek(self, job_id: str) -> Message | None:
        """Found as :meth:`peek_state` finds it (a message moving between directories during
        the look is read on the second pass); ``failures`` comes from the file's name. A file
        that does not decode reads as absent: the claim that reaches it quarantines it."""
        wanted = encode_name(job_id)
        for _ in range(2):
            now = time.time()
            self._settle(now)
            with self._lock:
                places = [("leased", name) for name, parsed in
                          self._fs.matching("leased", None) if parsed.id == wanted]
                places += self._waiting(wanted, now)
            for kind, name in places:
                parsed = parse(name, kind)
                try:
                    message = read_message(self._dirs[kind] / name)
                except FileNotFoundError:
                    continue
                except CorruptEntry:
                    return None
                return attrs.evolve(message, failures=parsed.failures if parsed else 0)
        return None

    @writes("queue", "cancelling a job removes its file there")
    def cancel(self, job_id: str) -> bool:
        """Unlink the waiting file, or the file of an expired lease (its worker died or gave
        it up: no one holds it until the next claim recovers it); a claim racing with it
        loses its rename (or we lose our unlink, and the job is left to its worker), so a
        job never both runs and vanishes. An expired lease's holder that extends or acks
        first keeps it (its file was renamed): a lease holds while its file exists."""
        wanted = encode_name(job_id)
        removed = False
        for _ in range(2):
            self._settle(time.time())
            with self._lock:
                now = time.time()
                found = self._waiting(wanted, now) + [
                    ("leased", name) for name in listdir(self._dirs["leased"])
                    if (parsed := parse(name, "leased")) is not None
                    and parsed.id == wanted and parsed.when_us <= us(now)]
                for kind, name in found:
                    with contextlib.suppress(FileNotFoundError):
                        self._fs.remove(self._dirs[kind] / name)
                        removed = True
            if removed:
                self._fs.free_ids([wanted], wait=True)
                return True
        return False

    def stats(self) -> QueueStats:
        """Ready, delayed and leased files per queue, from one listing of each directory (an
        expired lease, and a delayed file whose time has come, count as ready: both are
        claimable now, and the next claim moves them), and the oldest ready message's age.

        The age runs from when the message became due, ``max(created_at, available_at)``
        (its enqueue, or the end of its delay or retry delay), as the worker's wait time
        does: counted from the enqueue, a job delayed for a day would read a day old the
        moment it is due. A delayed file's name holds both times; a ready or leased file's
        name holds only ``created_at`` (see :meth:`_earliest_due`).

        Counts are gathered per queue name as file names hold it, then named by
        :meth:`_queue_names`: a long name is a hash there, and only a header holds it."""
        now = time.time()
        now_us = us(now)
        self._settle(now)
        stats = QueueStats()
        due_us: dict[str, int] = {}  # per queue: the earliest due time known from names
        unread: dict[str, list[tuple[int, str, str]]] = {}  # (created µs, kind, name)
        unnamed: dict[str, list[tuple[str, str]]] = {}  # hashed queue -> a few (kind, name)
        for kind in ("ready", "delayed", "leased"):
            for name, parsed in self._fs.matching(kind, None):
                queue = parsed.queue  # encoded: named below
                if hashed(queue) and queue not in self._hashed_names:
                    files = unnamed.setdefault(queue, [])
                    if len(files) < _NAME_READS:
                        files.append((kind, name))
                counts = stats.of(queue)
                if kind == "leased" and parsed.when_us > now_us:
                    counts.running += 1
                elif kind == "delayed" and parsed.when_us > now_us:
                    counts.delayed += 1
                else:
                    counts.ready += 1
                    created = int(parsed.sortkey[10:27])
                    if kind == "delayed":
                        due = max(created, parsed.when_us)
                        due_us[queue] = min(due_us.get(queue, due), due)
                    else:
                        unread.setdefault(queue, []).append((created, kind, name))
        for queue, candidates in unread.items():
            found = self._earliest_due(candidates, due_us.get(queue))
            if found is not None:
                due_us[queue] = found
        for queue, due in due_us.items():
            # max(0, ...): a due time ahead of this clock (another host's) is no wait yet
            stats.queues[queue].oldest_ready_age_secs = max(now - due / US, 0.0)
        names = self._queue_names(stats.queues, unnamed)
        stats.queues = {names[queue]: counts for queue, counts in stats.queues.items()}
        stats.quarantined = self._fs.quarantined()
        return stats

    def _queue_names(self, encoded: Mapping[str, object],
                     unnamed: Mapping[str, list[tuple[str, str]]]) -> dict[str, str]:
        """The real name of each queue in ``encoded`` (names as file names hold them).

        A short name decodes from the file name itself, at no cost. A name too long for a
        file name is a hash there (:func:`~nuvom_plugins.file._fs.encode_name`, e.g. 20
        Cyrillic letters), so it is read from the header of one of its files ``unnamed``
        lists, once per instance: the hash is a function of the name, so a name found
        never goes stale. If every listed file has moved on since the listing (claimed,
        acked), the hash stands in until the next call."""
        names = {}
        for queue in encoded:
            if not hashed(queue):
                names[queue] = decode_name(queue)
                continue
            name = self._hashed_names.get(queue)
            for kind, file in unnamed.get(queue, ()) if name is None else ():
                name = read_queue_name(self._dirs[kind] / file, queue)
                if name is not None:
                    if len(self._hashed_names) >= _NAMES_KEPT:
                        self._hashed_names.clear()
                    self._hashed_names[queue] = name
                    break
            names[queue] = queue if name is None else name
        return names

    def _earliest_due(self, candidates: list[tuple[int, str, str]], known: int | None
                      ) -> int | None:
        """The earliest due time (µs) of one queue's ready and expired leased files
        ``candidates`` — (created µs, kind, name) — or ``known`` if that is earlier.

        A file's ``available_at`` is in its header only, so files are read in enqueue order
        until the next one's enqueue is no earlier than the earliest due time found: a
        message is never due before its enqueue, so none of the rest is older. Usually one
        read: the first message was due at its enqueue. Delayed or retried messages at the
        head (the claim order is by enqueue) cost one more each, up to
        :data:`_OLDEST_READS`; past that the earliest found so far stands (an older one may
        hide behind them, never a younger one reported older)."""
        heapq.heapify(candidates)
        best = known
        for _ in range(_OLDEST_READS):
            if not candidates:
                break
            created, kind, name = heapq.heappop(candidates)
            if best is not None and created >= best:
                break
            try:
                available = read_message(self._dirs[kind] / name).available_at
            except FileNotFoundError:
                continue  # claimed, acked or moved since the listing: not waiting here
            except CorruptEntry:
                available = 0.0  # the claim that reaches it quarantines it; its enqueue
            due = max(created, us(available))
            best = due if best is None else min(best, due)
        return best

