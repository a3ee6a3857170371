"""Lease bookkeeping of :class:`~nuvom_plugins_postgres.queue.PostgresQueue`: ack, retry,
release and extend, each one statement matched by the lease's ``id`` *and* ``token``.

Why apart from the claim: a claim picks rows and hands out tokens (the database makes
them, ``gen_random_uuid()``); everything here only changes a row a claim leased, fenced by
its token, so a worker whose lease expired and was claimed again changes nothing and gets
``False``. The batch calls match (id, token) pairs, not ids (see ``queries.ACK_MANY``).

:class:`LeaseOperations` is a base class of the queue (a mixin of the same object), so no
call goes through an extra hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nuvom_kernel.models import Lease
from nuvom_plugins_postgres.base import QueueBase

__all__ = ["LeaseOperations"]


class LeaseOperations(QueueBase):
    """Ack, retry, release and extend of :class:`~nuvom_plugins_postgres.queue.PostgresQueue`
    (see the module docstring)."""

    def ack(self, lease: Lease) -> bool:
        return self._store.changed(self._q.ack, (lease.id, lease.token)) == 1

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        params = [[le.id for le in leases], [le.token for le in leases]]
        gone = {(r[0], r[1]) for r in self._store.rows(self._q.ack_many, params)}
        return [(le.id, le.token) in gone for le in leases]  # by token: see ACK_MANY

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        """The leased row as stored, copied into ``<schema>.quarantine`` (schema v7). A
        repeat after a lost reply (the store retries a statement whose connection dropped)
        may keep a second copy: harmless, and better than none."""
        return self._store.changed(self._q.copy_to_quarantine,
                                   (reason, lease.id, lease.token)) == 1

    def _put_back(self, query: Any, lease: Lease, delay_secs: float,
                  body: bytes | None = None) -> bool:
        params = {"id": lease.id, "token": lease.token, "delay": max(float(delay_secs), 0.0),
                  "body": body}
        rows = self._store.rows(query, params)
        if not rows:
            return False
        if rows[0][0] == 0:
            self.notify()
        else:
            self._wake_at(delay_secs)
        return True

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        return self._put_back(self._q.retry, lease, delay_secs, body)

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        return self._put_back(self._q.release, lease, delay_secs)

    def extend(self, lease: Lease, secs: float) -> bool:
        if secs <= 0:  # claimable at once, by anyone: no need to wait for a tick
            found = self._store.rows(self._q.expire, (lease.id, lease.token))
            if found:
                self.notify()
            return bool(found)
        return self._store.changed(self._q.extend, (float(secs), lease.id, lease.token)) == 1

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        if not leases or secs <= 0:
            return [self.extend(le, secs) for le in leases]
        params = [float(secs), [le.id for le in leases], [le.token for le in leases]]
        held = {(r[0], r[1]) for r in self._store.rows(self._q.extend_many, params)}
        return [(le.id, le.token) in held for le in leases]  # by token: see ACK_MANY
