"""A message from the fields of its job hash: one reading for ``claim`` (from ``CLAIM``'s
reply) and ``peek`` (from an ``HMGET``), so both build it alike, and the reason a claimed
message's fields cannot be read (the quarantine's).

Why a module of its own: the claim side (:mod:`.queue`) and the read side
(:mod:`.inspection`) both parse hashes, and neither should import the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import Message

__all__ = ["_MESSAGE_FIELDS", "_message", "_unfit"]

#: A message's fields in its job hash (``scripts``' key layout), in the order ``CLAIM``
#: returns them: body, queue, priority, created_at, available_at, task, failures.
_MESSAGE_FIELDS = ("b", "q", "p", "c", "a", "t", "f")


def _message(job_id: str, fields: Sequence[Any]) -> Message:
    """The message from its hash fields in :data:`_MESSAGE_FIELDS` order (as ``CLAIM``
    returns them, and ``peek`` reads them), so a claim and a peek build it alike; a
    missing ``f`` (failures) is 0, as in the scripts."""
    body, queue, priority, created, available, task, failures = fields
    return Message(id=job_id, body=bytes(body), queue=queue.decode(), priority=int(priority),
                   available_at=float(available), created_at=float(created),
                   task=task.decode(), failures=int(failures or 0))


#: What each of :data:`_MESSAGE_FIELDS` must parse as, for :func:`_unfit`.
_PARSED: tuple[tuple[str, Any], ...] = (
    ("b (body)", bytes), ("q (queue)", bytes.decode), ("p (priority)", int),
    ("c (created_at)", float), ("a (available_at)", float), ("t (task)", bytes.decode),
    ("f (failures)", lambda v: int(v or 0)))


def _unfit(fields: Sequence[Any]) -> str:
    """Why a claimed message's fields (as :func:`_message` takes them) cannot be read: the
    quarantine's reason, naming the field."""
    for (name, parse), value in zip(_PARSED, fields, strict=True):
        try:
            parse(value)
        except (TypeError, ValueError):
            shown = value[:40] if isinstance(value, bytes) else value
            return f"field {name} holds {shown!r}, which does not parse"
    return "its fields do not make a message"

