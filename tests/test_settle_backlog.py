"""A worker whose store settles slower than jobs finish stops claiming: each finished job
waiting for the settler still holds its lease, and a ``kill -9`` ran them all again
(PostgreSQL without autovacuum: 21,724 finished jobs in flight with 0 of 4 threads busy,
11,135 run twice). A real SQLite queue whose ``settle_many`` is made slow (a subclass, as
the chaos suite injects faults), a real worker process, its leases counted from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.worker.dispatch import SETTLE_BACKLOG
from nuvom_kernel.worker.settle import BATCH
from tests.helpers import wait_until, write_module

SLOW_QUEUE = '''
import time
from nuvom_plugins_sqlite.queue import SQLiteJobQueue


class SlowSettle(SQLiteJobQueue):
    name = "slow_settle"

    def settle_many(self, settlements, results):
        time.sleep(0.25)  # a store that takes a quarter second per batch
        return super().settle_many(settlements, results)
'''

TASKS = '''
from nuvom_kernel import task

@task
def noop(i):
    return None
'''

JOBS = 4000
PREFETCH = 64


@pytest.mark.slow
def test_a_slow_settle_bounds_the_jobs_a_worker_holds(project: Path) -> None:
    write_module(project, "slow_queue", SLOW_QUEUE)
    write_module(project, "t_backlog", TASKS)
    (project / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "slow_settle"\nresult_backend = "sqlite"\n\n'
        '[plugins]\nqueue_backend = ["slow_queue:SlowSettle"]\n')
    env = {"NUVOM_PREFETCH": str(PREFETCH)}
    kernel = Kernel(root=project, environ=env)
    with use_kernel(kernel):
        from t_backlog import noop  # type: ignore[import-not-found]

        noop.map([(i,) for i in range(JOBS)])
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(env)
    worker = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker",
                               "--workers", "4"], cwd=project, env=full,
                              stdout=(project / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    # what the worker holds: claimed ahead, running, and finished but not yet settled
    # (each settle batch takes up to BATCH, the next waits behind it)
    bound = SETTLE_BACKLOG + BATCH + PREFETCH + 4
    peak = 0
    try:
        def drained() -> bool:
            nonlocal peak
            stats = kernel.queue.stats()
            peak = max(peak, stats.in_flight)
            return stats.in_flight == 0 and kernel.queue.qsize() == 0
        wait_until(drained, timeout=120, what="the queue to drain")
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(60)
    assert peak > PREFETCH, f"the settle was never behind (peak {peak}): it shows nothing"
    assert peak <= bound, f"the worker held {peak} leases, over {bound}"
