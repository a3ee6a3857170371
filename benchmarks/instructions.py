"""Instructions per job in a worker's drain, counted by valgrind: a measure that the VM's speed
swings do not move.

Run from the repository root (needs ``valgrind``: ``apt-get install valgrind``)::

    python -m benchmarks.instructions                       # memory and sqlite, this tree
    python -m benchmarks.instructions --tree /tmp/old       # another checkout, to compare
    python -m benchmarks.instructions --stages --backend memory   # where a job's go

Why: on this project's VMs the same tree's ``overhead.py`` CPU per job moves by up to 2x from
one minute to the next, so a change worth 3 % cannot be seen in µs even with interleaved
runs. The number of instructions executed for the same work hardly moves: two runs of one
tree agree within ~1 %, so two trees can be compared one after the other.

What is counted: the drain of ``overhead.py`` (no-op jobs enqueued with ``.map()``, a started
``Worker(workers=2)`` with its heap frozen), from the worker's start until the last job is
settled; the enqueue before it is left out (the counters are zeroed, ``callgrind_control
-z``, between the two). Per job is the slope between two drains (``--jobs``, default 1,000
and 4,000 jobs), so the worker's start and stop cancel out.

Read it as "how much work the kernel does per job", for comparing trees. Not as speed: under
valgrind a program runs ~50x slower, and where the worker decides by the clock (how many jobs
to claim ahead, whether the settler waits for more outcomes) it may batch differently than
it does natively, and a much slower or faster host could shift those batches (so compare
trees on one machine). Each count takes ~30-90 s.

``--tree`` runs the kernel and the plugins of another checkout (its ``benchmarks/overhead.py``
sets up the drain), so the count of a change is this tree's minus the other's.

``--stages`` says where a job's instructions go: the same jobs run through the worker's own
steps on one thread, in batches of 16 (claim them; decode each and build its job; call it and
build its outcome; store the outcomes and ack), each count adding a step, and the started
pool's drain last. Each step's share is the difference between two counts; the last row is
what the pool's threads add (hand-offs, waits, the settler's batching).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


#: ``--stages``: the worker's steps run on one thread, each count adding one (see the module).
STAGES = {"claim": "claim 16, ack", "begin": "+ decode, build the job",
          "run": "+ call, build the outcome", "settle": "+ store the outcome (and ack)",
          "drain": "+ the pool's threads (the started worker)"}


def _steps(worker: Any, jobs: int, stage: str) -> None:
    """``jobs`` jobs through the worker's steps up to ``stage``, on this thread. The runner
    and settler are the pool's own; outcomes are collected instead of handed to the settler
    thread, then settled as one batch (or the leases acked, before ``settle``)."""
    runner, settler, queue = worker.runner, worker.settler, worker.queue
    outcomes: list[Any] = []
    settler.submit = outcomes.append  # this instance only: the batch is settled below
    done = 0
    while done < jobs:
        leases = queue.claim(16)
        for lease in leases:
            if stage == "begin":
                runner._begin(lease)
            elif stage != "claim":
                runner.run_one(lease)
        if stage == "settle":
            settler.settle(outcomes)
        else:
            queue.ack_many(leases)
        done += len(leases)
        outcomes.clear()


def _drain_when_told(backend: str, jobs: int, go: Path, stage: str = "drain") -> None:
    """The counted process: enqueue, say READY, wait for ``go`` to exist, drain (or run
    the worker's steps up to ``stage`` on this thread), exit."""
    import nuvom_kernel
    from benchmarks.overhead import _kernel, noop
    from nuvom_kernel.kernel import use_kernel
    from nuvom_kernel.worker import Worker
    from nuvom_kernel.worker.heap import frozen_heap

    tree = Path.cwd()
    if not Path(nuvom_kernel.__file__).resolve().is_relative_to(tree):
        sys.exit(f"counting {tree}, but nuvom_kernel came from {nuvom_kernel.__file__}")
    kernel = _kernel(backend, Path(tempfile.mkdtemp(prefix="nuvom-instructions-")))
    with use_kernel(kernel):
        for start in range(0, jobs, 1000):
            noop.map([(i,) for i in range(start, min(jobs, start + 1000))])
        worker = Worker(kernel, workers=2)
        with frozen_heap():
            print("READY", flush=True)
            while not go.exists():
                time.sleep(0.05)
            if stage != "drain":
                _steps(worker, jobs, stage)
                os._exit(0)
            worker.start()
            deadline = time.monotonic() + 1800
            while worker.processed < jobs:
                if time.monotonic() > deadline:
                    sys.exit(f"{worker.processed} of {jobs} jobs done after 1800 s")
                time.sleep(0.05)
            # Counted up to here: exit without the worker's stop, the kernel's close and
            # the interpreter's teardown (the counts are written as valgrind exits).
            os._exit(0)


def count(tree: Path, backend: str, jobs: int, stage: str = "drain") -> int:
    """Instructions of one drain of ``jobs`` jobs (or of the steps up to ``stage``), the
    enqueue before it left out."""
    # Here, not at the top: the counted process runs this file too, importing from ``tree``.
    from benchmarks.producer import tree_env

    tree = tree.resolve()
    env = tree_env(tree)
    with tempfile.TemporaryDirectory(prefix="nuvom-callgrind-") as tmp:
        out, go = Path(tmp) / "callgrind.out", Path(tmp) / "go"
        # This file runs as a script: the kernel, its plugins and benchmarks.overhead come
        # from ``tree`` (PYTHONPATH), as in benchmarks/producer.py.
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", backend, str(jobs), str(go), stage],
            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                _, err = proc.communicate(timeout=60)
                raise RuntimeError(f"the counted process did not start: {line!r}\n{err}")
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)
            go.touch()
            _, err = proc.communicate(timeout=1800)
        finally:
            if proc.poll() is None:  # an error above: never leave it polling for `go`
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"the counted process failed ({proc.returncode}):\n{err}")
        totals = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise RuntimeError(f"no totals in {out}")
        return int(totals.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", nargs="+", choices=("memory", "sqlite"),
                        default=["memory", "sqlite"])
    parser.add_argument("--jobs", nargs=2, type=int, default=[1000, 4000],
                        metavar=("SMALL", "LARGE"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--stages", action="store_true",
                        help="where a job's instructions go, step by step (see the module)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        backend, jobs, go, stage = args.child
        _drain_when_told(backend, int(jobs), Path(go), stage)
        return 0
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install valgrind)")
    small, large = (int(n) for n in args.jobs)
    if not 0 < small < large:
        parser.error("--jobs SMALL LARGE needs 0 < SMALL < LARGE")
    print(f"tree: {args.tree.resolve()}")

    def per_job(backend: str, stage: str = "drain") -> float:
        jobs = large - small
        return (count(args.tree, backend, large, stage)
                - count(args.tree, backend, small, stage)) / float(jobs)

    if args.stages:
        print(f"instructions per job (slopes between {small:,} and {large:,} no-op jobs, "
              "results stored): cumulative, and what each step adds")
        for backend in args.backend:
            before = 0.0
            for stage, what in STAGES.items():
                total = per_job(backend, stage)
                print(f"{backend:<8} {what:<44} {total:>9,.0f} {total - before:>+9,.0f}",
                      flush=True)
                before = total
        return 0
    print(f"{'backend':<8} {'instructions/job':>17}   (slope between drains of {small:,} and "
          f"{large:,} no-op jobs, 2 threads, results stored)")
    for backend in args.backend:
        print(f"{backend:<8} {per_job(backend):>17,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
