"""SQLite page size: Nuvom on files of 2 KiB and of 4 KiB pages (SQLite's default, which
the plugin keeps), with SqliteHuey in the same rounds for reference.

Run from the repository root::

    python -m benchmarks.page_size --rounds 5 --page-sizes 2048 4096

Why a benchmark of its own: this VM's speed swings by up to 2x from one minute to the next,
so the page sizes are measured interleaved, round by round, and compared within a round.
Each round measures, on fresh files: 10,000 ``.delay()`` calls one at a time (jobs/s and the
producer's CPU µs per call), then as ``throughput.py`` does the drain of 10,000 jobs by a
``nuvom runworker -w 2`` process (results off) and one ``.map()`` of 10,000. Each file is
created with its ``PRAGMA page_size`` before the plugin opens it, and keeps that size
(WAL mode cannot change it).

Why 2 KiB was tried: a WAL commit writes every page it touched whole, and a ``.delay()``
touches one row in each of three b-trees. Measured (2026-12-04, 5 rounds): one ``.delay()``
at a time +6 % (producer CPU -4 %), ``.map()`` -8 %, drains equal: not kept.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.throughput import HueySystem, NuvomSystem, System, measure_drain, measure_map


def _system(kind: str, workdir: Path, results: bool) -> System:
    """``"huey"``, or ``"nuvom <bytes>"``: Nuvom on a file of pages of that size."""
    if kind == "huey":
        return HueySystem(workdir, "NORMAL", results)
    workdir.mkdir(parents=True)
    conn = sqlite3.connect(workdir / "queue.db")
    conn.execute(f"PRAGMA page_size = {int(kind.split()[1])}")
    conn.execute("PRAGMA journal_mode = WAL")  # the file has pages now: the size is fixed
    conn.close()
    return NuvomSystem(workdir, "NORMAL", results)


def measure_enqueue(system: System, jobs: int) -> tuple[float, float]:
    """Jobs/s and CPU µs per job of ``jobs`` calls one at a time, after 10 untimed ones
    (the file created, statements prepared). CPU time moves less with the VM's swings than
    the wall clock does."""
    system.enqueue_one(10)
    wall, cpu = time.perf_counter(), time.process_time()
    system.enqueue_one(jobs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return jobs / wall, cpu / jobs * 1e6


def one_round(kind: str, base: Path, jobs: int) -> dict[str, float]:
    system = _system(kind, base / "enqueue", False)
    try:
        rate, cpu_us = measure_enqueue(system, jobs)
    finally:
        system.close()
    system = _system(kind, base / "drain", False)
    try:
        drain = measure_drain(system, jobs)
    finally:
        system.close()
    row = {"enqueue/s": rate, "enqueue CPU µs": cpu_us, "drain/s": drain["drain_per_s"]}
    if kind != "huey":
        system = _system(kind, base / "map", False)
        try:
            row[".map()/s"] = measure_map(system, jobs)
        finally:
            system.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.page_size",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[2048, 4096])
    args = parser.parse_args(argv)
    kinds = [f"nuvom {size}" for size in args.page_sizes] + ["huey"]
    rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="nuvom-pages-") as tmp:
        for r in range(args.rounds):
            for i, kind in enumerate(kinds):
                print(f"[round {r + 1}/{args.rounds}] {kind} ...", file=sys.stderr, flush=True)
                rows[kind].append(one_round(kind, Path(tmp) / f"r{r}-{i}", args.jobs))
    print(f"\n{args.jobs:,} jobs, synchronous=NORMAL, medians of {args.rounds} interleaved "
          "rounds (each round's values in brackets)")
    keys = ("enqueue/s", "enqueue CPU µs", ".map()/s", "drain/s")
    print("| queue | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for kind, runs in rows.items():
        cells = []
        for key in keys:
            values = [run[key] for run in runs if key in run]
            fmt = "{:,.1f}" if "µs" in key else "{:,.0f}"
            cells.append(f"{fmt.format(statistics.median(values))} "
                         f"({', '.join(fmt.format(v) for v in values)})" if values else "-")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
