"""Dramatiq (Redis broker), its defaults but 1 process x 2 threads:
``dramatiq benchmarks.peers.dramatiq_app --processes 1 --threads 2``.

No batch enqueue: ``dramatiq.group`` sends its messages one at a time, so ``.map()`` is "-".
The Results middleware's keys are bare md5 digests (no namespace), so its backend uses a
database of its own, ``BENCH_DRAMATIQ_RESULTS_DB`` (default 12), whose digest-named keys are
deleted after each measurement.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peers.common import URL, delete_keys, url_with_db
from benchmarks.throughput import System, _env

RESULTS_URL = url_with_db(int(os.environ.get("BENCH_DRAMATIQ_RESULTS_DB", "12")))
_DIGEST = "[0-9a-f]" * 32


class DramatiqSystem(System):
    label = "dramatiq"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.namespace = f"nuvom-bench-dramatiq-{os.getpid()}-{workdir.name}"
        self.app_env = {"BENCH_REDIS_URL": URL, "BENCH_DRAMATIQ_NS": self.namespace,
                        "BENCH_DRAMATIQ_RESULTS_URL": RESULTS_URL,
                        "BENCH_RESULTS": "1" if results else "0"}
        os.environ.update(self.app_env)
        from benchmarks.peers import dramatiq_app

        self.app = importlib.reload(dramatiq_app)  # a broker for these settings

    def enqueue_one(self, n: int) -> None:
        send = self.app.add.send
        for _ in range(n):
            send(1, 2)

    def enqueue_stamp(self) -> None:
        self.app.stamp.send(time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "benchmarks.peers.dramatiq_app",
             "--processes", "1", "--threads", "2"],
            cwd=self.workdir, env=_env({**self.bench_env, **self.app_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.app.broker.close()
        for key in self.app_env:
            os.environ.pop(key, None)
        delete_keys(f"{self.namespace}:*")
        if self.results:
            delete_keys(_DIGEST, RESULTS_URL)
