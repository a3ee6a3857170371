"""Fixtures, timing knobs and helpers shared by the queue contract's test groups."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from nuvom_kernel.backends import BackendContext, QueueBackend
from nuvom_kernel.models import Lease
from nuvom_kernel.testing.contracts._support import make_message, skip_unless_capable, wait_until

__all__ = ["QueueContractBase", "QueueFactory"]

QueueFactory = Callable[[BackendContext], QueueBackend]


class QueueContractBase:
    """Fixtures and helpers of the queue contract.

    Timing knobs are class attributes so a backend with coarse timers (e.g. whole seconds)
    can widen them in its subclass; the defaults keep a run to a few seconds.
    """

    #: Visibility timeout of backends built for the lease-expiry tests.
    short_visibility_secs: ClassVar[float] = 0.3
    #: Retry / availability delay used by the delayed-job tests.
    delay_secs: ClassVar[float] = 0.3
    #: Lease length in the extend test; extensions come every fifth of it, so a pause of
    #: most of it on a loaded machine must not be mistaken for a broken extend.
    extend_visibility_secs: ClassVar[float] = 0.5
    #: How long a consumer is given to reach its wait before a producer pushes.
    settle_secs: ClassVar[float] = 0.2
    #: Deadline for anything that must eventually happen (never a fixed sleep).
    patience_secs: ClassVar[float] = 5.0
    #: Messages handed to concurrent consumers.
    concurrency_messages: ClassVar[int] = 200
    consumer_threads: ClassVar[int] = 4
    consumer_processes: ClassVar[int] = 3

    # --- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def make_queue_backend(self) -> QueueFactory:
        """Override: return ``(BackendContext) -> QueueBackend``, usually a BackendFactory."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the make_queue_backend fixture: return "
            "BackendFactory(YourQueue, settings) (see docs/writing_plugins.md)")

    @pytest.fixture
    def backend_context(self, tmp_path: Path) -> BackendContext:
        """The context backends are built with; one ``data_dir`` per test, shared by every
        instance the test builds (so they see the same storage)."""
        return BackendContext(data_dir=tmp_path / "nuvom-data", visibility_timeout_secs=30.0,
                              namespace=f"nuvom-test-{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def build_queue(
        self, make_queue_backend: QueueFactory, backend_context: BackendContext
    ) -> Iterator[Callable[..., QueueBackend]]:
        """``build_queue(visibility_timeout_secs=...)`` builds another instance over the same
        storage; all are closed after the test, the last one clearing the shared storage."""
        built: list[QueueBackend] = []

        def build(**context_changes: Any) -> QueueBackend:
            backend = make_queue_backend(attrs.evolve(backend_context, **context_changes))
            built.append(backend)
            wanted = context_changes.get("visibility_timeout_secs")
            if wanted is not None and backend.visibility_timeout_secs != wanted:
                # said at once: the lease tests would only time out, naming no cause
                raise AssertionError(
                    f"the backend was built with context.visibility_timeout_secs={wanted}, "
                    f"but its visibility_timeout_secs is {backend.visibility_timeout_secs}. "
                    "Fix: from_settings passes context.visibility_timeout_secs to "
                    "super().__init__ (docs/writing_plugins.md)")
            return backend

        yield build
        if built:
            try:
                built[-1].clear()
            finally:
                for backend in reversed(built):
                    backend.close()

    @pytest.fixture
    def queue_backend(self, build_queue: Callable[..., QueueBackend]) -> QueueBackend:
        backend = build_queue()
        backend.clear()
        return backend

    @pytest.fixture(autouse=True)
    def _capability_gate(self, request: pytest.FixtureRequest,
                         queue_backend: QueueBackend) -> None:
        skip_unless_capable(request, queue_backend)

    # --- helpers --------------------------------------------------------------------------

    def _claim_one(self, backend: QueueBackend, queues: list[str] | None = None) -> Lease:
        leases = backend.claim(1, queues)
        assert len(leases) == 1, f"expected one available message, claim(1) returned {leases}"
        return leases[0]

    def _claim_exactly(self, backend: QueueBackend, n: int, why: str) -> dict[str, Lease]:
        """Lease ``n`` messages (a backend may hand a batch out in pieces, as its storage
        becomes visible), keyed by job id; fail saying ``why`` if they never all come."""
        leases = wait_until(lambda: backend.claim(n), self.patience_secs, why)
        deadline = time.monotonic() + self.patience_secs
        while len(leases) < n and time.monotonic() < deadline:
            leases += backend.claim(n - len(leases))
        assert len(leases) == n, f"{why}: claimed {len(leases)} of {n}"
        return {lease.id: lease for lease in leases}

    def _stale_beside_current(self, backend: QueueBackend, lease: Lease
                              ) -> tuple[Lease, Lease]:
        """``lease`` made stale (released, its job claimed again) and the current lease of
        its job: what one worker can hold at once, after its first run lost the lease."""
        assert backend.release(lease) is True
        current = self._claim_one(backend)
        assert current.id == lease.id and current.token != lease.token
        return lease, current

    def _nothing_claimable(self, backend: QueueBackend, why: str) -> None:
        leases = backend.claim(10)
        assert leases == [], f"{why}, but claim() handed out {[le.id for le in leases]}"

    def _hidden_until(self, backend: QueueBackend, hidden_until: float, why: str) -> None:
        """Check nothing is claimable, but only while the ``time.monotonic()`` deadline
        ``hidden_until`` is comfortably ahead: on a machine that stalled past it, an
        answer either way would prove nothing, and claiming would disturb the test."""
        if time.monotonic() < hidden_until - 0.05:
            self._nothing_claimable(backend, why)

    def _dequeue_in_thread(self, consumer: QueueBackend, producer: QueueBackend
                           ) -> tuple[Lease | None, float, float]:
        """Start a consumer blocked in ``dequeue(timeout=...)``, enqueue from another
        instance or thread, and return (lease, enqueue time, pickup time)."""
        got: dict[str, Any] = {}
        timeout = max(self.patience_secs * 2, 1.0)  # long enough never to be what ends it

        def consume() -> None:
            got["lease"] = consumer.dequeue(timeout=timeout)
            got["at"] = time.monotonic()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(self.settle_secs)  # let it reach its wait; correctness does not need it
        assert "at" not in got, f"dequeue(timeout={timeout}) returned before anything was enqueued"
        message = make_message()
        pushed_at = time.monotonic()
        producer.enqueue(message)
        wait_until(lambda: "at" in got, self.patience_secs,
                   "dequeue did not return after a message arrived")
        thread.join(self.patience_secs)
        lease = got["lease"]
        assert lease is not None and lease.id == message.id
        return lease, pushed_at, got["at"]
