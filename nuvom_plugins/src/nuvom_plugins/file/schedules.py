"""Schedule state of the file result backend: one JSON file, changed under an ``flock``.

A scheduler pass reads every state and at most one compare-and-set per schedule per tick,
so a small file rewritten whole (temp file + ``rename``) is enough, and readers never see a
torn file. The lock is its own file, so schedule writes never wait on record appends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nuvom_kernel.models import ScheduleState

__all__ = ["ScheduleFile"]


class ScheduleFile:
    """``schedules.json`` in the results directory, with ``schedules.lock`` beside it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "schedules.json"
        self.lock_path = directory / "schedules.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def states(self) -> dict[str, ScheduleState]:
        return {name: ScheduleState.from_dict(v) for name, v in self._read().items()}

    def advance(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        with self._locked():
            data = self._read()
            stored = data.get(state.name)
            if (stored is None) != (previous is None) or (
                    stored is not None and previous is not None
                    and stored.get("updated_at") != previous.updated_at):
                return False
            data[state.name] = state.to_dict()
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".schedules.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return True
