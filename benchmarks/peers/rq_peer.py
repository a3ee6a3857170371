"""RQ with ``SimpleWorker`` (no fork per job), 2 of them:
``rq worker-pool <queue> -n 2 -w rq.worker.SimpleWorker -q``.

Why a pool of 2 processes: an RQ worker runs one job at a time (RQ 3 has no threaded
worker), so 2 concurrent jobs take 2 worker processes, and ``worker-pool`` is RQ's own way
to run them. Why ``SimpleWorker``: the default worker forks per job (~12 ms of CPU each on
this machine), which would measure ``fork()`` rather than the queue.

Results off is ``result_ttl=0``; on is RQ's default (``result_ttl`` 500 s). The batch API
is ``Queue.enqueue_many`` (one pipeline). RQ has no key prefix (every key starts with
``rq:``), so it runs in a database of its own: ``BENCH_RQ_DB`` (default 13) on the same
server, whose ``rq:*`` keys are deleted after each measurement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from benchmarks.peers.common import delete_keys, url_with_db
from benchmarks.throughput import System, _env

RQ_URL = url_with_db(int(os.environ.get("BENCH_RQ_DB", "13")))


class RQSystem(System):
    label = "rq"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        from rq import Queue

        from benchmarks.peers import rq_app

        self.tasks = rq_app
        self.queue_name = f"nuvom-bench-{os.getpid()}-{workdir.name}"
        self.conn = redis.Redis.from_url(RQ_URL)
        self.queue = Queue(self.queue_name, connection=self.conn)
        self.job_opts = {} if results else {"result_ttl": 0}

    def enqueue_one(self, n: int) -> None:
        enqueue, add, opts = self.queue.enqueue, self.tasks.add, self.job_opts
        for _ in range(n):
            enqueue(add, 1, 2, **opts)

    def enqueue_map(self, n: int) -> None:
        prepare, add, opts = self.queue.prepare_data, self.tasks.add, self.job_opts
        self.queue.enqueue_many([prepare(add, (1, 2), **opts) for _ in range(n)])

    def enqueue_stamp(self) -> None:
        self.queue.enqueue(self.tasks.stamp, time.time(), result_ttl=0)

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker-pool", self.queue_name, "-n", "2",
             "-w", "rq.worker.SimpleWorker", "-u", RQ_URL, "-q"],
            cwd=self.workdir, env=_env(self.bench_env),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.conn.close()
        delete_keys("rq:*", RQ_URL)
