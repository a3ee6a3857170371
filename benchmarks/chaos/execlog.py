"""The execution log, the witness independent of the result backend.

Every task attempt appends ``start``/``end`` lines with its pid to ``chaos.log``, one
``O_APPEND`` ``write(2)`` each, so lines from many processes never interleave and a killed
process leaves only whole lines. Fault-injecting wrappers add ``ack`` and ``fault`` lines the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecLog", "Run"]


@dataclass
class Run:
    """One attempt of one job as the execution log saw it."""

    pid: int
    attempt: int
    started: float
    ended: float | None = None


class ExecLog:
    """Parses ``chaos.log`` incrementally: ``start``/``end`` lines from the tasks and
    ``ack`` lines from instrumented backends, in the order the kernel appended them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.runs: dict[str, list[Run]] = {}
        self.acks: list[tuple[str, int]] = []
        self.premature_acks: list[tuple[str, int]] = []  # acked before that pid's run ended
        self.faulted: set[str] = set()  # jobs whose ack/extend an injected fault broke
        self.ended = 0
        self.problems: list[str] = []

    def refresh(self) -> ExecLog:
        """Read the lines appended since the last call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))
        return self

    def _line(self, text: str) -> None:
        parts = text.split()
        try:
            kind, job_id, pid = parts[0], parts[1], int(parts[2])
            if kind == "fault":
                self.faulted.add(job_id)
                return
            if kind == "ack":
                self.acks.append((job_id, pid))
                if not any(r.pid == pid and r.ended for r in self.runs.get(job_id, ())):
                    self.premature_acks.append((job_id, pid))
                return
            attempt, at = int(parts[3]), float(parts[4])
        except (IndexError, ValueError):
            self.problems.append(f"malformed log line {text!r}")
            return
        runs = self.runs.setdefault(job_id, [])
        if kind == "start":
            runs.append(Run(pid, attempt, at))
        elif kind == "end":
            for run in reversed(runs):
                if run.pid == pid and run.ended is None:
                    run.ended = at
                    self.ended += 1
                    break
            else:
                self.problems.append(f"end without start: {text!r}")

    def executions(self, job_id: str) -> int:
        return len(self.runs.get(job_id, ()))

    def ran_by(self, pid: int) -> set[str]:
        """Jobs ``pid`` has started, finished or not."""
        return {job_id for job_id, runs in self.runs.items() if any(r.pid == pid for r in runs)}

    def in_flight(self, pid: int) -> set[str]:
        """Jobs ``pid`` has started and not finished."""
        return {job_id for job_id, runs in self.runs.items()
                if any(r.pid == pid and r.ended is None for r in runs)}

