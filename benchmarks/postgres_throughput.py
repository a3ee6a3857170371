"""Throughput and pickup latency of Nuvom's PostgreSQL backend, side by side with procrastinate.

Run from the repository root (a PostgreSQL server at ``NUVOM_TEST_POSTGRES_DSN``, default
``host=127.0.0.1 user=postgres dbname=postgres``; the role must be allowed to create
databases)::

    pip install -e './nuvom_plugins_postgres[bench]'     # procrastinate, the PostgreSQL peer
    python -m benchmarks.postgres_throughput --repeat 3
    python -m benchmarks.postgres_throughput --backlog 1000000   # the backlog soak instead

The same measurements as :mod:`benchmarks.throughput` (its functions are reused: enqueue one
at a time and in one batch, drain, pickup latency of jobs sent 20 ms apart to an idle
worker, idle CPU), 2 worker threads in a separate process on each side (``nuvom runworker
-w 2``, ``procrastinate worker --concurrency 2``), plus a Nuvom-on-SQLite row
(``synchronous=NORMAL``) in the same run for scale. Every Nuvom-PostgreSQL measurement uses
a schema of its own and every procrastinate one a database of its own (procrastinate's
schema lives in ``public``), dropped afterwards. Numbers are only comparable within one run.

``--backlog N`` instead ``.map()``s N jobs (chunks of 100,000), drains them with one
2-thread worker and reports the drain rate of every 100,000 jobs and the ``jobs`` table's
sizes (table, each index, total) before and after the drain. On a server with
``autovacuum = off`` it runs ``VACUUM`` on the table every 30 s itself (see ``_Vacuumer``).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.throughput import (
    RESULTS_DIR,
    NuvomSystem,
    System,
    _env,
    _median_rows,
    _size,
    _stop,
    _wait_for,
    environment,
    measure_drain,
    measure_idle_and_latency,
    measure_map,
    table,
)

DSN = os.environ.get("NUVOM_TEST_POSTGRES_DSN", "host=127.0.0.1 user=postgres dbname=postgres")
_NUVOM_CLI = "import sys; from nuvom_kernel.cli import main; sys.argv[0] = 'nuvom'; main()"


def _admin(statement: sql.Composable | str, dsn: str = DSN) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def _ident(text: str) -> str:
    return re.sub("[^a-z0-9_]", "_", text.lower())


def _synchronous_commit() -> str:
    with psycopg.connect(DSN, autocommit=True) as conn:
        return f"sc={conn.execute('SHOW synchronous_commit').fetchone()[0]}"  # type: ignore[index]


class _OpenedNuvomSystem(NuvomSystem):
    """A Nuvom system whose queue backend is built before anything is timed.

    Why: the kernel builds its backends on first use, so without this the timed ``.map()``
    (one call) would include opening the pool, the LISTEN connection and creating the
    schema (~30-100 ms here, up to a fifth of a 10,000-job ``.map()``), while
    procrastinate's side opens its app and applies its schema in ``__init__``, outside
    every timing. Both sides now start timing connected, with their tables in place.
    """

    #: ``--cold-open``: leave the backend to the first timed call, as before 2026-12-03.
    cold_open = False

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        if not self.cold_open:
            self.kernel.queue  # noqa: B018 - built (connected, migrated) here, not when timed


class NuvomPostgresSystem(_OpenedNuvomSystem):
    """Nuvom with both backends ``postgres``, in a schema of its own."""

    label = "nuvom-postgres"
    backend = "postgres"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        self.schema = _ident(f"nuvom_bench_{os.getpid()}_{workdir.parent.name}_{workdir.name}")
        super().__init__(workdir, sync, results)

    def plugin_settings(self) -> str:
        return f'dsn = {json.dumps(DSN)}\nschema = "{self.schema}"\n'

    def close(self) -> None:
        super().close()
        _admin(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))


class ProcrastinateSystem(System):
    """procrastinate 3 in a database of its own (its schema is applied to ``public``)."""

    label = "procrastinate"

    def __init__(self, workdir: Path, sync: str, results: bool) -> None:
        super().__init__(workdir, sync, results)
        self.database = _ident(f"nuvom_bench_proc_{os.getpid()}_{workdir.parent.name}_"
                               f"{workdir.name}")
        _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        info = psycopg.conninfo.conninfo_to_dict(DSN)
        info["dbname"] = self.database
        self.dsn = psycopg.conninfo.make_conninfo(**info)
        self.proc_env = {"BENCH_PG_DSN": self.dsn}
        os.environ.update(self.proc_env)
        from benchmarks import bench_procrastinate

        self.mod = importlib.reload(bench_procrastinate)  # an App on this database
        self.mod.app.open()
        self.mod.app.schema_manager.apply_schema()

    def enqueue_one(self, n: int) -> None:
        add = self.mod.add
        for _ in range(n):
            add.defer(x=1, y=2)

    def enqueue_map(self, n: int) -> None:
        self.mod.add.batch_defer(*([{"x": 1, "y": 2}] * n))

    def enqueue_stamp(self) -> None:
        self.mod.stamp.defer(enqueued_at=time.time())

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "procrastinate", "--app=benchmarks.bench_procrastinate.app",
             "worker", "--concurrency", "2"],
            cwd=self.workdir, env=_env({**self.bench_env, **self.proc_env}),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.mod.app.close()
        for key in self.proc_env:
            os.environ.pop(key, None)
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(self.database)))


class NuvomSqliteSystem(_OpenedNuvomSystem):
    label = "nuvom-sqlite"


SYSTEMS: dict[str, type[System]] = {"nuvom-postgres": NuvomPostgresSystem,
                                    "procrastinate": ProcrastinateSystem,
                                    "nuvom-sqlite": NuvomSqliteSystem}


def run_one(name: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """One row: drain without (and, for Nuvom, with) results, the batch enqueue, pickup
    latency and idle CPU, each on fresh storage."""
    cls = SYSTEMS[name]
    sync = "NORMAL" if name == "nuvom-sqlite" else _synchronous_commit()
    row: dict[str, Any] = {"system": name, "synchronous": sync}
    counter = iter(range(1000))

    def measure(results: bool, what: Any) -> Any:
        system = cls(base / f"{_ident(name)}_{next(counter)}", sync, results)
        try:
            return what(system)
        finally:
            system.close()

    if args.map_only:
        row["map_per_s"] = measure(False, lambda s: measure_map(s, args.jobs))
        return row
    drain = measure(False, lambda s: measure_drain(s, args.jobs))
    row.update(enqueue_per_s=drain["enqueue_per_s"], drain_per_s=drain["drain_per_s"],
               startup_s=drain["startup_s"])
    if name != "procrastinate":  # it stores no return values
        row["drain_results_per_s"] = measure(
            True, lambda s: measure_drain(s, args.jobs))["drain_per_s"]
    row["map_per_s"] = measure(False, lambda s: measure_map(s, args.jobs))
    row.update(measure(False, lambda s: measure_idle_and_latency(
        s, args.latency_jobs, args.idle_secs)))
    return row


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Nuvom-PostgreSQL ÷ procrastinate, where higher is better; pickup side by side."""
    by = {r["system"]: r for r in rows}
    n, p = by.get("nuvom-postgres"), by.get("procrastinate")
    if not n or not p:
        return []
    parts = [f"{label} x{n[key] / p[key]:.2f}" for key, label in
             (("enqueue_per_s", "enqueue"), ("map_per_s", ".map()/batch_defer"),
              ("drain_per_s", "drain")) if p.get(key) and n.get(key)]
    if "latency_p50_ms" in n and "latency_p50_ms" in p:
        parts.append(f"pickup p50 {n['latency_p50_ms']:.1f} vs {p['latency_p50_ms']:.1f} ms")
    return ["nuvom-postgres/procrastinate: " + ", ".join(parts)]


