"""Signals that stop a worker on purpose: a SIGINT drain (``graceful``), a second SIGINT
and an expired grace period (its ``graceful-forced`` part)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from ..outcome import Outcome, Sizes, wait_for
from ..project import project_for, stop_all

__all__ = ["scenario_graceful"]


def scenario_graceful(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """SIGINT drains: running jobs finish and are recorded by the interrupted worker, leased
    but unstarted ones go back at once (a 60 s visibility timeout would stall them), exit 0
    within the grace period, and no job ever runs twice."""
    out = Outcome("graceful", backend)
    grace = 20.0
    with project_for(base, backend, "graceful", visibility=60.0) as project:
        n = sizes.graceful_jobs
        ids = project.enqueue("work", [(i, 0.05) for i in range(n)])
        # Keeps serving throughout, on one thread: alone, it drains what is left after an
        # interrupt slowly enough for the next victim to start on a loaded machine.
        project.start_worker(1, "--grace-period", str(grace))
        victim = project.start_worker(4, "--grace-period", str(grace))
        log = project.log
        finishing: dict[str, int] = {}
        for k in range(sizes.graceful_interrupts):
            floor = (k + 1) * n // (sizes.graceful_interrupts + 2)
            wait_for(lambda v=victim, f=floor: log.refresh().ended >= f
                     and len(log.in_flight(v.pid)) >= 2, 60,
                     f"worker {victim.name} busy past {floor} jobs")
            # The next victim starts now, while this one drains: a process-pool worker
            # takes seconds to start its children on a loaded machine, and the worker that
            # keeps serving had drained every job before the last victim ran one (CI).
            successor = project.start_worker(4, "--grace-period", str(grace))
            victim.signal(signal.SIGINT)
            running = log.refresh().in_flight(victim.pid)
            t0 = time.monotonic()
            code = victim.wait(grace + 10)
            elapsed = time.monotonic() - t0
            out.check(code == 0, f"interrupted worker exited {code}:\n{victim.tail()}")
            out.check(elapsed < grace, f"drain took {elapsed:.1f} s, grace is {grace} s")
            out.check("finishing running jobs" in victim.output(),
                      "the first SIGINT was not logged as a drain")
            finishing.update(dict.fromkeys(running, victim.pid))
            victim = successor
        # 30 s < the 60 s visibility timeout: a lease the drain failed to return would
        # leave its job invisible past this deadline.
        project.wait_succeeded(n, 30, f"{n} jobs SUCCEEDED before any lease could expire")
        records = project.judge(out, ids)
        log.refresh()
        unfinished = [j for j, pid in finishing.items()
                      if not any(r.pid == pid and r.ended for r in log.runs.get(j, ()))]
        out.check(not unfinished, f"{len(unfinished)} job(s) running at SIGINT were not "
                                  f"finished by their worker: {unfinished[:5]}")
        out.check(out.duplicated == 0, f"{out.duplicated} job(s) ran twice across graceful "
                                       "shutdowns (a drain must never cause a re-run)")
        recounted = [j for j, r in records.items() if r is not None and r.attempts != 1]
        out.check(not recounted, f"{len(recounted)} job(s) show attempts != 1 after graceful "
                                 f"shutdowns (a returned lease must not count a delivery)")
        out.notes.append(f"{sizes.graceful_interrupts} drains finished "
                         f"{len(finishing)} running job(s) in place")
        stop_all(project, out)
    out.merge(_graceful_forced(base, backend, sizes))
    return out


def _graceful_forced(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A second SIGINT ends at once (exit 1), and an expired grace period likewise; both
    return the running jobs to the queue at once, and nothing is lost."""
    out = Outcome("graceful-forced", backend)
    with project_for(base, backend, "forced", visibility=60.0) as project:
        ids = project.enqueue("gated", [(i,) for i in range(6)])
        kernel = project.kernel()
        log = project.log
        abandoned: dict[str, int] = {}
        for label, args, second in (("second SIGINT", ("--grace-period", "60"), True),
                                    ("grace expired", ("--grace-period", "1"), False)):
            worker = project.start_worker(2, *args)
            running = wait_for(lambda w=worker: len(log.refresh().in_flight(w.pid)) == 2
                               and log.in_flight(w.pid), 60, f"2 gated jobs running ({label})")
            for job_id in running:
                abandoned[job_id] = abandoned.get(job_id, 0) + 1
            worker.signal(signal.SIGINT)
            if second:
                wait_for(lambda w=worker: "finishing running jobs" in w.output(), 10,
                         "the first SIGINT to be handled")
            t0 = time.monotonic()
            if second:
                worker.signal(signal.SIGINT)
            code = worker.wait(20)
            elapsed = time.monotonic() - t0
            limit = 3.0 if second else 1.0 + 3.0  # "at once" / the grace period, plus exit
            out.check(code == 1, f"{label}: worker exited {code}, expected 1:\n{worker.tail()}")
            out.check(elapsed < limit, f"{label}: stopping took {elapsed:.1f} s "
                                       f"(limit {limit:.0f} s)")
            out.check("abandoned at shutdown" in worker.output(),
                      f"{label}: the abandoned jobs were not logged")
            # Returned at once = claimable now (their leases expired on the way out, so the
            # delivery counts as one without an outcome); claim and give them back to see.
            claimable = kernel.queue.claim(len(ids) + 1)
            for lease in claimable:
                kernel.queue.release(lease)
            out.check(len(claimable) == len(ids),
                      f"{label}: after exit {len(claimable)} of {len(ids)} job(s) could be "
                      "claimed at once: running jobs were not returned at once")
            project.killed.add(worker.pid)  # it gave its runs up: re-runs are expected
        (project.root / "gate").touch()
        project.start_worker(4)
        project.wait_succeeded(len(ids), 30, "every job SUCCEEDED before any lease expired")
        records = project.judge(out, ids)
        for job_id, times in abandoned.items():
            record = records[job_id]
            out.check(log.executions(job_id) == times + 1 and record is not None
                      and record.attempts == times + 1,
                      f"job {job_id} was abandoned {times} time(s): expected {times + 1} "
                      f"runs and attempts, got {log.executions(job_id)} and "
                      f"{getattr(record, 'attempts', None)}")
        out.notes.append(f"forced stops returned {sum(abandoned.values())} running job(s) "
                         "to the queue at once")
        stop_all(project, out)
    return out

