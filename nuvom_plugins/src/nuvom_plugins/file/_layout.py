"""The file queue's directory: sub-directories, change markers, the id registry, publishing
new files all or none, quarantine and cleanup. Lease semantics live in
:mod:`nuvom_plugins.file.queue`; this module only knows how files get into and out of the
layout safely.

**The id registry** (``ids/<encoded id>``) makes push idempotent across processes. Each
marker is a *hard link* to its message file: the message keeps its inode through every
rename (claim, recovery, retry, promotion), so the marker's link count says whether the
message still exists, with no listing. A marker with ``st_nlink > 1`` is a queued id; one
with ``st_nlink == 1`` is an orphan (the message was acked, cleared or cancelled, or its
pusher died before the commit) and frees the id. Pushes check and create markers under one
``flock`` (``.push-lock``), so two pushers never both take a free id; everything else (claim,
ack, retry …) stays lock-free, because no other operation can turn an orphan back into a
live marker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from nuvom_kernel.models import Message
from nuvom_plugins.file._fs import (
    TMP_PREFIX,
    UNWRITABLE,
    create_missing,
    encode_message,
    encode_name,
    fsync_dir,
    open_lock,
    probe_writable,
    write_new_file,
)
from nuvom_plugins.file._names import SEQ, Name, bump, listdir, parse, sortkey, us

__all__ = ["KINDS", "Layout"]

log = logging.getLogger("nuvom.file.queue")

KINDS = ("ready", "delayed", "leased", "quarantine", "staging", "batches")


class Layout:
    """One queue directory (see the layout in :mod:`nuvom_plugins.file.queue`)."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        """Open the queue directory ``path``, creating what is missing of it.

        Only what is missing is written: a complete directory opens on a read-only mount,
        or for a user who may only read it, so that ``nuvom status`` and ``inspect`` can
        look at it (whatever writes then fails where it writes; a worker checks first, see
        :meth:`check_writable`).

        :raises OSError: a folder or file of the layout cannot be created or opened; the
            queue backend turns it into an error naming its setting.
        """
        self.path = path
        self.fsync = fsync
        self.dirs = {kind: path / kind for kind in KINDS}
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)  # EEXIST comes before EROFS
        self.ids = path / "ids"
        self.markers = {"ready": path / ".ready-marker", "delayed": path / ".delayed-marker"}
        self.leased_marker = path / ".leased-marker"
        for marker in (*self.markers.values(), self.leased_marker):
            create_missing(marker)
        self._swept_at = 0.0
        self._unfreed: set[str] = set()  # encoded ids whose markers may be orphans
        self._unfreed_lock = threading.Lock()
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing an fd
        self._lock_fd = open_lock(path / ".push-lock")
        self._lock_pid = os.getpid()
        if not self.ids.is_dir():
            try:
                self._register_existing()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def check_writable(self) -> None:
        """Try a write in every folder a worker writes (:func:`probe_writable`).

        :raises OSError: naming the first folder that cannot be written.
        """
        probe_writable((self.path, *self.dirs.values(), self.ids))

    # --- the id registry ------------------------------------------------------------------

    @contextlib.contextmanager
    def push_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the queue's push lock (threads and processes); yields ``False`` without it
        when ``wait`` is false and someone else holds it. A holder that dies releases it."""
        if not self._thread_lock.acquire(blocking=wait):
            yield False
            return
        try:
            if self._lock_pid != os.getpid():  # forked: the inherited fd is the parent's lock
                self._lock_fd = open_lock(self.path / ".push-lock")
                self._lock_pid = os.getpid()
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _taken(self, key: str) -> bool:
        """Whether encoded id ``key`` is queued; an orphan marker is removed (push lock held,
        so nobody can be creating it)."""
        marker = self.ids / key
        try:
            if os.stat(marker).st_nlink > 1:
                return True
        except FileNotFoundError:
            return False
        marker.unlink(missing_ok=True)
        return False

    def free_ids(self, keys: Iterable[str], *, wait: bool = False) -> None:
        """Delete the orphan markers among ``keys`` (their messages are gone; an orphan is
        the last link to the message's bytes, so this is what frees the disk space).
        Without ``wait`` it does not queue behind a push holding the lock: the keys are kept
        and tried again on the next call (and by the sweep). A leftover orphan never costs
        correctness: a push treats it as a free id."""
        with self._unfreed_lock:
            self._unfreed.update(keys)
        with self.push_lock(wait=wait) as locked:
            if locked:
                with self._unfreed_lock:
                    pending, self._unfreed = self._unfreed, set()
                for key in pending:
                    self._taken(key)

    def _link_marker(self, message_file: Path, key: str) -> None:
        """Point ``ids/key`` at ``message_file`` (replacing any marker: push lock held, or
        the message is leased and so its marker is live and ours)."""
        link = self.ids / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        os.link(message_file, link)
        try:
            os.replace(link, self.ids / key)
        except BaseException:  # a link left here would hold the message's bytes for an hour
            with contextlib.suppress(OSError):
                os.unlink(link)
            raise

    def _unlink_markers(self, linked: Iterable[tuple[Path, str]]) -> None:
        """Delete the markers a failed push linked, ``(staged file, encoded id)`` each,
        before its staged files go (push lock held).

        Why: a marker is a hard link, so one left behind keeps its whole message on disk. A
        ``.map()`` refused for lack of space left its markers, the disk stayed full, and
        every later ``.delay()`` failed too until a worker's ten-minute sweep, although the
        error said nothing was enqueued. Only markers still linked to this push's own files
        go: no other pusher can link one while we hold the lock, and one that anything else
        pointed elsewhere meanwhile (a retry rewriting a leased message of that id) stays."""
        for staged, key in linked:
            marker = self.ids / key
            with contextlib.suppress(OSError):  # gone, or not ours: leave it
                if os.path.samestat(os.stat(marker), os.stat(staged)):
                    os.unlink(marker)

    def _register_existing(self) -> None:
        """A queue directory from before the id registry: link every message it holds, so
        ids already queued stay protected. The registry is built aside and renamed into
        place under the push lock, so no pusher ever sees half of it (a message claimed or
        moved during the pass may be missed: it is then only unprotected, never lost)."""
        with self.push_lock():
            if self.ids.is_dir():  # another instance did it first
                return
            building = self.path / f".ids-{os.getpid()}-{uuid.uuid4().hex}"
            building.mkdir()
            try:
                self.drain_committed()
                for kind in ("ready", "delayed", "leased"):
                    for name, parsed in self.matching(kind, None):
                        with contextlib.suppress(FileNotFoundError, FileExistsError):
                            os.link(self.dirs[kind] / name, building / parsed.id)
                os.rename(building, self.ids)
            finally:
                shutil.rmtree(building, ignore_errors=True)

    # --- publishing -----------------------------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> list[bool]:
        """Store the messages whose ids are not queued yet (nor earlier in ``messages``);
        ``True`` per message stored.

        All or none: one message is one rename; a batch is written into a private staging
        directory and committed by renaming that directory into ``batches/``, after which
        its files are moved into place by the pusher (or, if it died, by the next claim).
        Markers are linked to the staged files before the commit; a push that fails before
        it (no space, say) deletes its markers and files before it raises, so nothing of it
        is left, disk space included; a pusher that dies before it leaves them orphaned
        once the next push clears ``staging/``.
        """
        stored: list[bool] = []
        with self.push_lock():
            self._clear_staging()
            fresh: list[tuple[str, Message]] = []
            seen: set[str] = set()
            for message in messages:
                key = encode_name(message.id)
                ok = key not in seen and not self._taken(key)
                seen.add(key)
                stored.append(ok)
                if ok:
                    fresh.append((key, message))
            batch = self._write(fresh) if fresh else None
        if batch is not None:
            self.drain(batch)
        return stored

    def _clear_staging(self) -> None:
        """Whatever is in ``staging/`` while we hold the push lock belongs to a pusher that
        died before its commit: delete it, which orphans (frees) its ids."""
        with os.scandir(self.dirs["staging"]) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _write(self, fresh: list[tuple[str, Message]]) -> str | None:
        """Write and commit ``fresh`` (push lock held); the batch to drain, if any."""
        now = time.time()
        named = []
        for key, message in fresh:
            core = (f"{sortkey(message.priority, message.created_at, next(SEQ))}."
                    f"{encode_name(message.queue)}.{key}")
            kind = "delayed" if message.available_at > now else "ready"
            final = f"{us(message.available_at):017d}.{core}.0.0" if kind == "delayed" \
                else f"{core}.0.0"
            named.append((kind, final, key, message))
        if len(named) == 1:
            kind, final, key, message = named[0]
            tmp = write_new_file(self.dirs["staging"], encode_message(message),
                                 fsync=self.fsync)
            try:
                self._link_marker(tmp, key)
                if self.fsync:
                    fsync_dir(self.ids)
                os.rename(tmp, self.dirs[kind] / final)  # the commit point
            except BaseException:
                self._unlink_markers([(tmp, key)])  # the id is free, its bytes too
                tmp.unlink(missing_ok=True)
                raise
            self.published({kind})
            return None
        batch = f"{os.getpid()}-{uuid.uuid4().hex}"
        staging = self.dirs["staging"] / batch
        linked: list[tuple[Path, str]] = []  # (staged file, key): markers this call made
        try:
            for kind in ("ready", "delayed"):
                (staging / kind).mkdir(parents=True)
            for kind, final, key, message in named:
                tmp = write_new_file(staging / kind, encode_message(message), fsync=self.fsync)
                staged = staging / kind / final
                os.rename(tmp, staged)
                self._link_marker(staged, key)
                linked.append((staged, key))
            if self.fsync:
                for directory in (staging / "ready", staging / "delayed", staging, self.ids):
                    fsync_dir(directory)
            os.rename(staging, self.dirs["batches"] / batch)  # the commit point
        except BaseException:
            # All or none, space included: the markers first (each still holds its file's
            # bytes), then the files. Once committed, the staged paths are gone and the
            # markers stay, with the batch.
            self._unlink_markers(linked)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.fsync:
            fsync_dir(self.dirs["batches"])
        return batch

    def rewrite(self, target: Path, message: Message, key: str) -> None:
        """Replace the content of message file ``target`` (encoded id ``key``) atomically.
        Its marker moves to the new file first, so the id never looks free while the message
        exists."""
        tmp = write_new_file(target.parent, encode_message(message), fsync=self.fsync)
        try:
            self._link_marker(tmp, key)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                self._link_marker(target, key)  # back to the file that still holds the job
            tmp.unlink(missing_ok=True)
            raise

    def drain(self, batch: str) -> None:
        """Move a committed batch's files into ``ready/`` and ``delayed/``; idempotent and
        safe to run from several processes at once (each file moves exactly once)."""
        root = self.dirs["batches"] / batch
        used = set()
        for kind in ("ready", "delayed"):
            try:
                names = os.listdir(root / kind)
            except FileNotFoundError:
                continue
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(root / kind / name, self.dirs[kind] / name)
                    used.add(kind)
            with contextlib.suppress(OSError):
                os.rmdir(root / kind)
        with contextlib.suppress(OSError):
            os.rmdir(root)
        self.published(used)

    def drain_committed(self) -> None:
        """Finish batches whose pusher died between its commit and its moves.

        A process that may not write the queue (a read-only mount) leaves them committed for
        a writer to finish: it is only looking (``status``, ``inspect``), and a look must
        not fail over moves it cannot make."""
        for batch in listdir(self.dirs["batches"]):
            try:
                self.drain(batch)
            except OSError as exc:
                if exc.errno not in UNWRITABLE:
                    raise
                return

    def published(self, kinds: set[str]) -> None:
        for kind in kinds:
            if self.fsync:
                fsync_dir(self.dirs[kind])
            bump(self.markers[kind])

    def sweep(self, now: float) -> None:
        """Every ten minutes, delete temp files of writers that died over an hour ago and
        the markers of ids whose messages are gone (if no push holds the lock)."""
        if now - self._swept_at < 600.0:
            return
        self._swept_at = now
        with os.scandir(self.dirs["staging"]) as entries:  # batches never committed
            for entry in entries:
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > 3600:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
        self.free_ids(listdir(self.ids), wait=True)
        for kind in ("ready", "delayed", "leased", "quarantine", "ids"):
            with os.scandir(self.ids if kind == "ids" else self.dirs[kind]) as entries:
                for entry in entries:
                    if entry.name.startswith(TMP_PREFIX):
                        with contextlib.suppress(OSError):
                            if now - entry.stat().st_mtime > 3600:
                                os.unlink(entry.path)

    def matching(self, kind: str, queues: Sequence[str] | None) -> list[tuple[str, Name]]:
        wanted = None if queues is None else {encode_name(q) for q in queues}
        found = []
        for name in listdir(self.dirs[kind]):
            parsed = parse(name, kind)
            if parsed is not None and (wanted is None or parsed.queue in wanted):
                found.append((name, parsed))
        return found

    def quarantined(self) -> list[str]:
        """One line per quarantined entry: ``<file>: <reason>``."""
        directory = self.dirs["quarantine"]
        lines = []
        for name in sorted(listdir(directory)):
            if name.endswith(".reason"):
                continue
            try:
                reason = (directory / f"{name}.reason").read_text(encoding="utf-8").strip()
            except OSError:
                reason = "reason unknown"
            lines.append(f"{directory / name}: {reason}")
        return lines

    def quarantine(self, source: Path, reason: str, key: str | None = None) -> None:
        """Move ``source`` aside (never delete it) and say why, once, in the log and beside
        the file; a concurrent quarantine of the same file by another process is a no-op.
        With ``key`` (the encoded id its name gives), the id is freed: a quarantined job is
        no longer queued, so it may be pushed again."""
        target = self.dirs["quarantine"] / f"{us(time.time())}-{source.name}"
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return
        if key is not None:
            marker = self.ids / key
            with contextlib.suppress(FileNotFoundError):  # a live marker: no pusher moves it
                if os.path.samestat(os.stat(marker), os.stat(target)):
                    marker.unlink()
        self._say_why(source, target, reason)

    def remove(self, path: Path) -> None:
        """Unlink message file ``path``; a directory in its place (made by hand) is
        quarantined instead (an unlink's ``EISDIR`` read as an unwritable folder).

        :raises FileNotFoundError: ``path`` is gone."""
        try:
            os.unlink(path)
        except IsADirectoryError:
            self.quarantine(path, "a directory, not a message file")

    def keep_copy(self, source: Path, reason: str) -> None:
        """A copy of ``source``'s bytes in ``quarantine/``, said as :meth:`quarantine` says
        it; ``source`` stays where it is. A copy, not a hard link: the id marker in
        ``ids/`` is a link of the message file, and an id reads as taken while that file has
        another link, so a link kept the job's id taken for good (a push of it stored
        nothing).

        :raises FileNotFoundError: ``source`` is gone."""
        data = source.read_bytes()
        target = self.dirs["quarantine"] / f"{us(time.time())}-{source.name}"
        os.replace(write_new_file(self.dirs["quarantine"], data, fsync=False), target)
        self._say_why(source, target, reason)

    def _say_why(self, source: Path, target: Path, reason: str) -> None:
        tmp = write_new_file(self.dirs["quarantine"], reason.encode("utf-8") + b"\n",
                             fsync=False)
        os.replace(tmp, target.with_name(target.name + ".reason"))
        log.warning("file queue %s: quarantined %s: %s (kept in %s; inspect or delete it)",
                    self.path, source.name, reason, target)
