"""A ``nuvom_queue`` row as a claim or a peek reads it: its columns in claim order, the
message it holds, whether it is fit to be one, and the queue filter both add.

Why a module of its own: the claim (:mod:`.queue`) and the reads of :mod:`.inspection` build
messages from the same columns and must agree on what makes a row unfit (one that breaks
the schema's types is quarantined, never delivered: :mod:`.quarantine`); one definition
keeps the two from drifting apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import Message
from nuvom_plugins_sqlite import quarantine

__all__: list[str] = []

_RETURNING = ("id, seq, queue, priority, created_at, available_at, visible_at, deliveries, "
              "body, task, failures")
_NAMES = [*_RETURNING.split(", "), "token"]


def _queue_filter(queues: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if queues is None:
        return "", ()
    names = tuple(queues)
    return f" AND queue IN ({', '.join('?' * len(names))})" if names else " AND 0", names


def _message(row: tuple[Any, ...]) -> Message:
    """A row in :data:`_NAMES` order (as claimed or peeked) as its message."""
    return Message(id=row[0], body=row[8], queue=row[2], priority=row[3], available_at=row[5],
                   created_at=row[4], task=row[9], failures=row[10])


_NUMBER = (float, int)  # SQLite stores integral REAL values as integers, RETURNING shows it


def _problem(row: tuple[Any, ...]) -> str | None:
    """What makes a row in :data:`_NAMES` order unfit to claim (:func:`quarantine.problem`),
    ``None`` if nothing: the common case checked first, in one expression."""
    if _well_formed(row):
        return None
    return quarantine.problem(dict(zip(_NAMES, row[:12], strict=True)))


def _well_formed(row: tuple[Any, ...]) -> bool:
    """The common case of :func:`quarantine.problem`, in one expression."""
    return (type(row[0]) is str and row[0] != "" and type(row[2]) is str
            and type(row[3]) is int and type(row[4]) in _NUMBER
            and type(row[5]) in _NUMBER and type(row[7]) is int and type(row[8]) is bytes
            and type(row[9]) is str and type(row[10]) is int)
