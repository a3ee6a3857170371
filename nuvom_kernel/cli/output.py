"""Plain aligned tables for the CLI (the kernel keeps its dependencies to click)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click


def printable(value: Any) -> str:
    """``str(value)`` that any terminal encoding can print: a job's data may hold a lone
    surrogate (a file name decoded with ``surrogateescape``), which a UTF-8 stdout refuses
    with a traceback; it is shown backslash-escaped (``\\udcff``) instead."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else printable(value)

    widths = {c: max([len(c), *(len(cell(r.get(c))) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns).rstrip())
