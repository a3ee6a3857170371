"""What a result backend with the ``schedules`` capability does with a stored state it cannot
read (a hand edit, a disk fault, a partial restore): the other states read as stored, the
damaged one reads as a placeholder (no last tick: that schedule goes on as a new one) logged
once with its text, and the next compare-and-set from that placeholder replaces it — once,
however many schedulers read it. Before, one bad entry made ``schedule_states()`` raise, so
no schedule fired on any worker.

Each backend damages an entry its own way (SQL, a file, a Redis hash), so this is a check its
tests call, not a contract class: :func:`check_damaged_entry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from nuvom_kernel.models import ScheduleState
from nuvom_kernel.result_backend import ResultBackend

__all__ = ["check_damaged_entry"]


def check_damaged_entry(first: ResultBackend, second: ResultBackend,
                        damage: Callable[[], None], *, problem: str, quoted: str, where: str,
                        caplog: pytest.LogCaptureFixture) -> None:
    """``first`` and ``second`` are two instances on one store (two workers' schedulers);
    ``damage()`` damages the stored state of schedule ``other`` after both states were
    written; the log must say ``problem``, quote ``quoted`` and name ``where``."""
    good = ScheduleState("good", last_tick=100.0, last_run=100.0, fired=3, updated_at=100.0)
    assert first.advance_schedule(None, good)
    assert first.advance_schedule(None, ScheduleState("other", last_tick=100.0,
                                                      updated_at=100.0))
    damage()

    with caplog.at_level(logging.ERROR, logger="nuvom.scheduler"):
        states = first.schedule_states()
        again = second.schedule_states()  # another worker's scheduler reads it too
    assert states["good"] == good, "the healthy entry reads as stored"
    placeholder = states["other"]
    assert placeholder.last_tick is None and placeholder.unreadable is not None
    assert problem in placeholder.unreadable.problem
    assert again["other"] == placeholder
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "each damaged entry is logged once per process"
    assert "'other'" in errors[0] and where in errors[0]
    assert problem in errors[0] and quoted in errors[0]

    moved = ScheduleState("good", last_tick=150.0, last_run=100.0, fired=3, updated_at=150.0)
    assert first.advance_schedule(good, moved), \
        "another schedule's write keeps the damaged entry as it is"
    assert second.schedule_states()["other"] == placeholder
    new = ScheduleState("other", last_tick=200.0, fired=1, updated_at=200.0)
    assert first.advance_schedule(placeholder, new), "the damaged entry is replaced"
    assert not second.advance_schedule(
        again["other"], ScheduleState("other", last_tick=200.0, updated_at=201.0)), \
        "a second scheduler's write from the same read is refused (one tick, once)"
    assert second.schedule_states() == {"good": moved, "other": new}
    assert first.advance_schedule(new, ScheduleState("other", last_tick=300.0,
                                                     updated_at=300.0))
