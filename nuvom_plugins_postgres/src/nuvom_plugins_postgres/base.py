"""What the parts of :class:`~nuvom_plugins_postgres.queue.PostgresQueue` share: the state its
``__init__`` sets (declared here, typed once) and the two calls every part makes, a
statement run on the pool (:meth:`QueueBase._run`) and an earlier maintenance tick
(:meth:`QueueBase._wake_at`).

Why a base class: the queue is one object split by responsibility into base classes, push
in :mod:`.push`, ack, retry, release and extend in :mod:`.leases`, ``settle_many`` in
:mod:`.settle`, the operator's reads in :mod:`.inspection` and table health in
:mod:`.hygiene`; each builds on this one, so a per-job call costs what it did as a method
of the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from nuvom_kernel.backends import QueueBackend

if TYPE_CHECKING:
    from nuvom_plugins_postgres.queries import Queries
    from nuvom_plugins_postgres.settings import PostgresSettings
    from nuvom_plugins_postgres.store import Store

__all__ = ["QueueBase"]

T = TypeVar("T")


class QueueBase(QueueBackend):
    """The state and plumbing of :class:`~nuvom_plugins_postgres.queue.PostgresQueue`."""

    # set by PostgresQueue.__init__
    settings: PostgresSettings
    schema: str
    _store: Store
    _q: Queries
    _tick_at: float  # monotonic time of the next maintenance tick

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """:meth:`Store.run`: every statement here is safe to repeat (token-checked, or
        idempotent by job id)."""
        return self._store.run(fn)

    def _wake_at(self, delay: float) -> None:
        """Tick no later than ``delay`` seconds from now (a row becomes due then)."""
        self._tick_at = min(self._tick_at, time.monotonic() + max(delay, 0.0))
