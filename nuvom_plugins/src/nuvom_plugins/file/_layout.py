"""The file queue's directory: sub-directories, change markers, publishing new files all
or none, quarantine and cleanup. Lease semantics live in :mod:`nuvom_plugins.file.queue`;
this module only knows how files get into and out of the layout safely."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from nuvom_kernel.models import Message
from nuvom_plugins.file._fs import (
    TMP_PREFIX,
    encode_message,
    encode_name,
    fsync_dir,
    write_new_file,
)
from nuvom_plugins.file._names import SEQ, Name, bump, listdir, parse, sortkey, us

__all__ = ["KINDS", "Layout"]

log = logging.getLogger("nuvom.file.queue")

KINDS = ("ready", "delayed", "leased", "quarantine", "staging", "batches")


class Layout:
    """One queue directory (see the layout in :mod:`nuvom_plugins.file.queue`)."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.dirs = {kind: path / kind for kind in KINDS}
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        self.markers = {"ready": path / ".ready-marker", "delayed": path / ".delayed-marker"}
        for marker in self.markers.values():
            marker.touch(exist_ok=True)
        self._swept_at = 0.0

    def publish(self, messages: Sequence[Message]) -> None:
        """All or none: one message is one rename; a batch is written into a private staging
        directory and committed by renaming that directory into ``batches/``, after which
        its files are moved into place by the pusher (or, if it died, by the next claim)."""
        now = time.time()
        named = []
        for message in messages:
            core = (f"{sortkey(message.priority, message.created_at, next(SEQ))}."
                    f"{encode_name(message.queue)}.{encode_name(message.id)}")
            kind = "delayed" if message.available_at > now else "ready"
            final = f"{us(message.available_at):017d}.{core}.0" if kind == "delayed" \
                else f"{core}.0"
            named.append((kind, final, message))
        if len(named) == 1:
            kind, final, message = named[0]
            tmp = write_new_file(self.dirs[kind], encode_message(message), fsync=self.fsync)
            os.rename(tmp, self.dirs[kind] / final)
            self.published({kind})
            return
        batch = f"{os.getpid()}-{uuid.uuid4().hex}"
        staging = self.dirs["staging"] / batch
        try:
            for kind in ("ready", "delayed"):
                (staging / kind).mkdir(parents=True)
            for kind, final, message in named:
                tmp = write_new_file(staging / kind, encode_message(message), fsync=self.fsync)
                os.rename(tmp, staging / kind / final)
            if self.fsync:
                for directory in (staging / "ready", staging / "delayed", staging):
                    fsync_dir(directory)
            os.rename(staging, self.dirs["batches"] / batch)  # the commit point
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.fsync:
            fsync_dir(self.dirs["batches"])
        self.drain(batch)

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
        """Finish batches whose pusher died between its commit and its moves."""
        for batch in listdir(self.dirs["batches"]):
            self.drain(batch)

    def published(self, kinds: set[str]) -> None:
        for kind in kinds:
            if self.fsync:
                fsync_dir(self.dirs[kind])
            bump(self.markers[kind])

    def sweep(self, now: float) -> None:
        """Every ten minutes, delete temp files of writers that died over an hour ago."""
        if now - self._swept_at < 600.0:
            return
        self._swept_at = now
        with os.scandir(self.dirs["staging"]) as entries:  # batches never committed
            for entry in entries:
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > 3600:
                        shutil.rmtree(entry.path)
        for kind in ("ready", "delayed", "leased", "quarantine"):
            with os.scandir(self.dirs[kind]) as entries:
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

    def quarantine(self, source: Path, reason: str) -> None:
        """Move ``source`` aside (never delete it) and say why, once, in the log and beside
        the file; a concurrent quarantine of the same file by another process is a no-op."""
        target = self.dirs["quarantine"] / f"{us(time.time())}-{source.name}"
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return
        tmp = write_new_file(self.dirs["quarantine"], reason.encode("utf-8") + b"\n",
                             fsync=False)
        os.replace(tmp, target.with_name(target.name + ".reason"))
        log.warning("file queue %s: quarantined %s: %s (kept in %s; inspect or delete it)",
                    self.path, source.name, reason, target)
