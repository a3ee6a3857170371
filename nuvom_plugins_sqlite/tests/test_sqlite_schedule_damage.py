"""A damaged schedule-state row (a hand edit, a disk fault) stops nothing: the other rows
read as stored, the damaged one reads as a placeholder (no last tick: that schedule goes on
as a new one) logged once with its text, and the next compare-and-set from that placeholder
replaces the row — once, however many schedulers read it. Before, one bad row made
``schedule_states()`` raise, so no schedule fired on any worker."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from nuvom_kernel.models import ScheduleState
from nuvom_plugins_sqlite import SQLiteResultBackend

DAMAGE = [
    # (SQL that damages row 'other', what the log says is wrong, the stored text it quotes)
    ("UPDATE nuvom_schedules SET state = '{not json' WHERE name = 'other'", "not JSON",
     "{not json"),
    ("UPDATE nuvom_schedules SET state = '[1]' WHERE name = 'other'",
     "a JSON object was expected, found an array", "[1]"),
    ("UPDATE nuvom_schedules SET state = json_set(state, '$.last_tick', 'soon') "
     "WHERE name = 'other'", "its last_tick is a string", "soon"),
    ("UPDATE nuvom_schedules SET updated_at = 'yesterday' WHERE name = 'other'",
     "its version (updated_at, kept beside the state)", '"name": "other"'),
    ("UPDATE nuvom_schedules SET state = CAST(x'7bff' AS TEXT) WHERE name = 'other'",
     "not JSON", "b'{\\xff'"),  # not UTF-8: the whole fetch used to fail as text
]


@pytest.mark.parametrize(("damage", "problem", "quoted"), DAMAGE)
def test_a_damaged_row_is_a_placeholder_the_next_write_replaces_once(
        db_path: Path, damage: str, problem: str, quoted: str,
        caplog: pytest.LogCaptureFixture) -> None:
    first, second = SQLiteResultBackend(db_path), SQLiteResultBackend(db_path)
    try:
        good = ScheduleState("good", last_tick=100.0, last_run=100.0, fired=3,
                             updated_at=100.0)
        assert first.advance_schedule(None, good)
        assert first.advance_schedule(None, ScheduleState("other", last_tick=100.0,
                                                          updated_at=100.0))
        db = sqlite3.connect(db_path)
        with db:
            db.execute(damage)
        db.close()

        with caplog.at_level(logging.ERROR, logger="nuvom.scheduler"):
            states = first.schedule_states()
            again = second.schedule_states()  # another worker's scheduler reads it too
        assert states["good"] == good, "the healthy row reads as stored"
        placeholder = states["other"]
        assert placeholder.last_tick is None and placeholder.unreadable is not None
        assert problem in placeholder.unreadable.problem
        assert again["other"] == placeholder
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "each damaged row is logged once per process"
        assert "'other'" in errors[0] and str(db_path) in errors[0]
        assert problem in errors[0] and quoted in errors[0]

        new = ScheduleState("other", last_tick=200.0, fired=1, updated_at=200.0)
        assert first.advance_schedule(placeholder, new), "the damaged row is replaced"
        assert not second.advance_schedule(
            again["other"], ScheduleState("other", last_tick=200.0, updated_at=201.0)), \
            "a second scheduler's write from the same read is refused (one tick, once)"
        assert second.schedule_states() == {"good": good, "other": new}
        assert first.advance_schedule(new, ScheduleState("other", last_tick=300.0,
                                                         updated_at=300.0))
    finally:
        first.close()
        second.close()
