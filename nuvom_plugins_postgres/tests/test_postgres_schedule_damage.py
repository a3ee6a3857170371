"""A damaged schedule-state row (a hand edit, a partial restore) stops nothing: see
:mod:`nuvom_kernel.testing.contracts.schedule_damage`. Before, one bad row made
``schedule_states()`` raise, so no schedule fired on any worker."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import check_damaged_entry
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
        quoted: str, caplog: pytest.LogCaptureFixture) -> None:
    def damaged() -> None:
        admin.execute(sql.SQL("UPDATE {}.schedules SET {} = %s WHERE name = 'other'")
                      .format(sql.Identifier(schema), sql.Identifier(column)), (value,))

    first = PostgresResultBackend.from_settings(settings, context)
    second = PostgresResultBackend.from_settings(settings, context)
    try:
        check_damaged_entry(first, second, damaged, problem=problem, quoted=quoted,
                            where=f"schema {schema}", caplog=caplog)
    finally:
        first.close()
        second.close()
