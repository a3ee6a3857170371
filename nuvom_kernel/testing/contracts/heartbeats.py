"""``HeartbeatContract``: the promises of a result backend declaring ``heartbeats``.

Part of :class:`~nuvom_kernel.testing.contracts.ResultBackendContract` (a base of it), so a
plugin's result backend test runs these too; a backend without the capability skips them.
They are what ``nuvom status`` relies on to list live workers: the last heartbeat of each
worker replaces the one before, every field comes back, a worker whose heartbeat expired is
gone on its own (a ``kill -9`` says nothing), and another instance on the same store (another
process, another host) sees the same list.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from nuvom_kernel.backends import ResultBackend, WorkerInfo
from nuvom_kernel.testing.contracts._support import requires, wait_until

__all__ = ["HeartbeatContract", "make_worker_info"]


def make_worker_info(worker_id: str | None = None, **fields: Any) -> WorkerInfo:
    """A heartbeat with every field filled, so a backend that drops one is caught."""
    values: dict[str, Any] = {
        "id": worker_id or f"host-a:4242:{uuid.uuid4().hex[:6]}", "host": "host-a",
        "pid": 4242, "pool": "thread", "slots": 8, "busy_slots": 3,
        "queues": ["default", "emails"], "started_at": time.time() - 60,
        "version": "0.1.0", "heartbeat_at": time.time(), "heartbeat_secs": 5.0,
        "reports": {"abandoned_threads": 1, "heartbeat_lag_secs": 0.002},
        "running": {"job-1": time.time() - 2, "job-2": time.time() - 1},
    }
    values.update(fields)
    return WorkerInfo(**values)


class HeartbeatContract:
    """Heartbeat tests; ``result_backend`` and ``build_results`` come from the result
    contract's fixtures."""

    #: A TTL short enough to wait out in a test, long enough for a slow machine's round trip.
    heartbeat_ttl_secs: float = 0.5

    @requires("heartbeats")
    def test_heartbeats_list_live_workers_with_every_field(
            self, result_backend: ResultBackend) -> None:
        first, second = make_worker_info("w-1"), make_worker_info("w-2", busy_slots=0)
        result_backend.heartbeat(second, 60)
        result_backend.heartbeat(first, 60)
        assert result_backend.live_workers() == [first, second], \
            "live_workers() returns every live worker, every field as sent, ordered by id"

    @requires("heartbeats")
    def test_a_heartbeat_replaces_the_last_one(self, result_backend: ResultBackend) -> None:
        info = make_worker_info("w-1", busy_slots=1)
        result_backend.heartbeat(info, 60)
        later = make_worker_info("w-1", busy_slots=7, heartbeat_at=info.heartbeat_at + 5)
        result_backend.heartbeat(later, 60)
        assert result_backend.live_workers() == [later], \
            "a worker is listed once, as its latest heartbeat says"

    @requires("heartbeats")
    def test_a_worker_that_stops_heartbeating_drops_out(
            self, result_backend: ResultBackend) -> None:
        result_backend.heartbeat(make_worker_info("w-dead"), self.heartbeat_ttl_secs)
        result_backend.heartbeat(make_worker_info("w-live"), 60)
        assert [w.id for w in result_backend.live_workers()] == ["w-dead", "w-live"]
        wait_until(lambda: [w.id for w in result_backend.live_workers()] == ["w-live"],
                   self.heartbeat_ttl_secs + 10,
                   "a worker whose heartbeat TTL passed must drop out of live_workers()")

    @requires("heartbeats")
    def test_forget_worker(self, result_backend: ResultBackend) -> None:
        result_backend.heartbeat(make_worker_info("w-1"), 60)
        result_backend.heartbeat(make_worker_info("w-2"), 60)
        assert result_backend.forget_worker("w-1") is True
        assert [w.id for w in result_backend.live_workers()] == ["w-2"]
        assert result_backend.forget_worker("w-1") is False, "forgetting twice finds nothing"

    @requires("heartbeats", "multiprocess_safe")
    def test_heartbeats_are_shared_through_the_store(
            self, build_results: Callable[..., ResultBackend]) -> None:
        writer, reader = build_results(), build_results()
        info = make_worker_info("w-elsewhere")
        writer.heartbeat(info, 60)
        assert reader.live_workers() == [info], \
            "another instance on the same store (another process or host) sees the worker"
