"""Each worker pool on the SQLite default, side by side with Huey's thread and process
consumers.

Run from the repository root::

    pip install -e ./nuvom_plugins_sqlite[bench]   # Huey
    python -m benchmarks.pools                     # --json to keep the numbers

Three measurements, each with the jobs enqueued first and the worker started after (start-up
excluded: the clock runs from the first job seen done to the last, counted by the marker file
of ``bench_tasks.py``):

* **no-op**: ``--jobs`` jobs that append one byte and return ``x + y`` (results stored),
  ``-w 2``: what a pool costs per job;
* **CPU-bound**: ``--cpu-jobs`` jobs of pure-Python arithmetic (``spin(--cpu-n)``, ~20 ms
  each), ``-w 2``: threads share one GIL, processes use both cores (the speed-up is
  reported);
* **awaiting**: ``--io-jobs`` jobs that each wait ``--io-secs`` (``async def`` awaiting
  ``asyncio.sleep`` for the asyncio pool, ``time.sleep`` for the others) with
  ``-w --io-jobs`` for the asyncio pool and ``-w 2`` / ``-w 50`` for threads: wall time to
  finish them all (from the first job's start, taken as ``--io-secs`` before it was seen
  done, to the last job done).

With ``--recycle N``, one more no-op row: the process pool with ``--max-tasks-per-child N``,
so each child is replaced after N jobs (what recycling costs a drain).

With ``--redis``, the same measurements on the Redis backend beside the peers that have the
same pool kinds there: Celery ``--pool prefork`` / ``threads`` (no-op and CPU-bound) and
Dramatiq's ``async def`` actors (awaiting; its AsyncIO middleware runs coroutines one per
worker thread, so it gets ``--threads min(--io-jobs, 100)``).

Numbers are only comparable within one run on one machine: quote the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.throughput import (
    _NUVOM_CLI,
    HueySystem,
    NuvomSystem,
    _env,
    _size,
    _stop,
    _wait_for,
    environment,
)


def _drain(system: Any, enqueue: Any, jobs: int, worker: Any, lead_s: float = 0.0
           ) -> dict[str, float]:
    """Jobs/s from the first job seen done to the last; ``lead_s``: how long before it was
    seen done the first job started (the awaiting jobs' wait), added to the clock."""
    enqueue()
    proc = worker()
    try:
        _wait_for(lambda: _size(system.mark) > 0, 120, "the first job", proc)
        first_at, first_done = time.perf_counter(), _size(system.mark)
        _wait_for(lambda: _size(system.mark) >= jobs, 900, f"{jobs} jobs", proc)
        elapsed = time.perf_counter() - first_at + lead_s
    finally:
        _stop(proc)
    drained = jobs - (first_done if not lead_s else 0)
    return {"per_s": drained / elapsed if drained else float("nan"),
            "wall_s": elapsed, "jobs": jobs}


def nuvom(base: Path, name: str, pool: str, workers: int, kind: str,
          args: argparse.Namespace, on_redis: bool = False,
          flags: tuple[str, ...] = ()) -> dict[str, Any]:
    if on_redis:
        from benchmarks.redis_throughput import NuvomRedisSystem

        system: Any = NuvomRedisSystem(base / name, "NORMAL", results=True)
    else:
        system = NuvomSystem(base / name, "NORMAL", results=True)
    tasks = system.tasks
    jobs, enqueue = {
        "noop": (args.jobs, lambda: system.add.map([(1, 2)] * args.jobs)),
        "cpu": (args.cpu_jobs, lambda: tasks.burn.map([args.cpu_n] * args.cpu_jobs)),
        "io": (args.io_jobs, lambda: (tasks.wait_io if pool == "asyncio" else tasks.wait_io_sync)
               .map([args.io_secs] * args.io_jobs)),
    }[kind]

    def worker() -> Any:
        import subprocess

        return subprocess.Popen(
            [sys.executable, "-c", _NUVOM_CLI, "runworker", "-w", str(workers), "--pool",
             pool, "--log-level", "WARNING", *flags],
            cwd=system.workdir, env=_env(system.bench_env), stdout=subprocess.DEVNULL)

    try:
        return {"system": " ".join(["nuvom-redis" if on_redis else "nuvom", pool, *flags]),
                "workers": workers,
                "kind": kind,
                **_drain(system, enqueue, jobs, worker,
                         args.io_secs if kind == "io" else 0.0)}
    finally:
        system.close()


def huey(base: Path, name: str, kind_of_consumer: str, kind: str,
         args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    system = HueySystem(base / name, "NORMAL", results=True)
    app = system.app
    jobs, enqueue = {
        "noop": (args.jobs, lambda: [app.add(1, 2) for _ in range(args.jobs)]),
        "cpu": (args.cpu_jobs, lambda: [app.burn(args.cpu_n) for _ in range(args.cpu_jobs)]),
    }[kind]

    def worker() -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "benchmarks.bench_huey.huey",
             "-w", "2", "-k", kind_of_consumer, "-q"],
            cwd=system.workdir, env=_env({**system.bench_env, **system.huey_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        return {"system": f"huey {kind_of_consumer}", "workers": 2, "kind": kind,
                **_drain(system, enqueue, jobs, worker)}
    finally:
        system.close()


def celery(base: Path, name: str, pool: str, kind: str, args: argparse.Namespace
           ) -> dict[str, Any]:
    """Celery on the Redis broker, ``--pool prefork|threads --concurrency 2``."""
    import subprocess

    from benchmarks.peers.celery_peer import CelerySystem

    system = CelerySystem(base / name, "NORMAL", results=False)
    app = system.app
    jobs, enqueue = {
        "noop": (args.jobs, lambda: [app.add.delay(1, 2) for _ in range(args.jobs)]),
        "cpu": (args.cpu_jobs, lambda: [app.burn.delay(args.cpu_n)
                                        for _ in range(args.cpu_jobs)]),
    }[kind]

    def worker() -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
             "--pool", pool, "--concurrency", "2", "--loglevel", "WARNING"],
            cwd=system.workdir, env=_env({**system.bench_env, **system.app_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        return {"system": f"celery {pool}", "workers": 2, "kind": kind,
                **_drain(system, enqueue, jobs, worker)}
    finally:
        system.close()


def dramatiq_async(base: Path, name: str, threads: int, args: argparse.Namespace
                   ) -> dict[str, Any]:
    """Dramatiq's ``async def`` actors (its AsyncIO middleware) on the Redis broker: each
    worker thread waits for one coroutine, so ``--threads`` bounds how many await at once."""
    import os
    import subprocess

    os.environ["BENCH_DRAMATIQ_ASYNC"] = "1"
    from benchmarks.peers.dramatiq_peer import DramatiqSystem

    system = DramatiqSystem(base / name, "NORMAL", results=False)
    app = system.app

    def worker() -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "benchmarks.peers.dramatiq_app",
             "--processes", "1", "--threads", str(threads)],
            cwd=system.workdir, env=_env({**system.bench_env, **system.app_env,
                                          "BENCH_DRAMATIQ_ASYNC": "1"}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        return {"system": "dramatiq async", "workers": threads, "kind": "io",
                **_drain(system, lambda: [app.wait_io.send(args.io_secs)
                                          for _ in range(args.io_jobs)],
                         args.io_jobs, worker, args.io_secs)}
    finally:
        system.close()
        os.environ.pop("BENCH_DRAMATIQ_ASYNC", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pools",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--cpu-jobs", type=int, default=200)
    parser.add_argument("--cpu-n", type=int, default=300_000)
    parser.add_argument("--io-jobs", type=int, default=1000)
    parser.add_argument("--io-secs", type=float, default=0.1)
    parser.add_argument("--no-huey", action="store_true", help="skip the Huey rows")
    parser.add_argument("--redis", action="store_true",
                        help="add rows on Redis: Nuvom's pools beside Celery prefork/threads "
                             "and Dramatiq async actors (pip install -e "
                             "'./nuvom_plugins_redis[bench]')")
    parser.add_argument("--recycle", type=int, default=0, metavar="N",
                        help="add a no-op row of the process pool with --max-tasks-per-child N "
                             "(what recycling children costs)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    try:
        import huey as _huey  # noqa: F401
    except ImportError:
        args.no_huey = True
    base = Path(tempfile.mkdtemp(prefix="nuvom-pools-"))
    rows: list[dict[str, Any]] = []
    plan: list[Any] = []
    for kind in ("noop", "cpu"):
        for pool in ("thread", "process", "asyncio"):
            plan.append(lambda pool=pool, kind=kind: nuvom(base, f"{pool}-{kind}", pool, 2,
                                                           kind, args))
        if not args.no_huey:
            for consumer in ("thread", "process"):
                plan.append(lambda c=consumer, kind=kind: huey(base, f"huey-{c}-{kind}", c,
                                                               kind, args))
    if args.recycle:
        plan.append(lambda: nuvom(base, "process-recycle-noop", "process", 2, "noop", args,
                                  flags=("--max-tasks-per-child", str(args.recycle))))
    for pool, workers in (("asyncio", args.io_jobs), ("thread", 2), ("thread", 50),
                          ("process", 2)):
        plan.append(lambda pool=pool, w=workers: nuvom(base, f"{pool}-{w}-io", pool, w,
                                                       "io", args))
    if args.redis:
        for kind in ("noop", "cpu"):
            for pool in ("thread", "process"):
                plan.append(lambda pool=pool, kind=kind: nuvom(
                    base, f"redis-{pool}-{kind}", pool, 2, kind, args, on_redis=True))
            for pool in ("threads", "prefork"):
                plan.append(lambda pool=pool, kind=kind: celery(
                    base, f"celery-{pool}-{kind}", pool, kind, args))
        plan.append(lambda: nuvom(base, "redis-asyncio-io", "asyncio", args.io_jobs, "io",
                                  args, on_redis=True))
        plan.append(lambda: dramatiq_async(base, "dramatiq-io", min(args.io_jobs, 100), args))
    for step in plan:
        row = step()
        rows.append(row)
        print(f"{row['kind']:<5} {row['system']:<20} -w {row['workers']:<5} "
              f"{row['per_s']:9.1f} jobs/s  {row['wall_s']:7.2f} s", flush=True)
    by = {(r["kind"], r["system"], r["workers"]): r for r in rows}
    thread_cpu, process_cpu = by[("cpu", "nuvom thread", 2)], by[("cpu", "nuvom process", 2)]
    print(f"\nCPU-bound speed-up, process ÷ thread pool: "
          f"x{process_cpu['per_s'] / thread_cpu['per_s']:.2f}")
    if args.json:
        print(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
