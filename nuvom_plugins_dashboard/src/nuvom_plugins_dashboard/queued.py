"""``/queued``: what is in the queues now, one page at a time, oldest first — the jobs
waiting (QUEUED, a delayed first run included), waiting out a retry delay (RETRYING) and
held by a worker (RUNNING), as ``nuvom list jobs`` lists them.

Why a page of its own: ``/jobs`` lists job *records*, written when an attempt settles, so
it cannot show what waits for its first run or what runs now; the overview only counts
them. This page reads the queue backend's
:meth:`~nuvom_kernel.backends.QueueBackend.browse` (nothing is claimed or changed), keyset
paged with :attr:`~nuvom_kernel.views.QueuedJob.cursor`, so a page costs the same however
deep in a long queue it is. ``browse`` is optional: over a backend without it the page says
so instead of failing.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from starlette.datastructures import ImmutableMultiDict

from nuvom_kernel.cli.output import relative as cli_relative
from nuvom_kernel.cli.queued import STATES
from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob
from nuvom_plugins_dashboard.views import BadRequest, _no_nul, checked_cursor

__all__ = ["MAX_LIMIT", "PAGE_SIZE", "REFRESH_STEPS", "STATES", "WAITING", "QueuedFilter",
           "QueuedPage", "list_queued", "refresh_secs", "relative"]

#: Rows per page unless the URL's ``limit`` says otherwise.
PAGE_SIZE = 50
#: The largest ``limit`` a URL may ask for: one request stays bounded.
MAX_LIMIT = 500
#: The states of a job no worker holds: what the overview's ready and delayed counts link to.
WAITING = ("queued", "retrying")
#: What a refused cursor's page is told: the link that carries cursors, where it starts.
_LINK = "this page's 'newer »' link"
_START = "the oldest job"
#: The intervals a live ``/queued`` refreshes at (seconds), the page's usual one first.
REFRESH_STEPS = (5, 10, 20, 30, 60)
#: A refresh waits this many times as long as the last listing took.
_COST_FACTOR = 50


def _limit(value: str | None) -> int:
    if not value:
        return PAGE_SIZE
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit={value!r} is not a page size; use a whole number from 1 to "
                         f"{MAX_LIMIT}")
    return limit


def _states(values: list[str]) -> tuple[JobStatus, ...]:
    wanted = {v.strip().lower() for v in values if v.strip()}
    if unknown := sorted(wanted - set(STATES)):
        raise BadRequest(f"state={unknown[0]!r} is not a state of a job in a queue; use "
                         f"{', '.join(STATES)} (finished jobs: /jobs)")
    return tuple(s for name, s in STATES.items() if name in wanted)


@attrs.frozen
class QueuedFilter:
    """The filters of ``/queued``: ``queue`` and ``state``, each repeatable (none: every
    queue, every state), and ``limit``, the page size."""

    queues: tuple[str, ...] = ()
    states: tuple[JobStatus, ...] = ()
    limit: int = PAGE_SIZE

    @classmethod
    def from_params(cls, params: ImmutableMultiDict[str, str]) -> QueuedFilter:
        """:raises BadRequest: an unknown state, a bad limit, a NUL in a queue name."""
        queues = [q for q in params.getlist("queue") if q]
        for queue in queues:
            _no_nul("queue", queue)
        return cls(queues=tuple(dict.fromkeys(queues)),
                   states=_states(params.getlist("state")),
                   limit=_limit(params.get("limit")))

    def params(self) -> list[tuple[str, str]]:
        """The query parameters that reproduce this filter (for links)."""
        found = [("queue", q) for q in self.queues]
        found += [("state", s.value.lower()) for s in self.states]
        if self.limit != PAGE_SIZE:
            found.append(("limit", str(self.limit)))
        return found

    def shows(self, state: str) -> bool:
        """Whether the filter's checkbox for ``state`` is ticked."""
        return STATES[state] in self.states


@attrs.frozen
class QueuedPage:
    """One page of ``/queued``: ``next_cursor`` continues it (``None`` on the last page).
    ``unsupported`` is the sentence shown instead when the backend cannot list its
    messages."""

    jobs: list[QueuedJob]
    next_cursor: str | None
    unsupported: str | None = None
    took_secs: float = 0.0  # how long the backend's listing took


def refresh_secs(took_secs: float) -> int:
    """How often a page whose listing took ``took_secs`` refreshes: at least 50 times as
    long, on :data:`REFRESH_STEPS`, so an open tab keeps the store listing for at most ~2 %
    of its time.

    Why: a listing may cost the store real time — Redis scans a queue's delayed and leased
    sets whole, 0.3-0.4 s of the server at 100,000 jobs, and every 5 s that was ~8 % of it
    per open tab. A cheap listing (SQLite, PostgreSQL, a short queue) keeps the usual 5 s.
    Steps, not the exact multiple, so that a refresh which found nothing new still matches
    the page's digest and swaps nothing."""
    wanted = took_secs * _COST_FACTOR
    return next((step for step in REFRESH_STEPS if step >= wanted), REFRESH_STEPS[-1])


def list_queued(queue: Any, flt: QueuedFilter, after: str | None = None) -> QueuedPage:
    """The page of ``queue``'s messages after the cursor ``after``, oldest first.

    :raises BadRequest: ``after`` is not a cursor this page made.
    """
    if after is not None:
        checked_cursor(after, _LINK, _START)
    started = time.monotonic()
    try:
        found = list(queue.browse(list(flt.queues) or None, states=flt.states or None,
                                  after=after, limit=flt.limit + 1))
    except NotImplementedError:
        return QueuedPage([], None, unsupported=(
            f"Queue backend {queue.name} cannot list the jobs in its queues, so this page "
            "cannot show them (memory, file, sqlite, redis and postgres can); the overview "
            "still counts them."))
    except ValueError as exc:
        if after is None:
            raise
        raise BadRequest(f"after: {exc}; follow {_LINK}, or drop after= to start at "
                         f"{_START}") from None
    took = time.monotonic() - started
    more = len(found) > flt.limit
    found = found[:flt.limit]
    return QueuedPage(found, found[-1].cursor if more else None, took_secs=took)


def relative(epoch: float | None, now: float) -> str:
    """How far a due time or a lease's deadline is from ``now`` (``-`` for none), in the
    words of ``nuvom list jobs``."""
    return cli_relative(epoch, now) or "-"
