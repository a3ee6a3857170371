"""Throughput and pickup latency of Nuvom's Redis backend, side by side with Huey's RedisHuey.

Run from the repository root (a Redis server at ``NUVOM_TEST_REDIS_URL``, default
``redis://127.0.0.1:6379/0``)::

    pip install -e './nuvom_plugins_redis[test]' huey
    python -m benchmarks.redis_throughput --repeat 3

The same measurements as :mod:`benchmarks.throughput` (its functions are reused: enqueue
one at a time and with ``.map()``, drain with and without results, pickup latency of jobs
sent 20 ms apart to an idle worker, idle CPU), on one Redis server, 2 worker threads in a
separate process on each side. Every measurement uses keys of its own (a Nuvom key prefix,
a Huey name), deleted afterwards. Numbers are only comparable within one run: quote ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.throughput import (
    RESULTS_DIR,
    System,
    _env,
    _median_rows,
    environment,
    measure_drain,
    measure_idle_and_latency,
    measure_map,
    ratios,
    table,
)

URL = os.environ.get("NUVOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_NUVOM_CLI = "import sys; from nuvom_kernel.cli import main; sys.argv[0] = 'nuvom'; main()"


def _delete(pattern: str) -> None:
    client = redis.Redis.from_url(URL)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
    finally:
        client.close()


def _persistence() -> str:
    """The server's durability, the ``sync`` column: AOF fsync policy or RDB/none."""
    client = redis.Redis.from_url(URL, decode_responses=True)
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("appendfsync"))
        config.update(client.config_get("save"))
    except redis.ResponseError:
        return "?"
    finally:
        client.close()
    if config.get("appendonly") == "yes":
        return f"aof-{config.get('appendfsync')}"
    return "rdb" if config.get("save") else "none"


class NuvomRedisSystem(System):
    label = "nuvom"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.prefix = f"nuvom-bench-{os.getpid()}-{workdir.name}"
        (workdir / ".nuvom_plugins.toml").write_text(
            '[settings]\nqueue_backend = "redis"\nresult_backend = "redis"\n'
            'max_workers = 2\nlog_level = "WARNING"\n\n'
            f'[plugins.redis]\nurl = {json.dumps(URL)}\nkey_prefix = "{self.prefix}"\n')
        from benchmarks import bench_tasks
        from nuvom_kernel.kernel import Kernel, set_kernel

        self.kernel = Kernel(root=workdir, environ={})
        set_kernel(self.kernel)
        self.tasks = bench_tasks
        self.add = bench_tasks.add if results else bench_tasks.add_nr

    def enqueue_one(self, n: int) -> None:
        add = self.add
        for _ in range(n):
            add.delay(1, 2)

    def enqueue_map(self, n: int) -> None:
        self.add.map([(1, 2)] * n)

    def enqueue_stamp(self) -> None:
        self.tasks.stamp.delay(time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", _NUVOM_CLI, "runworker", "-w", "2", "--log-level",
             "WARNING"],
            cwd=self.workdir, env=_env(self.bench_env), stdout=subprocess.DEVNULL)

    def close(self) -> None:
        from nuvom_kernel.kernel import set_kernel

        self.kernel.close()
        set_kernel(None)
        _delete(f"{self.prefix}:*")


class RedisHueySystem(System):
    label = "huey"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.name = f"nuvom-bench-huey-{os.getpid()}-{workdir.name}"
        self.huey_env = {"BENCH_REDIS_URL": URL, "BENCH_HUEY_NAME": self.name,
                         "BENCH_RESULTS": "1" if results else "0"}
        os.environ.update(self.huey_env)
        import importlib

        from benchmarks import bench_redis_huey

        self.app = importlib.reload(bench_redis_huey)  # a RedisHuey for these settings

    def enqueue_one(self, n: int) -> None:
        add = self.app.add
        for _ in range(n):
            add(1, 2)

    def enqueue_stamp(self) -> None:
        self.app.stamp(time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer",
             "benchmarks.bench_redis_huey.huey", "-w", "2", "-k", "thread", "-q"],
            cwd=self.workdir, env=_env({**self.bench_env, **self.huey_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.app.huey.storage.conn.close()
        for key in self.huey_env:
            os.environ.pop(key, None)
        _delete(f"huey.*.{re.sub('[^A-Za-z0-9_]', '', self.name)}")  # Huey's key names


SYSTEMS: dict[str, type[System]] = {"nuvom": NuvomRedisSystem, "huey": RedisHueySystem}


def run_one(name: str, sync: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """One row: drain without and with results, ``.map()`` (Nuvom), pickup and idle CPU."""
    cls = SYSTEMS[name]
    row: dict[str, Any] = {"system": name, "synchronous": sync}
    counter = iter(range(1000))

    def measure(results: bool, what: Any) -> Any:
        system = cls(base / f"{name}-{next(counter)}", sync, results)
        try:
            return what(system)
        finally:
            system.close()

    drain = measure(False, lambda s: measure_drain(s, args.jobs))
    row.update(enqueue_per_s=drain["enqueue_per_s"], drain_per_s=drain["drain_per_s"],
               startup_s=drain["startup_s"])
    row["drain_results_per_s"] = measure(
        True, lambda s: measure_drain(s, args.jobs))["drain_per_s"]
    if name == "nuvom":
        row["map_per_s"] = measure(False, lambda s: measure_map(s, args.jobs))
    row.update(measure(False, lambda s: measure_idle_and_latency(
        s, args.latency_jobs, args.idle_secs)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-secs", type=float, default=3.0)
    parser.add_argument("--systems", nargs="+", default=["nuvom", "huey"],
                        choices=sorted(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--json", action="store_true",
                        help="also write the rows to benchmarks/results/")
    args = parser.parse_args(argv)
    sync = _persistence()
    runs = []
    with tempfile.TemporaryDirectory(prefix="nuvom-bench-redis-") as tmp:
        for attempt in range(args.repeat):
            rows = []
            for name in args.systems:
                print(f"[run {attempt + 1}/{args.repeat}] {name} on redis ({sync}) ...",
                      file=sys.stderr, flush=True)
                rows.append(run_one(name, sync, args, Path(tmp) / f"r{attempt}"))
            runs.append(rows)
    rows = _median_rows(runs)
    env = environment()
    try:
        from importlib.metadata import version

        env.update({"redis-py": version("redis"), "nuvom-plugins-redis":
                    version("nuvom-plugins-redis")})
        env["redis-server"] = redis.Redis.from_url(URL).info("server")["redis_version"]
    except Exception:  # pragma: no cover - informational only
        pass
    print(f"\n{args.jobs:,} jobs, 2 worker threads, {args.latency_jobs} latency jobs; "
          f"medians of {args.repeat} run(s); " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(table(rows))
    for line in ratios(rows):
        print(line)
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"redis-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": vars(args), "environment": env, "rows": rows,
                                   "runs": runs}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
