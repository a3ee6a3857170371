"""Rows that cannot become a :class:`~nuvom_kernel.models.Message` are moved aside, not fatal.

The schema's ``CHECK`` constraints stop bad rows at write time, but a file edited by another
tool (or written with ``PRAGMA ignore_check_constraints``) can still hold one. Such a row must
never crash a claim and stall every job behind it: it moves to ``nuvom_quarantine`` with the
reason, ``stats().quarantined`` reports it, and the queue keeps flowing. The row keeps its
values exactly (task name and failures included), so an operator can repair and re-insert it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from nuvom_kernel.views import quarantine_line

__all__ = ["COPY_LEASED_SQL", "INVALID_ROW_SQL", "describe", "move", "problem", "sweep"]

#: SQL predicate true for a queue row that violates the schema's type checks.
INVALID_ROW_SQL = """NOT (
    typeof(id) = 'text' AND id <> '' AND typeof(seq) = 'integer' AND typeof(queue) = 'text'
    AND typeof(priority) = 'integer' AND typeof(deliveries) = 'integer'
    AND typeof(created_at) IN ('real', 'integer') AND typeof(available_at) IN ('real', 'integer')
    AND typeof(visible_at) IN ('real', 'integer', 'null') AND typeof(body) = 'blob'
    AND typeof(task) = 'text' AND typeof(failures) = 'integer'
)"""

_COLUMNS = ("id, seq, queue, priority, created_at, available_at, visible_at, deliveries, body, "
            "task, failures")

_EXPECTED: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("id", (str,)),
    ("seq", (int,)),
    ("queue", (str,)),
    ("priority", (int,)),
    ("created_at", (float, int)),
    ("available_at", (float, int)),
    ("visible_at", (float, int, type(None))),
    ("deliveries", (int,)),
    ("body", (bytes,)),
    ("task", (str,)),
    ("failures", (int,)),
)

_SQL_TYPE = {str: "text", int: "integer", float: "real", bytes: "blob", type(None): "NULL"}


def problem(values: dict[str, Any]) -> str | None:
    """Why this row cannot be delivered, or ``None`` if it is well formed."""
    for column, types in _EXPECTED:
        if column not in values:
            continue
        value = values[column]
        if type(value) not in types:
            wanted = " or ".join(_SQL_TYPE[t] for t in types if t is not type(None))
            return f"column {column} holds {_SQL_TYPE.get(type(value), '?')}, expected {wanted}"
    if values.get("id") == "":
        return "column id is empty"
    return None


#: A copy of the queue row keyed ``id = ?`` in the quarantine table, with the reason and the
#: time bound first.
_COPY = ("INSERT INTO nuvom_quarantine (id, queue, priority, created_at, available_at, "
         "deliveries, body, task, failures, reason, quarantined_at) SELECT id, queue, "
         "priority, created_at, available_at, deliveries, body, task, failures, ?, ? "
         "FROM nuvom_queue WHERE id = ?")
#: :data:`_COPY` of a leased row, matched by its lease's token too (``copy_to_quarantine``).
COPY_LEASED_SQL = _COPY + " AND token = ?"


def move(conn: sqlite3.Connection, job_id: Any, reason: str) -> None:
    """Move the queue row keyed ``job_id`` into the quarantine table; call inside a write
    transaction. (The id is the row's key even when it has the wrong type.)"""
    conn.execute(_COPY, (reason, time.time(), job_id))
    conn.execute("DELETE FROM nuvom_queue WHERE id = ?", (job_id,))


def sweep(conn: sqlite3.Connection) -> int:
    """Quarantine every queue row that breaks the type checks (a full scan: call rarely,
    inside a write transaction). Returns how many rows moved."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM nuvom_queue WHERE {INVALID_ROW_SQL}"
    ).fetchall()
    names = _COLUMNS.split(", ")
    for row in rows:
        values = dict(zip(names, row, strict=True))
        move(conn, row[0], problem(values) or "row failed the schema's type checks")
    return len(rows)


def describe(conn: sqlite3.Connection, limit: int = 100) -> list[str]:
    """One line per quarantined row, oldest first, for ``nuvom status``."""
    rows: Sequence[tuple[Any, ...]] = conn.execute(
        "SELECT seq, id, queue, reason, quarantined_at FROM nuvom_quarantine "
        "ORDER BY seq LIMIT ?", (limit + 1,)
    ).fetchall()
    lines = []
    for seq, job_id, queue, reason, at in rows[:limit]:
        lines.append(quarantine_line(job_id, queue, at, reason,
                                     f"the row is kept as nuvom_quarantine.seq={seq}"))
    if len(rows) > limit:
        total = conn.execute("SELECT count(*) FROM nuvom_quarantine").fetchone()[0]
        lines.append(f"... and {total - limit} more rows in nuvom_quarantine")
    return lines
