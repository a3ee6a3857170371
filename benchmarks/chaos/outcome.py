"""Deadlines and verdicts: :func:`wait_for`, the scenario :class:`Sizes`, and the
:class:`Outcome` every scenario returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChaosTimeout", "Outcome", "Sizes", "wait_for"]


class ChaosTimeout(AssertionError):
    """A deadline passed before the awaited state was observed."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.01) -> Any:
    """Poll ``predicate`` until truthy; raise :class:`ChaosTimeout` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario runs. The defaults are the CI size (the whole suite in a few
    minutes on 2 cores); :meth:`scaled` grows them for soak runs."""

    crash_jobs: int = 500
    crash_secs: float = 0.02
    storm_jobs: int = 2000
    storm_kills: int = 20
    graceful_jobs: int = 300
    graceful_interrupts: int = 3
    producer_jobs: int = 10_000
    producer_trials: int = 4
    producer_budget_secs: float = 8.0
    flow_jobs: int = 200
    seed: int = 7

    @classmethod
    def scaled(cls, jobs: int, seed: int = 7) -> Sizes:
        """Soak sizes: ``jobs`` for the crash storm, the rest in proportion."""
        return cls(crash_jobs=max(50, jobs // 4), storm_jobs=jobs,
                   storm_kills=max(5, jobs // 100), graceful_jobs=max(100, jobs // 6),
                   graceful_interrupts=max(3, jobs // 700),
                   producer_jobs=max(10_000, jobs), producer_trials=max(4, jobs // 2500),
                   producer_budget_secs=max(8.0, jobs / 250),
                   flow_jobs=max(200, jobs // 10), seed=seed)


@dataclass
class Outcome:
    """What one scenario did on one backend; ``failures`` lists every broken promise."""

    scenario: str
    backend: str
    submitted: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures and self.lost == 0

    def check(self, ok: object, message: str) -> bool:
        """Record ``message`` as a failure unless ``ok``; returns ``bool(ok)``."""
        if not ok:
            self.failures.append(message)
        return bool(ok)

    def merge(self, other: Outcome) -> None:
        """Add a sub-scenario's counts, failures and notes to this one."""
        for attr in ("submitted", "completed", "lost", "duplicated"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        self.failures += [f"{other.scenario}: {f}" for f in other.failures]
        self.notes += other.notes

    def report(self) -> str:
        lines = [f"{self.scenario} on {self.backend}: submitted={self.submitted} "
                 f"completed={self.completed} lost={self.lost} duplicated={self.duplicated}"]
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

