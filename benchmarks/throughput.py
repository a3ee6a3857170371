"""Throughput and pickup latency of Nuvom's SQLite backend, side by side with Huey's SqliteHuey.

Run from the repository root::

    pip install -e ./nuvom_plugins_sqlite[bench]       # Huey, the embedded peer
    python -m benchmarks.throughput --backend sqlite  # add --json to keep the numbers

Both queues do the same work per job (``bench_tasks.py``: write one byte to a marker file and
return ``x + y``) with 2 worker threads in a separate worker process, at SQLite
``synchronous=NORMAL`` and ``FULL``. Measured, per queue and durability level:

* **enqueue**: one producer, ``--jobs`` jobs one call at a time (and ``.map()`` for Nuvom);
* **drain**: the worker starts after the enqueue; jobs/s from the first job seen done to the
  last (worker start-up excluded), with results stored and not stored;
* **pickup latency**: a worker idle for 1 s gets ``--latency-jobs`` jobs enqueued one at a
  time, 20 ms apart; latency = the job's start minus the time taken just before the enqueue
  call (so it includes the enqueue itself);
* **idle CPU**: then, after 1 s more, the waiting worker process's CPU time over
  ``--idle-secs``, in % of one core (Linux ``/proc``; 10 ms clock ticks, so ~0.3 % is the
  resolution over 3 s).

Numbers are only comparable within one run on one machine: quote the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_NUVOM_CLI = "import sys; from nuvom_kernel.cli import main; sys.argv[0] = 'nuvom'; main()"


# --- processes --------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUVOM_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _stamps(path: Path) -> list[float]:
    try:
        return [float(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


# --- the two systems under test ---------------------------------------------------------


class System:
    """One queue under test, set up afresh in ``workdir`` for each measurement."""

    label = ""

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        self.workdir, self.sync, self.results = workdir, sync, results
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / "queue.db"
        self.mark = workdir / "mark"
        self.stamps = workdir / "stamps"
        self.bench_env = {"BENCH_MARK": str(self.mark), "BENCH_STAMPS": str(self.stamps)}

    def enqueue_one(self, n: int) -> None:
        raise NotImplementedError

    def enqueue_map(self, n: int) -> None:
        raise NotImplementedError

    def enqueue_stamp(self) -> None:
        raise NotImplementedError

    def worker(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NuvomSystem(System):
    """Nuvom with both backends ``backend``; a subclass for another backend names it and
    gives its ``[plugins.<backend>]`` table (the Redis and PostgreSQL benchmarks do)."""

    label = "nuvom"
    backend = "sqlite"

    def plugin_settings(self) -> str:
        return f'path = {json.dumps(str(self.db))}\nsynchronous = "{self.sync}"\n'

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        (workdir / ".nuvom_plugins.toml").write_text(
            f'[settings]\nqueue_backend = "{self.backend}"\n'
            f'result_backend = "{self.backend}"\nmax_workers = 2\nlog_level = "WARNING"\n\n'
            f'[plugins.{self.backend}]\n{self.plugin_settings()}')
        # As a user would before starting a worker: its manifest then lists the tasks (the
        # worker warned that it knew none until the first job imported their module).
        subprocess.run([sys.executable, "-c", _NUVOM_CLI, "discover", "tasks", "--root",
                        str(ROOT), "--include", "benchmarks/bench_tasks.py"],
                       cwd=workdir, env=_env(self.bench_env), check=True,
                       stdout=subprocess.DEVNULL)
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


class HueySystem(System):
    label = "huey"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.huey_env = {"BENCH_DB": str(self.db), "BENCH_RESULTS": "1" if results else "0",
                         "BENCH_SYNC": sync}
        os.environ.update(self.huey_env)
        from benchmarks import bench_huey

        self.app = importlib.reload(bench_huey)  # a Huey instance for these settings

    def enqueue_one(self, n: int) -> None:
        add = self.app.add
        for _ in range(n):
            add(1, 2)

    def enqueue_stamp(self) -> None:
        self.app.stamp(time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "benchmarks.bench_huey.huey",
             "-w", "2", "-k", "thread", "-q"],
            cwd=self.workdir, env=_env({**self.bench_env, **self.huey_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.app.huey.storage.close()
        for key in self.huey_env:
            os.environ.pop(key, None)


SYSTEMS: dict[str, type[System]] = {"nuvom": NuvomSystem, "huey": HueySystem}


# --- measurements -----------------------------------------------------------------------


def measure_drain(system: System, jobs: int) -> dict[str, float]:
    """Enqueue ``jobs`` one at a time, then start the worker and time the drain."""
    started = time.perf_counter()
    system.enqueue_one(jobs)
    enqueue_rate = jobs / (time.perf_counter() - started)
    proc = system.worker()
    try:
        spawned = time.perf_counter()
        _wait_for(lambda: _size(system.mark) > 0, 60, "the first job", proc)
        first_at, first_done = time.perf_counter(), _size(system.mark)
        first_cpu = _cpu_secs(proc.pid)
        _wait_for(lambda: _size(system.mark) >= jobs, 600, f"{jobs} jobs", proc)
        last_at, last_cpu = time.perf_counter(), _cpu_secs(proc.pid)
    finally:
        _stop(proc)
    drained = jobs - first_done
    return {"enqueue_per_s": enqueue_rate,
            "drain_per_s": drained / (last_at - first_at) if drained else float("nan"),
            "drain_cpu_us": (last_cpu - first_cpu) / drained * 1e6 if drained else float("nan"),
            "startup_s": first_at - spawned}


def measure_map(system: System, jobs: int) -> float:
    """Jobs/s of one batch enqueue of ``jobs``, after an untimed batch of two (one job would
    take Nuvom's single-job path): connections open and statements or scripts loaded, as in
    a producer that has been running (the first call of a Nuvom kernel also builds its
    backend: ~5 ms on Redis, 2-5 % of a 10,000-job batch)."""
    system.enqueue_map(2)
    started = time.perf_counter()
    system.enqueue_map(jobs)
    return jobs / (time.perf_counter() - started)


def measure_idle_and_latency(system: System, jobs: int, idle_secs: float) -> dict[str, float]:
    """Pickup latency of jobs sent 20 ms apart to a worker idle for 1 s (the peer study's
    method), then the idle worker's CPU use."""
    proc = system.worker()
    try:
        for i in range(4):  # warm-up: imports done, connections open
            system.enqueue_stamp()
            _wait_for(lambda i=i: len(_stamps(system.stamps)) > i, 60, "warm-up", proc)
        time.sleep(1.0)
        next_at = time.perf_counter()
        for _ in range(jobs):
            next_at += 0.020
            system.enqueue_stamp()
            time.sleep(max(0.0, next_at - time.perf_counter()))
        _wait_for(lambda: len(_stamps(system.stamps)) >= jobs + 4, 60, "latency jobs", proc)
        time.sleep(1.0)
        cpu0, wall0 = _cpu_secs(proc.pid), time.perf_counter()
        time.sleep(idle_secs)
        idle_cpu = (_cpu_secs(proc.pid) - cpu0) / (time.perf_counter() - wall0) * 100
    finally:
        _stop(proc)
    stamps = _stamps(system.stamps)[4:]
    lat = sorted(stamps)
    return {"idle_cpu_pct": idle_cpu, "latency_p50_ms": _pct(lat, 50) * 1000,
            "latency_p99_ms": _pct(lat, 99) * 1000, "first_after_idle_ms": stamps[0] * 1000}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_one(name: str, sync: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    cls = SYSTEMS[name]
    row: dict[str, Any] = {"system": name, "synchronous": sync}
    counter = iter(range(1000))

    def fresh(results: bool) -> System:
        return cls(base / f"{name}-{sync}-{next(counter)}", sync, results)

    system = fresh(False)
    try:
        drain = measure_drain(system, args.jobs)
    finally:
        system.close()
    row["enqueue_per_s"] = drain["enqueue_per_s"]
    row["drain_per_s"] = drain["drain_per_s"]
    row["drain_cpu_us"] = drain["drain_cpu_us"]
    row["startup_s"] = drain["startup_s"]
    system = fresh(True)
    try:
        row["drain_results_per_s"] = measure_drain(system, args.jobs)["drain_per_s"]
    finally:
        system.close()
    if name == "nuvom":
        system = fresh(False)
        try:
            row["map_per_s"] = measure_map(system, args.jobs)
        finally:
            system.close()
    system = fresh(False)
    try:
        row.update(measure_idle_and_latency(system, args.latency_jobs, args.idle_secs))
    finally:
        system.close()
    return row


# --- report -----------------------------------------------------------------------------

COLUMNS = [
    ("system", "queue", "{}"),
    ("synchronous", "sync", "{}"),
    ("enqueue_per_s", "enqueue/s", "{:,.0f}"),
    ("map_per_s", ".map() enqueue/s", "{:,.0f}"),
    ("drain_per_s", "drain/s (no results)", "{:,.0f}"),
    ("drain_results_per_s", "drain/s (results)", "{:,.0f}"),
    ("drain_cpu_us", "drain CPU µs/job", "{:.0f}"),
    ("latency_p50_ms", "pickup p50 ms", "{:.1f}"),
    ("latency_p99_ms", "pickup p99 ms", "{:.1f}"),
    ("first_after_idle_ms", "first after idle ms", "{:.1f}"),
    ("idle_cpu_pct", "idle CPU % core", "{:.2f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into README.md)."""
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    lines = [head, rule]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-"
                 for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Nuvom ÷ Huey per durability level, for the keys where higher is better."""
    out = []
    by = {(r["system"], r["synchronous"]): r for r in rows}
    for sync in dict.fromkeys(r["synchronous"] for r in rows):
        n, h = by.get(("nuvom", sync)), by.get(("huey", sync))
        if not n or not h:
            continue
        parts = [f"{label} x{n[key] / h[key]:.2f}" for key, label in
                 (("enqueue_per_s", "enqueue"), ("drain_per_s", "drain"),
                  ("drain_results_per_s", "drain+results")) if h.get(key)]
        parts.append(f"pickup p50 {n['latency_p50_ms']:.1f} vs {h['latency_p50_ms']:.1f} ms")
        out.append(f"{sync}: nuvom/huey " + ", ".join(parts))
    return out


def _median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged = []
    for parts in zip(*runs, strict=True):
        row = dict(parts[0])
        for key in row:
            values = [p[key] for p in parts]
            if all(isinstance(v, int | float) for v in values):
                row[key] = statistics.median(values)
        merged.append(row)
    return merged


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(),
                            "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
                            "platform": platform.platform()}
    try:
        from importlib.metadata import version

        info["huey"] = version("huey")
        info["nuvom"] = version("nuvom")
        info["nuvom-plugins-sqlite"] = version("nuvom-plugins-sqlite")
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip()
    except OSError:  # pragma: no cover
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite", choices=["sqlite"],
                        help="Nuvom backend to measure (the peer is SqliteHuey).")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-secs", type=float, default=3.0)
    parser.add_argument("--sync", nargs="+", default=["NORMAL", "FULL"],
                        choices=["NORMAL", "FULL"])
    parser.add_argument("--systems", nargs="+", default=["nuvom", "huey"],
                        choices=sorted(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--json", action="store_true",
                        help=f"also write the rows to {RESULTS_DIR.relative_to(ROOT)}/")
    args = parser.parse_args(argv)
    if "huey" in args.systems:
        try:
            import huey  # noqa: F401
        except ImportError:
            parser.error("Huey is not installed: pip install -e ./nuvom_plugins_sqlite[bench] "
                         "(or pass --systems nuvom)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="nuvom-bench-") as tmp:
        for attempt in range(args.repeat):
            rows = []
            for sync in args.sync:
                for name in args.systems:
                    print(f"[run {attempt + 1}/{args.repeat}] {name} synchronous={sync} ...",
                          file=sys.stderr, flush=True)
                    rows.append(run_one(name, sync, args, Path(tmp) / f"r{attempt}"))
            runs.append(rows)
    rows = _median_rows(runs)
    env = environment()
    print(f"\n{args.jobs:,} jobs, 2 worker threads, {args.latency_jobs} latency jobs; "
          f"medians of {args.repeat} run(s); " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(table(rows))
    for line in ratios(rows):
        print(line)
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": vars(args), "environment": env, "rows": rows,
                                   "runs": runs}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
