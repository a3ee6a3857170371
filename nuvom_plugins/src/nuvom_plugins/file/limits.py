"""Concurrency limits of the file queue (``@task(concurrency=N)``), across processes.

A file name carries no task name, so a claim of a limited task's message reads its header
first (only when limits are set). Each running job of a limited task holds a *slot*: an
empty file ``limits/<task>/<token>`` named after its lease's token. A slot counts while a
lease file with that token exists in ``leased/`` and has not expired (an extension renames
the lease but keeps its token; an ack, a retry or a crash ends it), so finished and dead
workers free their slots without any cleanup step. Counting the slots and renaming the
message into ``leased/`` happen under ``limits/<task>.lock``, so two processes never both
take the last slot. A message held back by its limit is not renamed at all: no delivery is
counted and other messages are claimed past it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from nuvom_plugins.file._fs import CorruptEntry, encode_name, read_message
from nuvom_plugins.file._names import listdir, parse, us

__all__ = ["Slots"]


class Slots:
    """The ``limits/`` directory of one queue."""

    def __init__(self, root: Path, leased: Path) -> None:
        self.root = root / "limits"
        self.leased = leased
        self._tasks: dict[str, str] = {}  # ready file name -> task (headers read once)

    def task_of(self, path: Path) -> str | None:
        """The task of a ready message, from its header (cached by name)."""
        task = self._tasks.get(path.name)
        if task is None:
            try:
                task = read_message(path).task
            except (OSError, CorruptEntry):
                return None  # gone (claimed elsewhere) or corrupt: the plain claim copes
            if len(self._tasks) > 100_000:
                self._tasks.clear()
            self._tasks[path.name] = task
        return task

    def live_tokens(self, now: float) -> set[str]:
        now_us = us(now)
        live = set()
        for name in listdir(self.leased):
            parsed = parse(name, "leased")
            if parsed is not None and parsed.when_us > now_us:
                live.add(parsed.token)
        return live

    def _dir(self, task: str) -> Path:
        path = self.root / encode_name(task)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _locked(self, task: str) -> Iterator[Path]:
        directory = self._dir(task)
        fd = os.open(self.root / f"{encode_name(task)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield directory
        finally:
            os.close(fd)

    def running(self, task: str, now: float, live: set[str] | None = None) -> int:
        """Slots of ``task`` whose lease is live; stale slots are deleted on the way.

        A count writes nothing it must: a task without slots yet has no folder (none is
        made), and a stale slot that cannot be deleted (a read-only look, ``nuvom status``
        on a read-only mount) counts as free all the same and is left for a writer."""
        live = self.live_tokens(now) if live is None else live
        count = 0
        directory = self.root / encode_name(task)
        try:
            tokens = listdir(directory)
        except FileNotFoundError:
            return 0
        for token in tokens:
            if token in live:
                count += 1
            else:
                with contextlib.suppress(OSError):
                    os.unlink(directory / token)
        return count

    def take(self, task: str, limit: int, now: float, token: str,
             lease: Callable[[], bool]) -> bool:
        """Under the task's lock: if fewer than ``limit`` slots are live, run ``lease()``
        (the rename into ``leased/``) and hold a slot for ``token``; whether it leased."""
        with self._locked(task) as directory:
            if self.running(task, now) >= limit:
                return False
            (directory / token).touch()
            if lease():
                return True
            os.unlink(directory / token)
            return False

    def forget(self, name: str) -> None:
        self._tasks.pop(name, None)
