"""A damaged schedule-state row (a hand edit, a disk fault) stops nothing: see
:mod:`nuvom_kernel.testing.contracts.schedule_damage`. Before, one bad row made
``schedule_states()`` raise, so no schedule fired on any worker."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nuvom_kernel.testing.contracts import check_damaged_entry
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
    def damaged() -> None:
        db = sqlite3.connect(db_path)
        with db:
            db.execute(damage)
        db.close()

    first, second = SQLiteResultBackend(db_path), SQLiteResultBackend(db_path)
    try:
        check_damaged_entry(first, second, damaged, problem=problem, quoted=quoted,
                            where=str(db_path), caplog=caplog)
    finally:
        first.close()
        second.close()
