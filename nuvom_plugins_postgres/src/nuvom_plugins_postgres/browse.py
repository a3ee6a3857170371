"""``PostgresQueue.browse``: a page of the ``jobs`` table in (created_at, id) order, filtered,
ordered and limited by the server in one ``SELECT`` (``queries.BROWSE``), each row's state
read on the server's clock by the same expression ``peek_state`` uses.

A module of its own only to keep the queue's modules short; ``PostgresQueue.browse``
(:mod:`.inspection`) calls these two.

Why no index on (created_at, id): it is not free. No claim is a HOT update (the row's
``state`` is in the partial indexes' predicates), so each claim, put-back and push would
write one more index entry; measured on 2 CPUs, claim(1) + ack was 8 % and claim(100) +
ack_many 10 % slower with it. Without it a page is one scan of the table and a top-N sort:
~30-40 ms on 100,000 rows (200-byte bodies), limit 100 or 1,000, which an operator's
listing can afford; walking all of them in pages of 1,000 takes ~3 s (0.4 s with the index,
which an operator may add: the statement then walks it).

Why no row is skipped as damaged: nothing here is parsed in Python. Every column read is
typed, all but the lease deadline ``NOT NULL`` (the schema's ``jobs_state_valid`` check
gives every leased row one), and the body, the one opaque part of a row, is not
read. A hand-edited ``NaN`` or infinite ``created_at`` is listed like any row (PostgreSQL
sorts ``NaN`` last and equal to itself, so its cursor, ``'nan|<id>'``, pages on past it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob, parse_cursor
from nuvom_plugins_postgres.queries import Queries
from nuvom_plugins_postgres.results import storable

__all__ = ["page_statement", "queued_job"]

#: The states a queued row can be in (``queries._STATE``): ``states=None`` asks for these.
LISTED = (JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.QUEUED)


def page_statement(q: Queries, queues: Sequence[str] | None,
                   states: Collection[JobStatus] | None, after: str | None, limit: int
                   ) -> tuple[bytes, list[Any]] | None:
    """The statement and parameters of one page; ``None`` when it must be empty (no queue,
    no state a queued row can be in, ``limit <= 0``).

    :raises ValueError: ``after`` is not a cursor ``browse`` returned (checked first, as
        the kernel's ``oldest_first`` does, whatever the other arguments).
    """
    key = None if after is None else parse_cursor(after, made_by="QueuedJob.cursor")
    if key is not None and not storable(key[1]):  # psycopg could not even send it
        raise ValueError(f"malformed page cursor {after!r}: its job id is not one a push "
                         "stores; pass QueuedJob.cursor as browse returned it")
    wanted = [s.value for s in LISTED if states is None or s in states]
    if limit <= 0 or not wanted or (queues is not None and not queues):
        return None
    params: list[Any] = [] if queues is None else [list(queues)]
    if key is not None:
        params += key
    some_states = len(wanted) < len(LISTED)
    if some_states:
        params.append(wanted)
    return (q.browse[queues is not None, key is not None, some_states],
            [*params, limit])


def queued_job(row: Sequence[Any]) -> QueuedJob:
    """The :class:`QueuedJob` of one ``queries.BROWSE`` row."""
    (job_id, task, queue, priority, status, created_at, available_at, failures, deliveries,
     lease_expires_at) = row
    return QueuedJob(id=job_id, task=task, queue=queue, priority=priority,
                     state=JobStatus(status), created_at=created_at,
                     available_at=available_at, failures=failures, deliveries=deliveries,
                     lease_expires_at=lease_expires_at)
