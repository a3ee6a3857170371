"""The producer's hot path on SQLite: CPU per ``.delay()`` and ``.map()`` jobs/s, old tree vs new.

Run from the repository root (every plugin of requirements-dev installed, Huey too)::

    python -m benchmarks.producer --old /tmp/producer-old --rounds 3

``--old`` is another checkout of the repository (``git archive main | tar -x -C DIR``); each
round runs one measuring process per tree (and one for Huey), interleaved, so both see the
same machine load. A measuring process imports the kernel and the plugins of its tree only
(``PYTHONPATH`` puts them before the editable installs) and measures, in a fresh directory at
``synchronous=NORMAL``:

* ``delay_us``: process CPU time per ``add.delay(1, 2)`` over ``--jobs`` calls (SqliteHuey:
  per ``add(1, 2)``);
* ``map_per_s``: jobs/s of ``add.map()`` of ``--jobs`` items in chunks of ``--chunk``
  (wall clock, as ``throughput.py`` measures it; the gc is the batch's own business).

Medians over the rounds are printed; quote old/new ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree_env(tree: Path) -> dict[str, str]:
    """This environment for a process that imports the kernel, every plugin and the
    benchmarks of checkout ``tree`` (first on ``PYTHONPATH``, before the editable installs),
    without the ``NUVOM_``/``BENCH_`` settings of this one."""
    tree = tree.resolve()
    path = [str(tree), *sorted(str(src) for src in tree.glob("nuvom_plugins*/src"))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUVOM_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def _measure(system_name: str, jobs: int, chunk: int) -> dict[str, float]:
    from benchmarks.throughput import HueySystem, NuvomSystem

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cls = NuvomSystem if system_name == "nuvom" else HueySystem
        system = cls(Path(tmp) / "one", "NORMAL", True)
        try:
            system.enqueue_one(200)  # warm-up: connections open, caches filled
            cpu = time.process_time()
            system.enqueue_one(jobs)
            out["delay_us"] = (time.process_time() - cpu) / jobs * 1e6
        finally:
            system.close()
        if system_name == "nuvom":
            system = cls(Path(tmp) / "map", "NORMAL", True)
            add = system.add  # type: ignore[attr-defined]
            try:
                add.map([(1, 2)] * 100)
                started, cpu = time.perf_counter(), time.process_time()
                for _ in range(jobs // chunk):
                    add.map([(1, 2)] * chunk)
                out["map_per_s"] = jobs / (time.perf_counter() - started)
                out["map_us"] = (time.process_time() - cpu) / jobs * 1e6
            finally:
                system.close()
    if system_name == "nuvom":
        import nuvom_kernel
        import nuvom_plugins_sqlite

        out["from"] = f"{nuvom_kernel.__file__} {nuvom_plugins_sqlite.__file__}"  # type: ignore[assignment]
    return out


def _run(tree: Path, system_name: str, jobs: int, chunk: int) -> dict[str, float]:
    # This file runs as a script (its directory first on sys.path, no kernel in it); the
    # kernel, the plugins and benchmarks.throughput come from ``tree``.
    done = subprocess.run([sys.executable, __file__, "--measure", system_name, "--jobs",
                           str(jobs), "--chunk", str(chunk)], cwd=tree, env=tree_env(tree),
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path)
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--measure", choices=("nuvom", "huey"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--no-huey", action="store_true")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.jobs, args.chunk)))
        return
    if args.old is None:
        parser.error("--old is required")
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": [], "huey": []}
    for _ in range(args.rounds):
        runs["old"].append(_run(args.old, "nuvom", args.jobs, args.chunk))
        runs["new"].append(_run(args.new, "nuvom", args.jobs, args.chunk))
        if not args.no_huey:
            runs["huey"].append(_run(ROOT, "huey", args.jobs, args.chunk))
    for label, rows in runs.items():
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "from"]
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        each = {k: [round(r[k], 1) for r in rows] for k in keys}
        print(label, {k: round(v, 1) for k, v in med.items()}, "runs:", each,
              rows[0].get("from", ""))
    if runs["huey"]:
        huey = statistics.median(r["delay_us"] for r in runs["huey"])
        for label in ("old", "new"):
            mine = statistics.median(r["delay_us"] for r in runs[label])
            print(f"{label}: enqueue rate vs SqliteHuey = x{huey / mine:.2f}")


if __name__ == "__main__":
    main()
