"""Workers killed with SIGKILL: once mid-job (``crash``), and at random points of a large
run (``storm``). Nothing is released or acked by a killed worker; its leases expire."""

from __future__ import annotations

import random
import time
from pathlib import Path

from nuvom_kernel.kernel import get_job, use_kernel

from ..outcome import Outcome, Sizes, wait_for
from ..project import pid_of, project_for, stop_all

__all__ = ["scenario_crash", "scenario_storm"]


def scenario_crash(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """SIGKILL one of two workers while slow-ish jobs run, restart it: every job SUCCEEDED,
    the jobs it held show ``attempts >= 2``."""
    out = Outcome("crash", backend)
    with project_for(base, backend, "crash") as project:
        n = sizes.crash_jobs
        ids = project.enqueue("work", [(i, sizes.crash_secs) for i in range(n)])
        victim = project.start_worker(4)
        project.start_worker(4)
        log = project.log

        def victim_busy() -> bool:
            log.refresh()
            return log.ended >= n // 5 and len(log.in_flight(victim.pid)) >= 2

        wait_for(victim_busy, 60, "the victim worker to run jobs a fifth of the way in")
        project.kill(victim)
        running = log.refresh().in_flight(victim.pid)
        project.start_worker(4)
        project.wait_succeeded(n, 60 + n * sizes.crash_secs)
        records = project.judge(out, ids)
        # What the victim held: jobs running in it, and jobs whose call had returned but
        # whose outcome it had not settled yet (a slow machine can put the kill there, as
        # a process pool's hand-back from child to worker makes that window wider); the
        # latter are known once they ran again.
        unsettled = {job_id for job_id in log.refresh().ran_by(victim.pid) - running
                     if log.executions(job_id) >= 2}
        held = running | unsettled
        out.notes.append(f"killed pid {victim.pid} holding {len(running)} running job(s) "
                         f"and {len(unsettled)} finished but unsettled")
        out.check(held, "the victim held no job when killed (nothing was tested)")
        for job_id in held:
            with use_kernel(project.kernel()):
                attempts = get_job(job_id).attempts
            out.check(attempts >= 2 and log.executions(job_id) >= 2,
                      f"job {job_id} was running in the killed worker but shows "
                      f"attempts={attempts}, executions={log.executions(job_id)}")
            out.check(pid_of(records[job_id]) != victim.pid,
                      f"job {job_id}: the killed worker is named as the one that recorded it")
        stop_all(project, out)
    return out



def scenario_storm(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Kill and restart workers at random points during a large run; every job completes
    and every duplicate run belongs to a job a killed worker held."""
    out = Outcome("storm", backend)
    rng = random.Random(sizes.seed)
    with project_for(base, backend, "storm") as project:
        n, kills = sizes.storm_jobs, sizes.storm_kills
        # 2..20 ms per job: workers nearly always hold running jobs when the kill lands.
        ids = project.enqueue("work", [(i, (2 + (i * 7919) % 19) / 1000) for i in range(n)])
        for _ in range(2):
            project.start_worker(4)
        points = sorted(rng.sample(range(n // 20, n * 9 // 10), kills))
        log = project.log
        mid_job = 0
        deadline = time.monotonic() + 120 + n * 0.05
        for point in points:
            wait_for(lambda p=point: log.refresh().ended >= p,
                     max(1.0, deadline - time.monotonic()),
                     f"{point} jobs finished (kill {len(project.killed) + 1} of {kills})",
                     interval=0.005)
            victim = rng.choice(project.live())
            project.kill(victim)
            mid_job += len(log.refresh().in_flight(victim.pid))
            project.start_worker(4)
        project.wait_succeeded(n, max(30.0, deadline - time.monotonic()))
        records = project.judge(out, ids)
        wrong = [j for j in ids if pid_of(records[j]) in project.killed
                 and log.runs.get(j) and log.runs[j][-1].pid not in project.killed]
        out.check(not wrong, f"{len(wrong)} record(s) were written by a killed worker although "
                             f"a later run finished them: {wrong[:5]}")
        out.notes.append(f"{kills} kills caught {mid_job} job(s) mid-run; {out.duplicated} "
                         "job(s) ran more than once")
        stop_all(project, out)
    return out

