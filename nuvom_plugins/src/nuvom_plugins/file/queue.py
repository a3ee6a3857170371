"""FileJobQueue: one file per message, ``rename(2)`` as the only arbiter between processes.

Layout under ``path`` (default ``<data_dir>/queue``)::

    ready/       <sortkey>.<queue>.<id>.<deliveries>.<failures>                claimable now
    delayed/     <available_us>.<sortkey>.<queue>.<id>.<deliveries>.<failures> waiting for a time
    leased/      <expires_us>.<token>.<sortkey>.<queue>.<id>.<deliveries>.<failures>
    ids/         <id>   a hard link to the message file of every queued id (idempotent push)
    quarantine/  <when_us>-<original name>  (+ ``.reason``)           undecodable entries
    staging/     a push being written (invisible; cleared by the next push, see below)
    batches/<batch>/{ready,delayed}/   a committed batch whose files are being moved in
    .ready-marker, .delayed-marker   mtimes bumped after anything enters ready/ or delayed/
    .leased-marker                   bumped by ``extend(lease, 0)``: rescan leases now
    .push-lock                       flock held by a push while it checks and stores ids

Names written before ``<failures>`` existed (one part shorter) read as ``failures=0``, and
message headers without ``task`` get the task their body's envelope names (``""`` if it names
none), so concurrency limits hold back jobs queued before the upgrade; ``ids/`` is built from
the messages present the first time a queue directory from before it is opened.

``sortkey`` is ``(2**31 - priority)`` (10 digits), ``created_at`` in microseconds (17 digits)
and a 6-hex-digit sequence, so a plain sorted listing of ``ready/`` *is* the claim order:
higher priority first, FIFO within a priority.

Why it is safe with several processes on one directory (local filesystems; not NFS):

* **Writes are atomic**: a message is written to a dot-prefixed temp file in the target
  directory, fsynced, then renamed into place. Listings skip dot files, so a writer killed
  mid-write leaves nothing a reader can pick up. A batch (``.map()``) is all or none: it is
  written under ``staging/``, committed by one directory rename into ``batches/``, and its
  files are then moved into place by the pusher or, if it died, by the next claim.
* **Claim is a rename** ``ready/X -> leased/<expiry>.<token>.X'``. Exactly one process's
  rename succeeds; the others get ``ENOENT`` and move to the next name. The new name carries
  the fencing token, the lease expiry and the incremented delivery count in one atomic step.
* **Ack, extend, release and retry rename or unlink the lease file by its exact name**, which
  includes the token; once the lease was recovered by another process that name is gone, so
  the call fails (``False``) instead of touching the new holder's work.
* **Expired leases are recovered by whoever claims next**: ``leased/`` is listed only when
  the earliest expiry seen in it is due or ``.leased-marker`` moved (it is small: in-flight
  messages only) and expired files are renamed back to ``ready/``, keeping their delivery
  count. ``retry`` renames the lease back with ``<failures>`` one higher.
* **Push is idempotent per job id, across processes.** ``ids/<id>`` is a hard link to the
  message file; renames keep the inode, so ``st_nlink > 1`` means the id is queued
  (waiting, delayed or leased) and ``1`` means its message is gone (an orphan marker, which
  frees the id). A push checks and links markers under the ``flock`` on ``.push-lock``, so
  two processes never both take one id; claims and retries need no lock, since only a push
  can make a free id taken. An orphan is the last link to its message's bytes, so ack,
  cancel and clear delete it under the lock (ack only if the lock is free at once; else
  later, or by the ten-minute sweep). A batch's markers are linked to its staged files before
  the commit rename; a pusher that dies before committing leaves its staged files behind,
  and the next push (which holds the lock, so nobody else can be mid-push) deletes them,
  which frees those ids. A new body on ``retry`` moves the marker to the new file before it
  replaces the old one.

* **A lease holds while its file exists.** Expiry only makes it recoverable: a holder that
  acks after its expiry but before anyone recovered it still succeeds.

Polling cost: ``ready/`` is listed once and kept in memory, sorted and split per queue (a
worker serving some queues never walks the names of the others). A poll costs one ``stat``
of ``.ready-marker`` (plus one each of ``.delayed-marker`` and ``.leased-marker``); the
directory is listed again only
when another process added something (marker changed) or every ``relist_interval_secs`` as
a safety net, so an idle worker on a huge queue does not re-list it on every poll (measured:
~12 µs per idle poll beside 50,000 waiting messages, before ``.leased-marker`` was added).
Names another process claimed first just fail their rename. A push costs one ``stat`` and
one ``link`` per message beside the file writes, and holds ``.push-lock`` while it writes,
so pushes from several processes take turns.

Undecodable entries (bad name, bad header, checksum mismatch) are moved to ``quarantine/``
with a ``.reason`` file, logged, and listed in :meth:`FileJobQueue.stats`; they never stop a
claim and are never deleted by the backend. A quarantined file whose name gives its id frees
that id (the job is no longer queued); one whose name does not keeps the id taken until the
file is deleted from ``quarantine/``.

Limits: local POSIX filesystems with hard links and ``flock`` (not NFS, not Windows).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from nuvom_kernel.backends import BackendContext, Capabilities, QueueBackend, QueueStats
from nuvom_kernel.clock import StepWatch
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.models import JobStatus, Lease, Message
from nuvom_kernel.views import QueuedJob
from nuvom_kernel.workflow.graph import GraphTxn, Node
from nuvom_plugins.file import _browse
from nuvom_plugins.file._fs import (
    CorruptEntry,
    decode_message,
    decode_name,
    encode_name,
    fsync_dir,
    hashed,
    read_queue_name,
)
from nuvom_plugins.file._layout import Layout
from nuvom_plugins.file._names import (
    US,
    Cache,
    Name,
    bump,
    listdir,
    parse,
    read_mark,
    us,
)
from nuvom_plugins.file.errors import cannot_open, cannot_write, writes
from nuvom_plugins.file.limits import Slots
from nuvom_plugins.file.workflows import WorkflowFiles

__all__ = ["FileJobQueue"]

log = logging.getLogger("nuvom.file.queue")
T = TypeVar("T")

_QUEUE_KEYS = {"path", "queue_path", "visibility_timeout_secs", "fsync", "relist_interval_secs"}
#: Keys of the same ``[plugins.file]`` table that belong to the result backend.
RESULT_KEYS = {"results_path", "segment_max_bytes", "results_fsync", "result_ttl_secs"}
#: Most message files ``stats`` reads per queue to find the ready message due first (see
#: :meth:`FileJobQueue._earliest_due`): one, unless delayed or retried messages lead it.
_OLDEST_READS = 64
#: Files ``stats`` lists per long (hashed) queue name whose real name it does not know yet,
#: to read it from the first one still there (see :meth:`FileJobQueue._queue_names`).
_NAME_READS = 8
#: Long queue names an instance remembers (a bound on its memory, not a cost).
_NAMES_KEPT = 4096


def _rename(source: Path, target: Path) -> bool:
    """Claim by rename; ``False`` if another process claimed it first."""
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


class FileJobQueue(QueueBackend):
    """Persistent, multi-process-safe queue in a directory of files (see module docs).

    :param path: the queue directory (created if missing; one that exists opens read-only
        too, for a look: see :meth:`check_writable`).
    :param fsync: fsync message files and directories on push and retry (durable across
        power loss); turn off for throwaway queues and tests.
    :param relist_interval_secs: longest time a cached listing of ``ready/`` is trusted
        without a marker change; bounds pickup after a pusher crashed between its rename
        and its marker bump.
    :raises FileStoreUnavailableError: the directory or a file of it cannot be created or
        opened (a :class:`~nuvom_plugins.file.errors.FileStorePathError`, a configuration
        error, when ``path`` runs through a file); the message names the setting.
    """

    name = "file"
    capabilities = Capabilities(persistent=True, multiprocess_safe=True, priorities=True,
                                delayed=True, concurrency=True, workflows=True)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        visibility_timeout_secs: float = 30.0,
        fsync: bool = True,
        relist_interval_secs: float = 2.0,
    ) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self.path = Path(path)
        self.fsync = fsync
        self.relist_interval_secs = relist_interval_secs
        try:
            self._fs = Layout(self.path, fsync=fsync)
        except OSError as exc:  # a raw OSError was a 40-line traceback from every command
            raise cannot_open("queue", self.path, exc) from exc
        self._dirs, self._markers = self._fs.dirs, self._fs.markers
        self._leased_marker = self._fs.leased_marker
        self._leased_mark: int | None = None
        self._caches = {"ready": Cache(), "delayed": Cache()}
        self._lock = threading.RLock()  # caches and the lease-scan clock
        self._held: dict[str, str] = {}  # token -> current lease file name (this instance)
        self._held_lock = threading.Lock()
        self._next_lease_scan = 0.0
        self._clock_steps = StepWatch()
        self.limits: dict[str, int] = {}  # task -> most live leases (set_concurrency_limits)
        self._slots = Slots(self.path, self._dirs["leased"])
        self._workflows = WorkflowFiles(self.path, fsync=fsync, push=self._release_steps)
        self._hashed_names: dict[str, str] = {}  # hashed queue (file names) -> real name

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """``[plugins.file]``: ``path`` (or ``queue_path``), ``fsync``,
        ``relist_interval_secs``, ``visibility_timeout_secs``; the result backend's keys in
        the same table are ignored here."""
        unknown = set(settings) - _QUEUE_KEYS - RESULT_KEYS
        if unknown:
            raise PluginConfigError(
                f"[plugins.file] has unknown key(s) {', '.join(sorted(unknown))}; the file "
                f"queue knows {', '.join(sorted(_QUEUE_KEYS))} and the file result backend "
                f"{', '.join(sorted(RESULT_KEYS))}")
        params = {k: v for k, v in settings.items() if k in _QUEUE_KEYS}
        path = params.pop("queue_path", None) or params.pop("path", None)
        params.pop("path", None)
        params.setdefault("visibility_timeout_secs", context.visibility_timeout_secs)
        return cls(path if path is not None else context.data_dir / "queue", **params)

    @property
    def location(self) -> str | None:
        """The queue folder, absolute: a relative ``path`` is read against the folder the
        process started in, which is what ``nuvom status`` must show."""
        return str(self.path.absolute())

    def close(self) -> None:
        self._fs.close()

    def check_writable(self) -> None:
        """Raise unless this process can write every folder a worker writes.

        Why: the queue opens a directory it may only read, so that a look at it works (a
        read-only mount, another user's queue), but a worker that started there logged a
        traceback at every claim for ever. A worker calls this as it opens its stores
        (:meth:`~nuvom_kernel.spi.Backend.check_writable`): it refuses to start, in one
        line.

        :raises FileStoreUnavailableError: naming the folder, the cause and the setting.
        """
        try:
            self._fs.check_writable()
        except OSError as exc:
            raise cannot_write("queue", self.path, exc) from exc

    # --- push ---------------------------------------------------------------------------

    def push(self, messages: Sequence[Message]) -> list[bool]:
        """Store the messages whose ids are not queued yet (see the module docs), all or
        none: one message is one rename; a batch is written into a private staging
        directory and committed by renaming that directory into ``batches/``, after which
        its files are moved into place by the pusher (or, if it died, by the next claim).
        ``failures`` starts at 0 whatever the message says."""
        return self._fs.publish(messages) if messages else []

    def quarantined(self) -> list[str]:
        """One line per quarantined entry: ``<file>: <reason>``."""
        return self._fs.quarantined()

    # --- workflows (see .workflows) ------------------------------------------------------

    def workflow_transaction(self, fn: Callable[[GraphTxn], T],
                             workflows: Sequence[str] = ()) -> T:
        return self._workflows.transaction(fn, workflows)

    def workflow_step(self, job_id: str, workflow: str | None = None) -> Node | None:
        return self._workflows.step(job_id, workflow)

    def waiting_steps(self) -> int:
        return self._workflows.waiting_steps()

    @writes("queue", "purging ended workflows removes their files there")
    def purge_workflows(self, older_than: float) -> int:
        return self._workflows.purge(older_than)

    def _release_steps(self, messages: list[Message]) -> None:
        self.enqueue_many(messages)

    def holds(self, lease: Lease) -> bool:
        """The lease file still exists under this lease's token."""
        name = self._lease_name(lease)
        return name is not None and (self._dirs["leased"] / name).exists()

    # --- claim --------------------------------------------------------------------------

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        if n <= 0:
            return []
        wanted = None if queues is None else {encode_name(q) for q in queues}
        leases: list[Lease] = []
        with self._lock:
            now = time.time()
            self._fs.sweep(now)
            self._recover_expired(now)
            self._promote_due(now)
            cache = self._refreshed("ready", now)
            for name in cache.bad:
                self._fs.quarantine(self._dirs["ready"] / name, "unparseable file name in ready/")
            cache.bad.clear()
            expires_at = now + self.visibility_timeout_secs
            expiry = us(expires_at)
            held: list[tuple[list[str], str]] = []  # names held back by a limit
            full: set[str] = set()  # limited tasks found at their limit in this claim
            while len(leases) < n:
                best: list[str] | None = None  # the wanted queue whose next name sorts first
                for queue, names in cache.by_queue.items():
                    if names and (wanted is None or queue in wanted) and \
                            (best is None or names[-1] < best[-1]):
                        best = names
                if best is None:
                    break
                name = best.pop()
                source = self._dirs["ready"] / name
                parsed = parse(name, "ready")
                if parsed is None:  # cannot happen: only parsed names are grouped
                    continue
                token = uuid.uuid4().hex
                leased = f"{expiry:017d}.{token}.{parsed.ready(parsed.deliveries + 1)}"
                target = self._dirs["leased"] / leased
                task = self._slots.task_of(source) if self.limits else None
                if task is not None and task in self.limits:
                    if task in full or not self._slots.take(
                            task, self.limits[task], now, token,
                            functools.partial(_rename, source, target)):
                        if source.exists():
                            held.append((best, name))
                            full.add(task)
                        continue
                    self._slots.forget(name)
                elif not _rename(source, target):
                    continue  # another process claimed it first
                lease = self._open_lease(target, parsed, token, expires_at)
                if lease is not None:
                    leases.append(lease)
            for names, name in reversed(held):
                names.append(name)  # back in claim order for the next claim
        return leases

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        self.limits = dict(limits)

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        now = time.time()
        live = self._slots.live_tokens(now)
        ready: dict[str, int] = {}
        for name in listdir(self._dirs["ready"]):
            task = self._slots.task_of(self._dirs["ready"] / name)
            if task is not None:
                ready[task] = ready.get(task, 0) + 1
        return {t: (self._slots.running(t, now, live), ready.get(t, 0)) for t in tasks}

    def _open_lease(self, target: Path, parsed: Name, token: str,
                    expires_at: float) -> Lease | None:
        try:
            message = decode_message(target.read_bytes())
            if encode_name(message.id) != parsed.id or \
                    encode_name(message.queue) != parsed.queue:
                raise CorruptEntry("file name does not match its header (renamed by hand?)")
        except CorruptEntry as exc:
            self._fs.quarantine(target, str(exc), parsed.id)
            return None
        with self._held_lock:
            self._held[token] = target.name
        return Lease(message=attrs.evolve(message, failures=parsed.failures), token=token,
                     deliveries=parsed.deliveries + 1, expires_at=expires_at)

    def _refreshed(self, kind: str, now: float) -> Cache:
        """The cached listing of ``kind``, re-listed only if its marker moved or it is old."""
        cache = self._caches[kind]
        mark = read_mark(self._markers[kind])  # read before listing: a later push bumps it again
        if mark != cache.mark or now - cache.listed_at >= self.relist_interval_secs:
            if kind == "ready":
                self._fs.drain_committed()
                mark = read_mark(self._markers[kind])
            names = os.listdir(self._dirs[kind])
            cache.names = sorted((n for n in names if not n.startswith(".")), reverse=True)
            cache.mark, cache.listed_at, cache.ids = mark, now, None
            if kind == "ready":
                cache.by_queue, cache.bad = {}, []
                for name in cache.names:  # descending, so each group stays descending
                    parsed = parse(name, "ready")
                    if parsed is None:
                        cache.bad.append(name)
                    else:
                        cache.by_queue.setdefault(parsed.queue, []).append(name)
        return cache

    def _promote_due(self, now: float) -> None:
        """Move delayed messages whose time has come into ``ready/``."""
        names = self._refreshed("delayed", now).names
        moved = False
        while names:
            parsed = parse(names[-1], "delayed")
            source = self._dirs["delayed"] / names[-1]
            if parsed is None:
                names.pop()
                self._fs.quarantine(source, "unparseable file name in delayed/")
                continue
            if parsed.when_us > us(now):
                break
            names.pop()
            with contextlib.suppress(FileNotFoundError):  # someone else promoted it
                os.rename(source, self._dirs["ready"] / parsed.ready())
                moved = True
        if moved:
            bump(self._markers["ready"])

    def _recover_expired(self, now: float) -> None:
        """Rename expired leases back to ``ready/``; runs only when an expiry is due or a
        lease was expired on purpose (``extend(lease, 0)`` bumps ``.leased-marker``). For
        a visibility timeout after a forward step of the clock, only leases that expired
        before it (:mod:`nuvom_kernel.clock`)."""
        mark = read_mark(self._leased_marker)
        if now < self._next_lease_scan and mark == self._leased_mark:
            return
        self._leased_mark = mark
        next_scan = now + self.visibility_timeout_secs
        lapsed = self._clock_steps.lapsed_before(now, self.visibility_timeout_secs)
        recovered = 0
        for name in listdir(self._dirs["leased"]):
            parsed = parse(name, "leased")
            if parsed is None:
                self._fs.quarantine(self._dirs["leased"] / name, "unparseable file name in "
                                 "leased/")
                continue
            if parsed.when_us > us(lapsed):
                next_scan = min(next_scan, parsed.when_us / US + now - lapsed)
                continue
            try:
                os.rename(self._dirs["leased"] / name, self._dirs["ready"] / parsed.ready())
            except FileNotFoundError:
                continue  # acked, extended or recovered meanwhile
            recovered += 1
            log.info("file queue %s: lease on job %s expired; it is available again "
                     "(delivery %d)", self.path, decode_name(parsed.id), parsed.deliveries)
        self._next_lease_scan = next_scan
        if recovered:
            bump(self._markers["ready"])

    # --- lease operations -----------------------------------------------------------------

    def _lease_name(self, lease: Lease) -> str | None:
        with self._held_lock:
            name = self._held.get(lease.token)
        if name is not None:
            return name
        for candidate in listdir(self._dirs["leased"]):  # a lease from another instance
            parsed = parse(candidate, "leased")
            if parsed is not None and parsed.token == lease.token:
                return candidate
        return None

    def _forget(self, token: str) -> None:
        with self._held_lock:
            self._held.pop(token, None)

    def _move_lease(self, lease: Lease, target: Path | None) -> str | None:
        """Rename (or, for ``None``, unlink) the lease file; the lease file's name if that
        succeeded, ``None`` if the lease was lost."""
        name = self._lease_name(lease)
        if name is None:
            return None
        source = self._dirs["leased"] / name
        try:
            if target is None:
                os.unlink(source)
            else:
                os.rename(source, target)
        except FileNotFoundError:
            self._forget(lease.token)
            return None
        return name

    def _parsed_lease(self, lease: Lease) -> Name | None:
        name = self._lease_name(lease)
        return parse(name, "leased") if name else None

    def ack(self, lease: Lease) -> bool:
        name = self._move_lease(lease, None)
        self._forget(lease.token)
        parsed = parse(name, "leased") if name else None
        if parsed is not None:
            self._fs.free_ids([parsed.id])
        return name is not None

    def extend(self, lease: Lease, secs: float) -> bool:
        """Rename the lease file to its new expiry. ``secs <= 0`` expires it now and bumps
        ``.leased-marker``, so the next claim of any instance recovers it (until then its
        holder may still ack it; inspection already counts it as waiting)."""
        parsed = self._parsed_lease(lease)
        if parsed is None:
            return False
        now = time.time()
        new = f"{us(now + secs):017d}.{parsed.token}.{parsed.ready()}"
        if self._move_lease(lease, self._dirs["leased"] / new) is None:
            return False
        with self._held_lock:
            self._held[lease.token] = new
        if secs <= 0:
            bump(self._leased_marker)
            self.notify()
        return True

    def _put_back(self, lease: Lease, parsed: Name, delay_secs: float, *,
                  deliveries: int, failures: int) -> bool:
        """Move the lease file to ``ready/``, or to ``delayed/`` when ``delay_secs > 0``."""
        kind = "delayed" if delay_secs > 0 else "ready"
        final = parsed.ready(deliveries, failures)
        if kind == "delayed":
            final = f"{us(time.time() + delay_secs):017d}.{final}"
        if self._move_lease(lease, self._dirs[kind] / final) is None:
            return False
        self._forget(lease.token)
        if self.fsync:
            fsync_dir(self._dirs[kind])
        bump(self._markers[kind])
        self.notify()
        return True

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        """Back to ``ready/`` (or ``delayed/``) with the claim's delivery taken back."""
        parsed = self._parsed_lease(lease)
        if parsed is None:
            return False
        return self._put_back(lease, parsed, delay_secs,
                              deliveries=max(parsed.deliveries - 1, 0),
                              failures=parsed.failures)

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        """Move the message back (to ``delayed/`` if ``delay_secs > 0``) with one more
        failure in its name; with a new body, the lease is first extended (fencing) and its
        file replaced atomically in place."""
        if body is not None:
            if not self.extend(lease, self.visibility_timeout_secs):
                return False
            name = self._lease_name(lease)
            parsed = parse(name, "leased") if name else None
            if name is None or parsed is None:
                return False
            available_at = time.time() + max(delay_secs, 0.0)
            message = attrs.evolve(lease.message, body=body, available_at=available_at,
                                   failures=0)
            self._fs.rewrite(self._dirs["leased"] / name, message, parsed.id)
        parsed = self._parsed_lease(lease)
        if parsed is None:
            return False
        return self._put_back(lease, parsed, delay_secs, deliveries=parsed.deliveries,
                              failures=parsed.failures + 1)

    # --- inspection -----------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        """Bring the directories up to date before a look: finish committed batches (cheap
        when there are none). Expired leases are left to the next claim (a look never
        renames); inspection counts them as waiting by the expiry in their names."""
        with self._lock:
            self._fs.drain_committed()

    def qsize(self, queues: Sequence[str] | None = None) -> int:
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
        now = time.time()
        self._settle(now)
        return _browse.browse(self._fs, queues, states, after, limit, now)

    @writes("queue", "clearing the queue removes its files there")
    def clear(self, queues: Sequence[str] | None = None) -> int:
        removed = 0
        freed = []
        for kind in ("ready", "delayed", "leased"):
            for name, parsed in self._fs.matching(kind, queues):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dirs[kind] / name)
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
                    message = decode_message((self._dirs[kind] / name).read_bytes())
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
                        os.unlink(self._dirs[kind] / name)
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
        stats.quarantined = self.quarantined()
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
                available = decode_message((self._dirs[kind] / name).read_bytes()).available_at
            except FileNotFoundError:
                continue  # claimed, acked or moved since the listing: not waiting here
            except CorruptEntry:
                available = 0.0  # the claim that reaches it quarantines it; its enqueue
            due = max(created, us(available))
            best = due if best is None else min(best, due)
        return best
