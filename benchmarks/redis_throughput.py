"""Throughput and pickup latency of Nuvom's Redis backend, side by side with RedisHuey,
Dramatiq, Celery and RQ on the same Redis server.

Run from the repository root (a Redis server at ``NUVOM_TEST_REDIS_URL``, default
``redis://127.0.0.1:6379/0``)::

    pip install -e './nuvom_plugins_redis[bench]'      # the peers
    python -m benchmarks.redis_throughput --repeat 3 --systems nuvom huey dramatiq celery rq

The same measurements as :mod:`benchmarks.throughput` (its functions are reused: enqueue
one at a time and with the batch API, drain with and without results, pickup latency of jobs
sent 20 ms apart to an idle worker, idle CPU of the worker's whole process tree), 2
concurrent jobs in a separate worker process on each side. Each peer's adapter is in
:mod:`benchmarks.peers`. Every measurement uses keys of its own (a Nuvom key prefix, a Huey
name, a Dramatiq namespace, a Kombu key prefix, RQ's own database), deleted afterwards.
Numbers are only comparable within one run: quote ratios.
"""

from __future__ import annotations

import argparse
import importlib
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

from benchmarks.peers.common import URL, measure_idle_and_latency
from benchmarks.peers.common import delete_keys as _delete
from benchmarks.throughput import (
    RESULTS_DIR,
    NuvomSystem,
    System,
    _env,
    _median_rows,
    environment,
    measure_drain,
    measure_map,
    table,
)

_NUVOM_CLI = "import sys; from nuvom_kernel.cli import main; sys.argv[0] = 'nuvom'; main()"
#: Each peer's adapter: "module:class" under benchmarks.peers, imported only when asked for
#: (a run with ``--systems nuvom huey`` needs neither Dramatiq, Celery nor RQ installed).
PEERS = {"dramatiq": "dramatiq_peer:DramatiqSystem", "celery": "celery_peer:CelerySystem",
         "rq": "rq_peer:RQSystem"}


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


class NuvomRedisSystem(NuvomSystem):
    label = "nuvom"
    backend = "redis"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        self.prefix = f"nuvom-bench-{os.getpid()}-{workdir.name}"
        super().__init__(workdir, sync, results)

    def plugin_settings(self) -> str:
        return f'url = {json.dumps(URL)}\nkey_prefix = "{self.prefix}"\n'

    def close(self) -> None:
        super().close()
        _delete(f"{self.prefix}:*")


class RedisHueySystem(System):
    label = "huey"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.name = f"nuvom-bench-huey-{os.getpid()}-{workdir.name}"
        self.huey_env = {"BENCH_REDIS_URL": URL, "BENCH_HUEY_NAME": self.name,
                         "BENCH_RESULTS": "1" if results else "0"}
        os.environ.update(self.huey_env)
        from benchmarks import bench_redis_huey

        self.app = importlib.reload(bench_redis_huey)  # a RedisHuey for these settings

    def enqueue_one(self, n: int) -> None:
        add = self.app.add
        for _ in range(n):
            add(1, 2)

    def enqueue_map(self, n: int) -> None:
        self.app.add.map([(1, 2)] * n)  # Huey's map enqueues one task at a time

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
NAMES = ["nuvom", "huey", *PEERS]


def system_class(name: str) -> type[System]:
    """The adapter of ``name``, importing a peer's module on first use."""
    if name not in SYSTEMS:
        module, cls = PEERS[name].split(":")
        SYSTEMS[name] = getattr(importlib.import_module(f"benchmarks.peers.{module}"), cls)
    return SYSTEMS[name]


def _has_map(cls: type[System]) -> bool:
    return cls.enqueue_map is not System.enqueue_map


def run_one(name: str, sync: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """One row: drain without and with results, the batch API where the system has one,
    pickup and idle CPU."""
    cls = system_class(name)
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
    if _has_map(cls):
        row["map_per_s"] = measure(False, lambda s: measure_map(s, args.jobs))
    row.update(measure(False, lambda s: measure_idle_and_latency(
        s, args.latency_jobs, args.idle_secs)))
    return row


def peer_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Nuvom ÷ each other system (higher is better for Nuvom), one line per peer."""
    by = {r["system"]: r for r in rows}
    nuvom = by.get("nuvom")
    out = []
    for name, row in by.items():
        if nuvom is None or name == "nuvom":
            continue
        parts = [f"{label} x{nuvom[key] / row[key]:.2f}" for key, label in
                 (("enqueue_per_s", "enqueue"), ("map_per_s", ".map()"),
                  ("drain_per_s", "drain"), ("drain_results_per_s", "drain+results"))
                 if row.get(key) and nuvom.get(key)]
        parts.append(f"pickup p50 {nuvom['latency_p50_ms']:.1f} vs "
                     f"{row['latency_p50_ms']:.1f} ms, p99 {nuvom['latency_p99_ms']:.1f} vs "
                     f"{row['latency_p99_ms']:.1f} ms")
        out.append(f"nuvom/{name}: " + ", ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-secs", type=float, default=3.0)
    parser.add_argument("--systems", nargs="+", default=NAMES, choices=NAMES,
                        help="what to measure (default: all); Nuvom's ratios are taken "
                             "against each of the others")
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
    env.pop("sqlite", None)
    env.pop("nuvom-plugins-sqlite", None)
    try:
        from importlib.metadata import version

        env.update({"redis-py": version("redis"), "hiredis": version("hiredis"),
                    "nuvom-plugins-redis": version("nuvom-plugins-redis")})
        for peer in ("dramatiq", "celery", "rq"):
            if peer in args.systems:
                env[peer] = version(peer)
        env["redis-server"] = redis.Redis.from_url(URL).info("server")["redis_version"]
    except Exception:  # pragma: no cover - informational only
        pass
    print(f"\n{args.jobs:,} jobs, 2 concurrent jobs per worker, {args.latency_jobs} latency jobs; "
          f"medians of {args.repeat} run(s); " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(table(rows))
    for line in peer_ratios(rows):
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
