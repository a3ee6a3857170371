"""Plain aligned tables for the CLI (the kernel keeps its dependencies to click)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    widths = {c: max([len(c), *(len(cell(r.get(c))) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns).rstrip())
