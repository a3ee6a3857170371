"""What the parts of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue` share: the state its
``__init__`` sets, declared here and typed once.

Why a base class: the queue is one object split by responsibility into base classes, ack,
retry, release and extend in :mod:`.leases`, ``settle_many`` in :mod:`.settle` and the
operator's reads in :mod:`.inspection` (as PostgreSQL's queue is: its ``base.py``); each
builds on this one, so a per-job call costs what it did as a method of the queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nuvom_kernel.backends import QueueBackend

if TYPE_CHECKING:
    from nuvom_plugins_sqlite.connection import Database

__all__ = ["QueueBase"]


class QueueBase(QueueBackend):
    """The state of :class:`~nuvom_plugins_sqlite.queue.SQLiteJobQueue` its parts use."""

    # set by SQLiteJobQueue.__init__
    _db: Database  # the queue's file, at the configured synchronous level
    _lease_db: Database  # the same file, for lease bookkeeping: never fsynced

    if TYPE_CHECKING:
        def _waits_until(self, at: float) -> None: ...
