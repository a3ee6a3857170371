"""The dispatcher: the worker's one claimer, and the guard that stops the worker when it fails.

It decides when to claim and what a claim must be: nothing while the event loop is blocked,
the store refuses outcomes or the settler is behind (:data:`SETTLE_BACKLOG`); a failing
backend backed off; a claim that is not a list of leases ends the worker (:class:`_BadClaim`).
Separate from :mod:`.pool`, which builds, starts and stops the threads around it, because
these are rules of their own that change on their own. A mixin of
:class:`~nuvom_kernel.worker.pool.Worker`, not an object of its own: the loop reads the
worker's state as it did inside the class, with no attribute hop added per claim or lease.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from nuvom_kernel.errors import NuvomError, log_retried
from nuvom_kernel.models import Lease
from nuvom_kernel.worker.settle import BATCH

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.worker.aio import AsyncPool
    from nuvom_kernel.worker.settle import Settler
    from nuvom_kernel.worker.slots import Slots

__all__ = ["SETTLE_BACKLOG", "Dispatcher"]

log = logging.getLogger("nuvom.worker")

#: Most outcomes waiting for the settler before the dispatcher stops claiming: its next
#: batch, so a store that keeps up never sees it, and one that does not (each waiting
#: outcome holds its lease) bounds what a crash runs again.
SETTLE_BACKLOG = BATCH


class _BadClaim(NuvomError):
    """A queue backend's claim returned something other than a list of leases."""


class Dispatcher:
    """The claim loop of :class:`~nuvom_kernel.worker.pool.Worker`, run on its dispatcher
    thread (``_dispatch_loop``)."""

    # The worker's, set in Worker.__init__ (annotations only: nothing here at runtime).
    kernel: Kernel
    queue: QueueBackend
    queues: list[str] | None
    poll_timeout_secs: float
    settler: Settler
    slots: Slots
    aio: AsyncPool | None
    _stopping: threading.Event
    _broken: bool
    stop: Callable[[], None]
    _serve_async: Callable[[Lease], Coroutine[Any, Any, None]]

    def _dispatch_loop(self) -> None:
        """Claim while there is room, until the stop; an error of its own stops the worker.

        Why the guard: the dispatcher is the worker's only claimer, and an exception it did
        not expect (a plugin's claim returning something the kernel cannot read) ended the
        thread with a bare "Exception in thread" line. The process stayed up, answered its
        heartbeats, and ran nothing until someone killed it.
        """
        try:
            self._claim_loop()
        except BaseException as exc:
            self._broken = True
            if isinstance(exc, _BadClaim):  # says all there is to say
                log.critical("%s; stopping the worker (exit status 1)", exc)
            else:
                log.critical("the worker's dispatcher failed, so it claims nothing more: %r; "
                             "stopping the worker (exit status 1)", exc, exc_info=exc)
            self.stop()

    def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            wanted = self.slots.wait_for_room(self._stopping)
            if self.aio is not None and not self.aio.answering.is_set():
                # A coroutine blocks the loop: a job claimed now could not start (and what
                # was claimed meanwhile is given back). Claim once it answers again.
                self.aio.wait_answering(self._stopping)
                continue
            if self._stopping.is_set():
                return
            if not self.settler.storing.is_set():
                # The store refuses outcomes (down, or a full disk): a job run now could not
                # be recorded, and would hold its lease until it can. Claim once one lands.
                self.settler.storing.wait(0.2)
                continue
            if self.settler.backlog() >= SETTLE_BACKLOG:
                # Outcomes arrive faster than the store takes them: each one still holds
                # its lease, and a kill -9 runs them all again (PostgreSQL without
                # autovacuum: 21,724 finished jobs in flight, 11,135 run twice). Claim
                # once the settler catches up.
                self._stopping.wait(0.005)
                continue
            try:
                leases = self.queue.pop_batch(wanted, self.poll_timeout_secs, self.queues)
                failures = 0
            except Exception as exc:
                failures += 1
                backoff = min(0.05 * 2 ** min(failures, 6), 2.0)
                log_retried(log, exc, "queue backend %r failed to claim jobs; retrying in "
                                      "%.2f s", self.queue.name, backoff)
                self._stopping.wait(backoff)
                continue
            if not isinstance(leases, list | tuple) or not all(isinstance(x, Lease)
                                                                for x in leases):
                # Not retried: each claim would take jobs nobody can run, and each comes
                # back after its visibility timeout one delivery nearer max_deliveries.
                raise self._not_leases(leases)
            extra = self.slots.claimed(leases, wanted)
            if extra:  # no room for them now: for another worker, not to wait here
                for lease in leases[-extra:]:
                    self._put_back(lease)
                leases = leases[:-extra]
            now = time.monotonic()
            for lease in leases:
                if self._stopping.is_set():
                    self._put_back(lease)
                elif self.aio is not None:  # held until its task starts: see _serve_async
                    self.slots.hold(lease, now)
                    self.aio.submit(functools.partial(self._serve_async, lease))
                else:
                    self.slots.hand_over(lease, now)

    def _not_leases(self, got: object) -> _BadClaim:
        """The error for a claim that returned ``got``, not a list of leases: it names the
        backend, the plugin that provides it and the check that would have caught it, and
        gives back the leases among ``got`` (what else it claimed waits for its visibility
        timeout)."""
        items = list(got) if isinstance(got, list | tuple) else [got]
        for item in items:
            if isinstance(item, Lease):
                self.settler.safely("release it", item, self.queue.release, item)
        odd = next((x for x in items if not isinstance(x, Lease)), got)
        name = self.queue.name
        plugin = self.kernel.pm.provider("nuvom_register_queue_backends", name) or "?"
        shown = repr(odd)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return _BadClaim(
            f"queue backend {name!r} (plugin {plugin!r}) returned {type(got).__name__} "
            f"holding {type(odd).__name__} {shown} from claim(), not a list of "
            f"nuvom_kernel.models.Lease, so this worker claims nothing more (each claim "
            f"would take jobs it cannot run). Fix the plugin (`nuvom plugin test {name}` "
            f"checks it), or choose another backend with NUVOM_QUEUE_BACKEND")

    def _put_back(self, lease: Lease) -> None:
        """A claimed job that will not run here: release it and free its slot."""
        self.settler.safely("release it", lease, self.queue.release, lease)
        self.slots.freed()
