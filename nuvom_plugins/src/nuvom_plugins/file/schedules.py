"""Schedule state of the file result backend: one JSON file, changed under an ``flock``.

A scheduler pass reads every state and at most one compare-and-set per schedule per tick,
so a small file rewritten whole (temp file + ``rename``) is enough, and readers never see a
torn file. The lock is its own file, so schedule writes never wait on record appends.

Damage (a hand edit, a disk fault) stops nothing and loses nothing. An entry that does not
decode is read as a placeholder (:func:`~nuvom_kernel.backends.read_schedule_state`: logged
with its text, that schedule goes on as a new one) and replaced by that schedule's next
write. A file that does not decode as a whole reads as no state at all, and the first write
renames it to ``schedules.json.corrupt-<UTC time>`` beside it, said in the log, before it
starts a new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nuvom_kernel.backends import read_schedule_state, report_unreadable, stored_text
from nuvom_kernel.models import ScheduleState

__all__ = ["ScheduleFile"]

log = logging.getLogger("nuvom.file.results")


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

    def _read(self) -> tuple[dict[str, Any], str | None, bytes]:
        """The entries by schedule name, why the file as a whole does not decode (``None``
        when it does, or when there is none: no entries) and its bytes, kept for the log
        and for :meth:`_keep_aside`."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None, b""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            return {}, f"not JSON ({exc})", raw
        if not isinstance(data, dict):
            return {}, f"a JSON object was expected, found {type(data).__name__}", raw
        return data, None, raw

    def states(self) -> dict[str, ScheduleState]:
        data, problem, raw = self._read()
        if problem is not None:
            report_unreadable(
                "every schedule state", str(self.path), problem, raw,
                "Every schedule goes on as a new one (it fires from its next tick); the "
                "first state written keeps this file aside, renamed to "
                f"{self.path.name}.corrupt-<UTC time>, and starts a new one")
            return {}
        where = str(self.path)
        return {name: read_schedule_state(name, entry, where) for name, entry in data.items()}

    def _keep_aside(self, problem: str) -> None:
        """Rename the undecodable file beside itself, so the write that follows starts a
        new one without losing it. Under the lock: one worker renames it, and the others
        then read the new file. A failed rename raises: better no write than a lost file."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.rename(self.path, aside)
        log.error("schedule states in %s are unreadable (%s): the file is kept as %s, and a "
                  "new one is started; every schedule goes on as a new one", self.path,
                  problem, aside)

    def advance(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        with self._locked():
            data, problem, _ = self._read()
            if problem is not None:
                self._keep_aside(problem)
            stored = data.get(state.name)
            if previous is None:
                landed = state.name not in data
            elif previous.unreadable is not None:  # the damaged entry, if still the one read
                landed = (state.name in data
                          and stored_text(stored) == previous.unreadable.stored)
            else:
                landed = (isinstance(stored, dict)
                          and stored.get("updated_at") == previous.updated_at)
            if not landed:
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
