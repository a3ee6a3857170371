"""A held lease's file: ack, extend, release and retry, each a rename (or unlink) of the
lease file by its exact name, which holds the token (the layout: :mod:`.queue`).

Why a module of its own: these steps are the fence (a lease recovered by another process
has another name, so the old holder's call finds nothing and reports the lease lost) and
nothing else in the queue renames a leased file by a holder's name; the claim side, which
creates the names, is :mod:`.queue`. :class:`LeaseOperations` is a base class of
:class:`~nuvom_plugins.file.queue.FileJobQueue` and uses the state its ``__init__`` sets
(declared below): a per-job call costs what it did as a method of the queue.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import attrs

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import Lease
from nuvom_plugins.file._fs import fsync_dir
from nuvom_plugins.file._layout import Layout
from nuvom_plugins.file._names import Name, bump, listdir, parse, us

__all__ = ["LeaseOperations"]


class LeaseOperations(QueueBackend):
    """The lease side of :class:`~nuvom_plugins.file.queue.FileJobQueue`."""

    # set by FileJobQueue.__init__
    fsync: bool
    _fs: Layout
    _dirs: dict[str, Path]
    _markers: dict[str, Path]
    _leased_marker: Path
    _held: dict[str, str]  # token -> current lease file name (this instance)
    _held_lock: threading.Lock
    #: Held by each lease operation (ack, extend, release, retry) of this instance. Why:
    #: the lease monitor extends leases on its thread while the settler acks on its own,
    #: and an extension's rename racing an ack's unlink of the same file could undo the ack
    #: (the ack unlinked the old name, the rename had made a new one: the finished job ran
    #: again). Another process never holds the same lease: the lock is this process's.
    _lease_ops: threading.RLock

    def holds(self, lease: Lease) -> bool:
        """The lease file still exists under this lease's token (under the lease lock: an
        extension renaming it between the name's lookup and the look at the file read as
        a lost lease, and a settled workflow step did not move its workflow on)."""
        with self._lease_ops:
            name = self._lease_name(lease)
            return name is not None and (self._dirs["leased"] / name).exists()

    def _lease_name(self, lease: Lease) -> str | None:
        with self._held_lock:
            name = self._held.get(lease.token)
        if name is not None:
            return name
        for candidate in listdir(self._dirs["leased"]):  # a lease from another instance
            parsed = parse(candidate, "leased")
            if parsed is not None and parsed.token == lease.token:
                return candidate
        return None

    def _forget(self, token: str) -> None:
        with self._held_lock:
            self._held.pop(token, None)

    def _move_lease(self, lease: Lease, target: Path | None) -> str | None:
        """Rename (or, for ``None``, unlink) the lease file; the lease file's name if that
        succeeded, ``None`` if the lease was lost."""
        name = self._lease_name(lease)
        if name is None:
            return None
        source = self._dirs["leased"] / name
        try:
            if target is None:
                os.unlink(source)
            else:
                os.rename(source, target)
        except FileNotFoundError:
            self._forget(lease.token)
            return None
        return name

    def _parsed_lease(self, lease: Lease) -> Name | None:
        name = self._lease_name(lease)
        return parse(name, "leased") if name else None

    def ack(self, lease: Lease) -> bool:
        with self._lease_ops:
            name = self._move_lease(lease, None)
            self._forget(lease.token)
            parsed = parse(name, "leased") if name else None
            if parsed is not None:
                self._fs.free_ids([parsed.id])
            return name is not None

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        """The lease file's bytes, copied into ``quarantine/`` with its reason: the ack
        that follows unlinks the lease file, and the copy stays."""
        with self._lease_ops:
            name = self._lease_name(lease)
            if name is None:
                return False
            try:
                self._fs.keep_copy(self._dirs["leased"] / name, reason)
            except FileNotFoundError:
                self._forget(lease.token)
                return False
            return True

    def extend(self, lease: Lease, secs: float) -> bool:
        """Rename the lease file to its new expiry. ``secs <= 0`` expires it now and bumps
        ``.leased-marker``, so the next claim of any instance recovers it (until then its
        holder may still ack it; inspection already counts it as waiting)."""
        with self._lease_ops:
            parsed = self._parsed_lease(lease)
            if parsed is None:
                return False
            now = time.time()
            new = f"{us(now + secs):017d}.{parsed.token}.{parsed.ready()}"
            if self._move_lease(lease, self._dirs["leased"] / new) is None:
                return False
            with self._held_lock:
                self._held[lease.token] = new
            if secs <= 0:
                bump(self._leased_marker)
                self.notify()
            return True

    def _put_back(self, lease: Lease, parsed: Name, delay_secs: float, available_at: float,
                  *, deliveries: int, failures: int) -> bool:
        """Move the lease file to ``ready/``, or to ``delayed/`` until ``available_at`` when
        ``delay_secs > 0``."""
        kind = "delayed" if delay_secs > 0 else "ready"
        final = parsed.ready(deliveries, failures)
        if kind == "delayed":
            final = f"{us(available_at):017d}.{final}"
        if self._move_lease(lease, self._dirs[kind] / final) is None:
            return False
        self._forget(lease.token)
        if self.fsync:
            fsync_dir(self._dirs[kind])
        bump(self._markers[kind])
        self.notify()
        return True

    def _rewritten(self, lease: Lease, available_at: float, body: bytes) -> Name | None:
        """The lease's file rewritten with its new due time (and body), and its name parsed;
        ``None`` if the lease is lost. Why rewrite: ``available_at`` is in the header only
        (a ready name has no time, and a promotion drops a delayed name's), and a claim,
        ``peek``, ``browse`` and ``stats`` read it there, so a retried job read as due since
        its first enqueue. The lease is extended first: that fences the rewrite (a file
        recovered meanwhile is not ours to write)."""
        if not self.extend(lease, self.visibility_timeout_secs):
            return None
        name = self._lease_name(lease)
        parsed = parse(name, "leased") if name else None
        if name is None or parsed is None:
            return None
        message = attrs.evolve(lease.message, body=body, available_at=available_at,
                               failures=0)
        self._fs.rewrite(self._dirs["leased"] / name, message, parsed.id)
        return parsed

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        """Back to ``ready/`` (or ``delayed/``) with the claim's delivery taken back; a delay
        moves ``available_at`` (the file is rewritten, see :meth:`_rewritten`)."""
        with self._lease_ops:
            available_at = time.time() + delay_secs
            if delay_secs > 0:
                parsed = self._rewritten(lease, available_at, lease.message.body)
            else:
                parsed = self._parsed_lease(lease)
            if parsed is None:
                return False
            return self._put_back(lease, parsed, delay_secs, available_at,
                                  deliveries=max(parsed.deliveries - 1, 0),
                                  failures=parsed.failures)

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        """Move the message back (to ``delayed/`` if ``delay_secs > 0``) with one more
        failure in its name, due ``delay_secs`` from now: its file is rewritten with that
        ``available_at`` (and ``body`` if given), fenced (see :meth:`_rewritten`)."""
        with self._lease_ops:
            available_at = time.time() + max(delay_secs, 0.0)
            parsed = self._rewritten(lease, available_at,
                                     lease.message.body if body is None else body)
            if parsed is None:
                return False
            return self._put_back(lease, parsed, delay_secs, available_at,
                                  deliveries=parsed.deliveries, failures=parsed.failures + 1)

