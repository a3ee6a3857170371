"""Celery (Redis broker), ``--pool threads --concurrency 2``, results off (no backend,
``ignore_result``) and on (the Redis result backend).

Its batch API is ``group(...)``: ``group(add.s(1, 2) for ...).apply_async()`` sends every
job as its own message over one producer connection. ``chunks`` is not used: it packs many
calls into one message (one job), which would not be the same job count.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peers.common import URL, delete_keys
from benchmarks.throughput import System, _env


class CelerySystem(System):
    label = "celery"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.prefix = f"nuvom-bench-celery-{os.getpid()}-{workdir.name}:"
        self.app_env = {"BENCH_REDIS_URL": URL, "BENCH_CELERY_PREFIX": self.prefix,
                        "BENCH_RESULTS": "1" if results else "0"}
        os.environ.update(self.app_env)
        from benchmarks.peers import celery_app

        self.app = importlib.reload(celery_app)  # an app for these settings

    def enqueue_one(self, n: int) -> None:
        delay = self.app.add.delay
        for _ in range(n):
            delay(1, 2)

    def enqueue_map(self, n: int) -> None:
        from celery import group

        sig = self.app.add.s
        group(sig(1, 2) for _ in range(n)).apply_async()

    def enqueue_stamp(self) -> None:
        self.app.stamp.delay(time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
             "--pool", "threads", "--concurrency", "2", "--loglevel", "WARNING"],
            cwd=self.workdir, env=_env({**self.bench_env, **self.app_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.app.app.close()
        for key in self.app_env:
            os.environ.pop(key, None)
        delete_keys(f"{self.prefix}*")
