"""A fan-out of n members with one join: Nuvom's ``group(...).then(...)`` on SQLite side by
side with a Celery chord of the same shape on Redis, in one run.

Run from the repository root::

    pip install -e './nuvom_plugins_redis[bench]'   # Celery
    python -m benchmarks.workflows                  # --sizes 1000 10000, --json

Per system and size, with the worker started and warm first (``-w 2`` threads on both
sides; Celery ``--pool threads --concurrency 2`` with the Redis result backend, which a
chord needs):

* **submit s**: the ``.delay()`` / ``.apply_async()`` call that stores the whole graph
  (Nuvom: one transaction with every member and the waiting join; Celery: one message per
  member, the chord's counter and body);
* **to join s**: from the end of the submit to the join's result in the caller's hands
  (every member run, the join released, run and its result read);
* **total s**: submit plus to join, the number to compare (Celery runs members while its
  submit is still sending, so its ``to join`` alone is short);
* **per member ms**: ``total`` over n — flat across sizes when the cost is O(members).

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

from benchmarks.throughput import RESULTS_DIR, NuvomSystem, _size, _stop, _wait_for, environment


def _warm(system: Any, proc: Any, enqueue: Any) -> None:
    """One job through the worker, so start-up is not measured."""
    enqueue()
    _wait_for(lambda: _size(system.mark) > 0, 120, "the warm-up job", proc)


def run_nuvom(base: Path, n: int) -> dict[str, Any]:
    from nuvom_kernel import group

    system = NuvomSystem(base / f"nuvom-{n}", "NORMAL", True)
    proc = system.worker()
    try:
        _warm(system, proc, lambda: system.tasks.add.delay(1, 2))
        add, tsum = system.tasks.add, system.tasks.tsum
        start = time.perf_counter()
        wf = group(add.s(i, 1) for i in range(n)).then(tsum.s()).delay()
        submitted = time.perf_counter()
        result = wf.get(timeout=1800, poll_secs=0.005)
        joined = time.perf_counter()
    finally:
        _stop(proc)
        system.close()
    assert result == sum(range(1, n + 1)), result
    return {"system": "nuvom (sqlite)", "members": n, "submit_s": submitted - start,
            "to_join_s": joined - submitted}


def run_celery(base: Path, n: int) -> dict[str, Any]:
    from celery import chord

    from benchmarks.peers.celery_peer import CelerySystem

    system = CelerySystem(base / f"celery-{n}", "NORMAL", True)
    proc = system.worker()
    try:
        _warm(system, proc, lambda: system.app.add.delay(1, 2))
        add, tsum = system.app.add, system.app.tsum
        start = time.perf_counter()
        res = chord(add.s(i, 1) for i in range(n))(tsum.s())
        submitted = time.perf_counter()
        _wait_for(res.ready, 1800, "the chord's join", proc)  # fails if the worker died
        joined = time.perf_counter()
        result = res.get(timeout=10)
    finally:
        _stop(proc)
        system.close()
    assert result == sum(range(1, n + 1)), result
    return {"system": "celery (redis)", "members": n, "submit_s": submitted - start,
            "to_join_s": joined - submitted}


RUNNERS = {"nuvom": run_nuvom, "celery": run_celery}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | members | submit s | to join s | total s | per member ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        total = r["submit_s"] + r["to_join_s"]
        lines.append(f"| {r['system']} | {r['members']:,} | {r['submit_s']:.2f} | "
                     f"{r['to_join_s']:.2f} | {total:.2f} | {total / r['members'] * 1000:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--systems", nargs="+", choices=sorted(RUNNERS),
                        default=["nuvom", "celery"])
    parser.add_argument("--json", action="store_true", help="also write the rows to "
                        "benchmarks/results/")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nuvom-wf-bench-") as tmp:
        for n in args.sizes:
            for name in args.systems:
                row = RUNNERS[name](Path(tmp), n)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(table(rows))
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"workflows-{int(time.time())}.json"
        out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
