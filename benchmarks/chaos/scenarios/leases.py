"""Leases: a worker frozen past its lease is fenced out (``paused``), and a job outliving
its lease three times over keeps it by extension (``long-job``). See "Delivery: at least
once" in ``docs/workers.md``."""

from __future__ import annotations

import signal
from pathlib import Path

from nuvom_kernel.models import JobStatus

from ..freeze import freeze_outside_writes
from ..outcome import Outcome, Sizes, wait_for
from ..project import brief, pid_of, project_for, stop_all

__all__ = ["scenario_long_job", "scenario_paused"]


def scenario_paused(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A worker frozen (SIGSTOP) past its lease while running a job must not overwrite the
    outcome of the worker that took the job over, once it wakes (fencing, "Delivery: at
    least once" in ``docs/workers.md``). The frozen run fails and the take-over succeeds, so
    an overwrite would turn a job that succeeded into FAILED."""
    out = Outcome("paused", backend)
    with project_for(base, backend, "paused", visibility=1.0) as project:
        job_id = project.enqueue("flip", [(0, 2.0)])[0]
        frozen = project.start_worker(1)
        log = project.log
        wait_for(lambda: job_id in log.refresh().in_flight(frozen.pid), 60,
                 "the first worker to start the job")
        store = project.kernel().queue.location if backend == "sqlite" else None
        freeze_outside_writes(frozen.pid, store)
        try:
            taker = project.start_worker(1)
            project.wait_succeeded(1, 60, "the job taken over and finished by a second worker")
            taken = project.record(job_id)
            frozen.signal(signal.SIGCONT)
            wait_for(lambda: not log.refresh().in_flight(frozen.pid), 30,
                     "the woken worker to finish its stale run")
            wait_for(lambda: "lost its lease" in frozen.output(), 30,
                     "the woken worker to notice it lost the lease")
        finally:
            frozen.signal(signal.SIGCONT)
        project.killed.add(frozen.pid)  # its run was given up (by the lease), not finished
        records = project.judge(out, [job_id])
        record = records[job_id]
        out.check(taken is not None and pid_of(taken) == taker.pid,
                  f"the take-over's record: {brief(taken)}")
        out.check(record is not None and record.status is JobStatus.SUCCEEDED
                  and pid_of(record) == taker.pid and record.attempts == 2,
                  f"after the frozen worker woke, the record is {brief(record)} from pid "
                  f"{pid_of(record)} (frozen {frozen.pid}, take-over {taker.pid}): a worker "
                  "that lost its lease overwrote the outcome of the one that took over")
        stop_all(project, out)
    return out



def scenario_long_job(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Jobs running 3x the visibility timeout are never handed to a second worker: the
    lease extension keeps them, while an idle second worker polls all along."""
    out = Outcome("long-job", backend)
    visibility = 1.5
    with project_for(base, backend, "long", visibility=visibility) as project:
        long_ids = project.enqueue("work", [(i, 3 * visibility) for i in range(3)])
        short_ids = project.enqueue("work", [(100 + i, 0.01) for i in range(20)])
        project.start_worker(2)
        project.start_worker(2)
        project.wait_succeeded(len(long_ids) + len(short_ids), 60)
        project.judge(out, long_ids + short_ids)
        for job_id in long_ids:
            record = project.record(job_id)
            out.check(project.log.executions(job_id) == 1 and record is not None
                      and record.attempts == 1,
                      f"long job {job_id} ran {project.log.executions(job_id)} time(s), "
                      f"attempts={getattr(record, 'attempts', None)}: the lease was not "
                      "extended")
        logs = project.logs()
        out.check("lost its lease" not in logs, "a worker lost a lease while running:\n"
                  + "\n".join(line for line in logs.splitlines() if "lost its lease" in line))
        stop_all(project, out)
    return out

