"""``Job.get(timeout=...)`` across a Redis restart: it waits for the store to come back, as
the worker does, instead of raising for a job that then succeeds.

A fleet hunt saw ``get(timeout=150)`` raise ``RedisUnavailableError`` for 2 of 20,000 jobs
during a 4 s outage; both jobs had succeeded. The store here is a throwaway
``redis-server`` with an append-only file (its data survives the restart)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from nuvom_kernel import task
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.testing.contracts import wait_until
from nuvom_kernel.worker import Worker


def _task() -> Any:
    """A task of its own per test, defined as it runs: the kernel's tests clear the task
    registry between tests, and a module-level task would be gone by then."""
    @task(name=f"outage.add.{uuid.uuid4().hex[:8]}")
    def add(x: int, y: int) -> int:
        return x + y

    return add


def _polls(server: RedisServer) -> int:
    """How many times the server read a job's state (``HMGET``: every poll of get() reads
    one, and nothing else here does). Counting every command instead, this test's own checks
    (each connects and asks ``INFO``) and the kernel's connecting let a loaded machine stop
    the server before get() had read the job once, and a store that never answered is one
    get() rightly gives up on at once."""
    return int(server.client().info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


@pytest.mark.parametrize("call", ["get", "get_async"])
def test_get_waits_out_a_restart_of_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              call: str) -> None:
    server = RedisServer(tmp_path, "127.0.0.1", "--appendonly", "yes", "--appendfsync",
                         "always").start()
    kernel = _kernel(tmp_path, server)
    got: list[Any] = []
    try:
        with use_kernel(kernel), caplog.at_level(logging.WARNING, logger="nuvom"):
            job = _task().delay(2, 3)  # no worker yet: get() polls a queued job
            def wait() -> Any:
                if call == "get":
                    return job.get(timeout=60)
                return asyncio.run(job.get_async(timeout=60))

            waiter = threading.Thread(target=lambda: got.append(_outcome(wait)), daemon=True)
            polls = _polls(server)
            waiter.start()  # two reads begun: the first was answered
            wait_until(lambda: _polls(server) >= polls + 2, 10, "get() never polled the store")
            server.stop()
            wait_until(lambda: "its state cannot be read now" in caplog.text or got, 30,
                       "get() neither waited for the store nor returned")
            assert not got, f"get() gave up while the store was away: {got}"
            server.start()
            worker = Worker(kernel, workers=1)
            worker.start()
            try:
                waiter.join(30)
            finally:
                worker.stop()
                worker.join()
        assert got == [5], got
        assert f"job {job.id}: its state cannot be read now" in caplog.text
    finally:
        kernel.close()
        server.stop()


def test_get_still_raises_when_the_store_never_answered(tmp_path: Path) -> None:
    """A wrong URL or a server down before the first poll is said at once, not waited for
    until the timeout (a script's misconfiguration must not look like a slow job)."""
    server = RedisServer(tmp_path).start()
    kernel = _kernel(tmp_path, server)
    try:
        with use_kernel(kernel):
            job = _task().delay(1, 1)
            server.stop()
            outcome = _outcome(lambda: job.get(timeout=60))
        assert type(outcome).__name__ == "RedisUnavailableError", outcome
    finally:
        kernel.close()
        server.stop()


def _kernel(root: Path, server: RedisServer) -> Kernel:
    return Kernel(root=root, environ={
        "NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
        "NUVOM_PLUGINS__REDIS__URL": server.url,
        "NUVOM_PLUGINS__REDIS__KEY_PREFIX": f"nuvom-get-outage-{os.getpid()}",
        "NUVOM_PLUGINS__REDIS__SOCKET_TIMEOUT_SECS": "1",
        "NUVOM_PLUGINS__REDIS__SOCKET_CONNECT_TIMEOUT_SECS": "1"})


def _outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc
