"""Raw costs of the SQLite backend's primitives, without the kernel: what one ``.delay()``,
claim, ack or result write costs in SQLite and the plugin's own Python.

    python -m benchmarks.bench_sqlite_raw                  # NORMAL, results in their own file
    python -m benchmarks.bench_sqlite_raw --sync FULL --shared

One thread, real files in a temporary directory, realistic messages and job records (built
by the kernel's own ``Envelope.for_call``). Each figure is the median of ``--rounds`` rounds
(the minimum in brackets: on a shared machine the minimum is the better estimate of the
intrinsic cost); CPU time unless ``--wall`` (FULL's fsyncs are waiting, not CPU: use
``--wall`` there).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.models import JobRecord, JobStatus, Message, TaskOptions
from nuvom_kernel.serialization import JsonSerializer
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend

_SERIALIZER = JsonSerializer()


def _jobs(n: int) -> list[tuple[Message, Envelope]]:
    out = []
    for _ in range(n):
        envelope = Envelope.for_call("benchmarks.bench_tasks.add", "benchmarks.bench_tasks",
                                     TaskOptions(), [1, 2], {})
        out.append((envelope.to_message(_SERIALIZER), envelope))
    return out


def _record(envelope: Envelope) -> JobRecord:
    now = time.time()
    return envelope.record(JobStatus.SUCCEEDED, result=3, attempts=1, started_at=now,
                           finished_at=now, updated_at=now, worker="bench:1")


def one_round(base: Path, args: argparse.Namespace, clock: Callable[[], float]
              ) -> dict[str, float]:
    """µs per operation (per job where it says so) for one fresh pair of files."""
    base.mkdir(parents=True)
    queue = SQLiteJobQueue(base / "nuvom.db", synchronous=args.sync)
    results = SQLiteResultBackend(base / ("nuvom.db" if args.shared else "nuvom-results.db"),
                                  synchronous=args.sync)
    out: dict[str, float] = {}
    try:
        n = args.jobs
        jobs = _jobs(n)
        envelopes = {m.id: e for m, e in jobs}
        queue.qsize(), results.get("warm-up")
        started = clock()
        for message, _ in jobs:
            queue.enqueue(message)
        out["push(1)"] = (clock() - started) / n * 1e6
        for size in args.claims:
            spent = {"claim": 0.0, "put_many": 0.0, "ack_many": 0.0}
            done = 0
            while done < n // len(args.claims):
                t0 = clock()
                leases = queue.claim(size)
                t1 = clock()
                if not leases:
                    break
                records = [_record(envelopes[lease.id]) for lease in leases]
                t2 = clock()
                results.put_many(records)
                t3 = clock()
                queue.ack_many(leases)
                t4 = clock()
                spent["claim"] += t1 - t0
                spent["put_many"] += t3 - t2
                spent["ack_many"] += t4 - t3
                done += len(leases)
            for op, secs in spent.items():
                out[f"{op}({size}) per job"] = secs / max(done, 1) * 1e6
            out[f"claim+put+ack({size}) per job"] = sum(spent.values()) / max(done, 1) * 1e6
        batch = _jobs(n)
        started = clock()
        queue.enqueue_many([m for m, _ in batch])
        out[f"push({n}) per job"] = (clock() - started) / n * 1e6
    finally:
        queue.close()
        results.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sqlite_raw",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claims", type=int, nargs="+", default=[1, 2, 16],
                        help="claim sizes (the worker claims as many as it has free threads)")
    parser.add_argument("--sync", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--shared", action="store_true",
                        help="results in the queue's file (default: their own file)")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.wall else time.process_time
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="nuvom-raw-") as tmp:
        for i in range(args.rounds):
            rounds.append(one_round(Path(tmp) / f"r{i}", args, clock))
    unit = "wall" if args.wall else "CPU"
    print(f"{args.sync}, results {'shared' if args.shared else 'separate'}, {args.jobs} jobs, "
          f"µs of {unit} time, median (min) of {args.rounds} rounds")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        print(f"  {key:32s} {statistics.median(values):8.1f} ({min(values):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
