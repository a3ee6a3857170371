"""Kernel CPU per job: what the worker itself costs, with a task that does nothing.

Run from the repository root::

    python -m benchmarks.overhead                      # memory and sqlite, medians of 3
    python -m benchmarks.overhead --backend memory --profile   # + where the time goes
    python -m benchmarks.overhead --no-results         # tasks with store_result=False

One process: ``--jobs`` no-op jobs are enqueued with ``.map()``, then a started
``Worker(workers=--workers)`` (default 2) drains them, its heap frozen as ``Worker.run`` freezes
it (:func:`nuvom_kernel.worker.heap.frozen_heap`). Reported per backend:

* **µs CPU/job**: the process's CPU time (all threads, ``time.process_time``) during the
  drain, divided by the jobs: claim → decode → call → encode → record → ack, plus the
  backend's own work (none to speak of on ``memory``);
* **jobs/s**: the same drain by the wall clock.

The task is ``noop`` in this module (no I/O, returns ``None``); results are stored, as with
``@task``'s default. ``--profile`` (needs ``pip install yappi``, which profiles every
thread) prints the functions with the most own time in one extra run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nuvom_kernel import task
from nuvom_kernel.config import load_config
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.worker import Worker
from nuvom_kernel.worker.heap import frozen_heap

BACKENDS = {"memory": ("memory", "memory"), "sqlite": ("sqlite", "sqlite")}


@task
def noop(i: int) -> None:
    """Nothing at all: what is left is the kernel's (and the backend's) cost."""


@task(store_result=False)
def noop_quiet(i: int) -> None:
    """``noop`` whose value is not kept (``--no-results``): only its terminal state is."""


def _kernel(backend: str, workdir: Path) -> Kernel:
    queue, results = BACKENDS[backend]
    environ = {"NUVOM_QUEUE_BACKEND": queue, "NUVOM_RESULT_BACKEND": results,
               "NUVOM_DATA_DIR": str(workdir / ".nuvom"), "NUVOM_LOG_LEVEL": "WARNING"}
    return Kernel(load_config(workdir, environ), environ=environ)


def drain(backend: str, jobs: int, profile: bool = False, workers: int = 2,
          results: bool = True) -> dict[str, Any]:
    """Enqueue ``jobs`` no-ops, drain them with ``workers`` threads; CPU and wall time."""
    fn = noop if results else noop_quiet
    with tempfile.TemporaryDirectory(prefix="nuvom-overhead-") as tmp:
        kernel = _kernel(backend, Path(tmp))
        with use_kernel(kernel):
            for start in range(0, jobs, 1000):
                fn.map([(i,) for i in range(start, min(jobs, start + 1000))])
            worker = Worker(kernel, workers=workers)
            with frozen_heap():  # as `nuvom runworker` (Worker.run) runs
                if profile:
                    import yappi  # type: ignore[import-untyped]

                    yappi.set_clock_type("cpu")
                    yappi.start()
                cpu, wall = time.process_time(), time.perf_counter()
                worker.start()
                deadline = time.monotonic() + 600
                while worker.processed < jobs:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{worker.processed} of {jobs} jobs done after "
                                           "600 s")
                    time.sleep(0.005)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                if profile:
                    yappi.stop()
                worker.stop()
                worker.join()
            kernel.close()
    row = {"backend": backend, "results": results, "jobs": jobs, "us_cpu_per_job": cpu / jobs * 1e6,
           "jobs_per_s": jobs / wall}
    if profile:
        stats = yappi.get_func_stats()
        stats.sort("tsub")
        print(f"\n{backend}: most own CPU time ({jobs} jobs)")
        for fn in list(stats)[:25]:
            print(f"  {fn.tsub / jobs * 1e6:7.2f} µs/job  {fn.ncall:>8}  "
                  f"{fn.module.rsplit('/', 2)[-1] if fn.module else ''}:{fn.lineno} {fn.name}")
        yappi.clear_stats()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", nargs="+", choices=sorted(BACKENDS),
                        default=["memory", "sqlite"])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-results", action="store_true",
                        help="the task has store_result=False (its terminal state is kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = not args.no_results
    rows = []
    for backend in args.backend:
        runs = [drain(backend, args.jobs, workers=args.workers, results=results)
                for _ in range(args.repeat)]
        rows.append({"backend": backend, "jobs": args.jobs,
                     "us_cpu_per_job": statistics.median(r["us_cpu_per_job"] for r in runs),
                     "jobs_per_s": statistics.median(r["jobs_per_s"] for r in runs),
                     "runs": runs})
        if args.profile:
            drain(backend, args.jobs, profile=True, workers=args.workers, results=results)
    print(f"\n{'backend':<8} {'µs CPU/job':>11} {'jobs/s':>9}   (median of {args.repeat}, "
          f"{args.jobs} no-op jobs, {args.workers} threads, "
          f"{'results stored' if results else 'store_result=False'})")
    for row in rows:
        print(f"{row['backend']:<8} {row['us_cpu_per_job']:>11.1f} {row['jobs_per_s']:>9,.0f}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
