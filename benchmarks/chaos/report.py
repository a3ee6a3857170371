"""The report: the per-backend table and the command line (``python -m benchmarks.chaos``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .backends import persistent_backends
from .outcome import Outcome, Sizes
from .scenarios import SCENARIOS, run_scenario

__all__ = ["main", "summary_table"]


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """Per backend: jobs submitted, completed, lost, duplicated, scenarios passed."""
    rows = [("backend", "submitted", "completed", "lost", "duplicated", "scenarios passed",
             "seconds")]
    for backend in dict.fromkeys(o.backend for o in outcomes):
        mine = [o for o in outcomes if o.backend == backend]
        passed = [o.scenario for o in mine if o.passed]
        rows.append((backend, str(sum(o.submitted for o in mine)),
                     str(sum(o.completed for o in mine)), str(sum(o.lost for o in mine)),
                     str(sum(o.duplicated for o in mine)),
                     f"{len(passed)}/{len(mine)}"
                     + ("" if len(passed) == len(mine) else
                        " (failed: " + ", ".join(o.scenario for o in mine if not o.passed)
                        + ")"),
                     f"{sum(o.seconds for o in mine):.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.chaos``: run the scenarios, print a line each and the table;
    returns 1 if any promise broke."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Fault-injection soak: every scenario on real worker processes.")
    parser.add_argument("--backend", action="append", default=None,
                        help="backend name (repeatable) or 'all' (default: all persistent)")
    parser.add_argument("--jobs", type=int, default=2000,
                        help="jobs in the crash storm; other scenarios scale with it")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable; default: all)")
    parser.add_argument("--pool", choices=["thread", "process", "asyncio"], default="thread",
                        help="the workers' pool (runworker --pool; default: thread)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep project directories here (default: a temp dir, deleted)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every scenario's notes, not only failures")
    args = parser.parse_args(argv)
    # This process only produces and judges; the corrupt-data scenario makes its backends
    # warn on purpose (the workers' own logs are kept in each project's logs/ directory).
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR,
                        format="    [%(name)s] %(levelname)s %(message)s")
    installed = persistent_backends()
    backends = [b for name in (args.backend or ["all"])
                for b in (installed if name == "all" else [name])]
    unknown = sorted(set(backends) - set(installed))
    if unknown:
        parser.error(f"no installed persistent backend named {', '.join(unknown)}; "
                     f"installed: {', '.join(installed) or 'none'}")
    sizes = dataclasses.replace(Sizes() if args.jobs == Sizes.storm_jobs
                                else Sizes.scaled(args.jobs), seed=args.seed)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="nuvom-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    try:
        for backend in backends:
            for name in args.scenario or list(SCENARIOS):
                out = run_scenario(name, base, backend, sizes, args.pool)
                outcomes.append(out)
                status = "ok  " if out.passed else "FAIL"
                print(f"{status} {backend:<8} {name:<10} {out.seconds:6.1f} s  "
                      f"submitted={out.submitted} lost={out.lost} "
                      f"duplicated={out.duplicated}", flush=True)
                if not out.passed or args.verbose:
                    print(out.report(), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(summary_table(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1

