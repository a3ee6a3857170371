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

This module is the queue's push and claim side (and the listings a claim keeps); a held
lease's ack, extend, release and retry are :mod:`._leases`, the looks (counts, ``stats``,
``browse``, ``peek``) and the operator's ``cancel`` and ``clear`` :mod:`._inspection`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from nuvom_kernel.backends import BackendContext, Capabilities
from nuvom_kernel.clock import StepWatch
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.models import Lease, Message
from nuvom_kernel.workflow.graph import GraphTxn, Node
from nuvom_plugins.file._fs import (
    CorruptEntry,
    decode_name,
    encode_name,
    read_message,
)
from nuvom_plugins.file._inspection import QueueInspection
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


def _rename(source: Path, target: Path) -> bool:
    """Claim by rename; ``False`` if another process claimed it first."""
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


class FileJobQueue(QueueInspection):
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
        self.path = Path(path).absolute()  # a task that changes directory moves nothing
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
        self._lease_ops = threading.RLock()  # see LeaseOperations._lease_ops
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

    @writes("queue", "enqueuing writes each job's file there")
    def push(self, messages: Sequence[Message]) -> list[bool]:
        """Store the messages whose ids are not queued yet (see the module docs), all or
        none: one message is one rename; a batch is written into a private staging
        directory and committed by renaming that directory into ``batches/``, after which
        its files are moved into place by the pusher (or, if it died, by the next claim).
        ``failures`` starts at 0 whatever the message says."""
        for message in messages:  # an empty id read as "queued already"; none is written
            message.checked_body()
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

    def _open_lease(self, target: Path, parsed: Name, token: str,
                    expires_at: float) -> Lease | None:
        try:
            message = read_message(target)
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
