"""A ``jobs`` row as a claim or a peek reads it (``queries._MESSAGE`` first, then the
lease's columns): the message it holds, and the lease a claim hands out.

Why a module of its own: the claim (:mod:`.queue`) and ``peek`` (:mod:`.inspection`) build
the message from the same columns, so one definition keeps the two from drifting apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import Lease, Message

__all__: list[str] = []


def _message(row: Sequence[Any]) -> Message:
    """The message from a row's first columns (``queries._MESSAGE``): a claim's lease and
    a peek build it alike."""
    job_id, body, queue, priority, available_at, created_at, task, failures = row[:8]
    return Message(id=job_id, body=bytes(body), queue=queue, priority=priority,
                   available_at=available_at, created_at=created_at, task=task,
                   failures=failures)


def _lease(row: Sequence[Any]) -> Lease:
    token, deliveries, expires_at, _seq = row[8:]
    return Lease(_message(row), token, deliveries, expires_at)
