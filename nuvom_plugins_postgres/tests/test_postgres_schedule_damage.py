"""A damaged schedule-state row (a hand edit, a partial restore) stops nothing: the other rows
read as stored, the damaged one reads as a placeholder (no last tick: that schedule goes on
as a new one) logged once with its text, and the next compare-and-set from it replaces the
row — once, however many schedulers read it. Before, one bad row made ``schedule_states()``
raise, so no schedule fired on any worker."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import ScheduleState
from nuvom_plugins_postgres import PostgresResultBackend

DAMAGE: list[tuple[str, object, str, str]] = [
    # (column of row 'other' damaged, its new value, what the log says is wrong, the text
    # it quotes)
    ("state", "{not json", "not JSON", "{not json"),
    ("state", "[1]", "a JSON object was expected, found an array", "[1]"),
    ("state", '{"name": "other", "last_job_id": 7, "updated_at": 1}',
     "its last_job_id is a number (7), not a string or null", '"last_job_id": 7'),
    ("updated_at", float("nan"), "its version (updated_at, kept beside the state) is a "
     "number (NaN), not a finite number", '"name": "other"'),
]


@pytest.mark.parametrize(("column", "value", "problem", "quoted"), DAMAGE)
def test_a_damaged_row_is_a_placeholder_the_next_write_replaces_once(
        settings: dict[str, object], context: BackendContext, schema: str,
        admin: psycopg.Connection[Any], column: str, value: object, problem: str,
        quoted: str,
        caplog: pytest.LogCaptureFixture) -> None:
    first = PostgresResultBackend.from_settings(settings, context)
    second = PostgresResultBackend.from_settings(settings, context)
    try:
        good = ScheduleState("good", last_tick=100.0, last_run=100.0, fired=3,
                             updated_at=100.0)
        assert first.advance_schedule(None, good)
        assert first.advance_schedule(None, ScheduleState("other", last_tick=100.0,
                                                          updated_at=100.0))
        admin.execute(sql.SQL("UPDATE {}.schedules SET {} = %s WHERE name = 'other'")
                      .format(sql.Identifier(schema), sql.Identifier(column)), (value,))

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
        assert "'other'" in errors[0] and f"schema {schema}" in errors[0]
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
