"""What the observability plugins cost per job when installed but idle (no Prometheus port,
no OpenTelemetry SDK): the hook calls the kernel makes per job, timed in one thread.

Run from the repository root (under ``flock /work/bench.lock`` on a shared machine)::

    python -m benchmarks.observability_overhead

Why a micro-benchmark: the cost is a few microseconds against a job's 100-200 µs, below
what a whole drain can resolve on a busy machine. Each line is the best of 5 rounds of
200,000 calls (CPU time): the producer's enqueue hooks, the executor's execute hooks and
the settler's ``nuvom_after_settle``, with the plugins disabled
(``NUVOM_DISABLE_PLUGINS=prometheus,otel``) and installed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nuvom_kernel import events
from nuvom_kernel.config import load_config
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobRecord, JobStatus, Lease, Message, Settlement
from nuvom_kernel.outcome import Outcome


def _kernel(workdir: Path, disable: bool) -> Kernel:
    env = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory"}
    if disable:
        env["NUVOM_DISABLE_PLUGINS"] = "prometheus,otel"
    return Kernel(load_config(workdir, env), environ=env)


def per_call(fn: Callable[[], None], calls: int = 200_000) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def costs(pm: Any, job: Job, settlement: Settlement) -> tuple[float, float, float]:
    """µs per job of the enqueue hooks, the execute hooks and ``nuvom_after_settle``."""

    def enqueue() -> None:  # as the producer does it: skipped when nobody observes
        if (pm.hook.nuvom_before_enqueue.get_hookimpls()
                or pm.hook.nuvom_after_enqueue.get_hookimpls()):
            events.emit(pm, "nuvom_before_enqueue", job=job)
            events.emit(pm, "nuvom_after_enqueue", job=job)

    def execute() -> None:
        events.emit(pm, "nuvom_before_execute", job=job)
        events.emit(pm, "nuvom_after_execute", job=job, result=None)

    def settle() -> None:  # as the settler does it
        if pm.hook.nuvom_after_settle.get_hookimpls():
            events.emit(pm, "nuvom_after_settle", outcome=Outcome(settlement, True))

    return per_call(enqueue), per_call(execute), per_call(settle)


def main() -> None:
    settlement = Settlement(Lease(Message(id="j", body=b""), "t", 1, time.time() + 30),
                            JobRecord(job_id="j", task="f", status=JobStatus.SUCCEEDED))
    job = Job(id="j", task="f")
    print(f"{'observability plugins':<22} {'enqueue hooks':>14} {'execute hooks':>14} "
          f"{'after_settle':>13}   (µs CPU per job)")
    for label, disable in (("disabled", True), ("installed, idle", False)):
        with tempfile.TemporaryDirectory() as tmp:
            enqueue, execute, settle = costs(_kernel(Path(tmp), disable).pm, job, settlement)
        print(f"{label:<22} {enqueue:>14.2f} {execute:>14.2f} {settle:>13.2f}")


if __name__ == "__main__":
    main()