# --- the backlog soak -------------------------------------------------------------------


def _sizes(schema: str) -> dict[str, int]:
    """Bytes of ``<schema>.jobs``: heap, each index, the total (TOAST included); and the
    total of ``<schema>.results`` (one record per finished job)."""
    table_name = f"{schema}.jobs"
    with psycopg.connect(DSN, autocommit=True) as conn:
        heap, total = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
            (table_name, table_name)).fetchone()  # type: ignore[misc]
        out = {"heap": int(heap)}
        for name, size in conn.execute(
                "SELECT c.relname, pg_relation_size(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass "
                "ORDER BY c.relname", (table_name,)):
            out[str(name)] = int(size)
        out["total"] = int(total)
        results = f"{schema}.results"
        out["results total"] = int(conn.execute(  # type: ignore[index]
            "SELECT pg_total_relation_size(%s::regclass)", (results,)).fetchone()[0])
    return out


def _autovacuum_on() -> bool:
    with psycopg.connect(DSN, autocommit=True) as conn:
        return conn.execute("SHOW autovacuum").fetchone()[0] == "on"  # type: ignore[index]


class _Vacuumer(threading.Thread):
    """``VACUUM <schema>.jobs`` every ``every`` seconds: stands in for autovacuum on a server
    that has it off (``autovacuum = off``). Why the backlog needs it: every claim moves a
    row out of the ready index, leaving a dead entry at the index's head; until vacuum
    removes them, each claim steps over all of them (at 400,000 dead rows, 1,587 buffers and
    7 ms per claim), so the drain decays."""

    def __init__(self, schema: str, every: float = 30.0) -> None:
        super().__init__(name="bench-vacuum", daemon=True)
        self.table, self.every = f"{schema}.jobs", every
        self.stop = threading.Event()
        self.runs = 0

    def run(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not self.stop.wait(self.every):
                conn.execute(sql.SQL("VACUUM {}").format(
                    sql.Identifier(*self.table.split("."))))
                self.runs += 1


def run_backlog(n: int, base: Path, step: int = 100_000) -> dict[str, Any]:
    """``.map()`` ``n`` jobs, drain them with one 2-thread worker, time every ``step``
    (a tenth of ``n`` when ``n`` is smaller than ten steps)."""
    step = min(step, max(n // 10, 1))
    targets = list(range(step, n + 1, step))
    if targets[-1] != n:
        targets.append(n)
    system = NuvomPostgresSystem(base / "backlog", "", False)
    try:
        started = time.perf_counter()
        for start in range(0, n, step):
            system.enqueue_map(min(step, n - start))
        map_secs = time.perf_counter() - started
        before = _sizes(system.schema)
        vacuumer = None if _autovacuum_on() else _Vacuumer(system.schema)
        if vacuumer is not None:
            print("  autovacuum is off on this server: VACUUM every 30 s instead",
                  file=sys.stderr, flush=True)
            vacuumer.start()
        proc = system.worker()
        marks: list[tuple[int, float]] = []
        try:
            _wait_for(lambda: _size(system.mark) > 0, 60, "the first job", proc)
            marks.append((_size(system.mark), time.perf_counter()))
            for target in targets:
                while _size(system.mark) < target:  # coarse polling: the drain takes minutes
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited with {proc.returncode}")
                    time.sleep(0.05)
                marks.append((_size(system.mark), time.perf_counter()))
                print(f"  {marks[-1][0]:,} done, "
                      f"{(marks[-1][0] - marks[-2][0]) / (marks[-1][1] - marks[-2][1]):,.0f}/s",
                      file=sys.stderr, flush=True)
        finally:
            _stop(proc)
            if vacuumer is not None:
                vacuumer.stop.set()
                vacuumer.join()
        after = _sizes(system.schema)
    finally:
        system.close()
    rates = [(done, (done - d0) / (t - t0))
             for (d0, t0), (done, t) in itertools.pairwise(marks)]
    return {"jobs": n, "step": step, "map_per_s": n / map_secs, "rates": rates,
            "manual_vacuums": None if vacuumer is None else vacuumer.runs,
            "drain_per_s": (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1]),
            "sizes_before": before, "sizes_after": after}


def backlog_report(result: dict[str, Any]) -> str:
    vacuums = result.get("manual_vacuums")
    lines = [f"{result['jobs']:,} jobs .map()ed at {result['map_per_s']:,.0f}/s; "
             f"drained at {result['drain_per_s']:,.0f}/s overall"
             + ("" if vacuums is None else
                f" (autovacuum off: {vacuums} VACUUM runs by the benchmark)"), "",
             f"| jobs done | drain/s over the last {result['step']:,} |", "|---:|---:|"]
    lines += [f"| {done:,} | {rate:,.0f} |" for done, rate in result["rates"]]
    lines += ["", "| relation | before drain | after drain |", "|---|---:|---:|"]
    for key in result["sizes_before"]:
        lines.append(f"| {key} | {result['sizes_before'][key] / 2**20:,.1f} MB | "
                     f"{result['sizes_after'].get(key, 0) / 2**20:,.1f} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--idle-secs", type=float, default=3.0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--backlog", type=int, default=0, metavar="N",
                        help="instead: .map() N jobs, drain them, report per 100k and sizes")
    parser.add_argument("--map-only", action="store_true",
                        help="measure only .map()/batch_defer (a short run for push work)")
    parser.add_argument("--cold-open", action="store_true",
                        help="time Nuvom's backend opening (pool, schema) inside its first "
                             "call, as runs before 2026-12-03 did")
    parser.add_argument("--json", action="store_true",
                        help="also write the rows to benchmarks/results/")
    args = parser.parse_args(argv)
    _OpenedNuvomSystem.cold_open = args.cold_open
    env = environment()
    try:
        from importlib.metadata import version

        env.update({"psycopg": version("psycopg"),
                    "nuvom-plugins-postgres": version("nuvom-plugins-postgres")})
        if "procrastinate" in args.systems:
            env["procrastinate"] = version("procrastinate")
        with psycopg.connect(DSN) as conn:
            env["postgres"] = conn.info.server_version
    except Exception:  # pragma: no cover - informational only
        pass
    if args.backlog:
        with tempfile.TemporaryDirectory(prefix="nuvom-bench-pg-") as tmp:
            result = run_backlog(args.backlog, Path(tmp))
        print("\nbacklog, 2 worker threads; " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(backlog_report(result))
        if args.json:
            RESULTS_DIR.mkdir(exist_ok=True)
            out = RESULTS_DIR / f"postgres-backlog-{time.strftime('%Y%m%d-%H%M%S')}.json"
            out.write_text(json.dumps({"args": vars(args), "environment": env,
                                       "result": result}, indent=2))
            print(f"wrote {out}")
        return 0
    if "procrastinate" in args.systems:
        try:
            import procrastinate  # noqa: F401
        except ImportError:
            parser.error("procrastinate is not installed: pip install -e "
                         "'./nuvom_plugins_postgres[bench]' (or pass --systems without it)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="nuvom-bench-pg-") as tmp:
        for attempt in range(args.repeat):
            rows = []
            for name in args.systems:
                print(f"[run {attempt + 1}/{args.repeat}] {name} ...", file=sys.stderr,
                      flush=True)
                rows.append(run_one(name, args, Path(tmp) / f"r{attempt}"))
            runs.append(rows)
    rows = _median_rows(runs)
    print(f"\n{args.jobs:,} jobs, 2 worker threads, {args.latency_jobs} latency jobs; "
          f"medians of {args.repeat} run(s); " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(table(rows))
    for line in ratios(rows):
        print(line)
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"postgres-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": vars(args), "environment": env, "rows": rows,
                                   "runs": runs}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
