"""Hostile and broken plugins (``plugins``): lifecycle hooks that raise or hang, an error
observer that blocks, and a queue backend failing at random. The worker logs, backs off,
keeps serving, and never acks a job it did not finish."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from nuvom_kernel.models import JobStatus

from ..outcome import Outcome, Sizes, wait_for
from ..project import backend_classes, brief, project_for, stop_all

__all__ = ["scenario_plugins"]

HOSTILE_SOURCE = '''\
"""Chaos hooks: every lifecycle hook raises, and before_execute hangs for some jobs."""

import time

from nuvom_kernel import hookimpl

HANG = {3, 7}


def _index(job):
    return job.args[0] if job.args and isinstance(job.args[0], int) else -1


@hookimpl
def nuvom_worker_startup(worker):
    raise RuntimeError("hostile worker_startup hook")


@hookimpl
def nuvom_before_execute(job):
    i = _index(job)
    if i in HANG:
        time.sleep(3600)  # hangs: only the job timeout frees the slot
    if i % 5 == 1:
        raise RuntimeError("hostile before_execute hook")


@hookimpl
def nuvom_after_execute(job, result):
    if _index(job) % 5 == 2:
        raise RuntimeError("hostile after_execute hook")


@hookimpl
def nuvom_on_execute_error(job, error):
    raise RuntimeError("hostile on_execute_error hook")


@hookimpl
def nuvom_worker_shutdown(worker):
    raise RuntimeError("hostile worker_shutdown hook")
'''

FLAKY_SOURCE = '''\
"""Chaos backend: the real {backend} queue, failing at random (CHAOS_FLAKY="claim=0.3,...")
and logging each successful ack to the execution log."""

import os
import random
import threading

from {module} import {qualname} as _Base

_RNG = random.Random(os.getpid())
_LOCAL = threading.local()  # inside ack_many: the base class may call ack() per lease
RATES = dict((k, float(v)) for k, _, v in
             (p.partition("=") for p in os.environ.get("CHAOS_FLAKY", "").split(",") if p))
LOG = os.environ.get("CHAOS_LOG", "chaos.log")


def _log(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _maybe_fail(op, leases=()):
    if _RNG.random() < RATES.get(op, 0.0):
        for lease in leases:  # these jobs may run again: say why, for the judge
            _log(f"fault {{lease.id}} {{os.getpid()}} {{op}}\\n")
        raise ConnectionError(f"injected {{op}} failure")


class FlakyQueue(_Base):
    name = "flaky_{backend}"

    def claim(self, n, queues=None):
        _maybe_fail("claim")
        return super().claim(n, queues)

    def extend(self, lease, secs):
        if not getattr(_LOCAL, "extending", False):
            _maybe_fail("extend", [lease])
        return super().extend(lease, secs)

    def extend_many(self, leases, secs):
        # one fault for the whole batch, logged for every lease in it: the base class's
        # extend_many (the file backend's) calls extend() per lease, and a fault there
        # left the leases after it unextended, unlogged, so their reruns read as unexplained
        _maybe_fail("extend", leases)
        _LOCAL.extending = True
        try:
            return super().extend_many(leases, secs)
        finally:
            _LOCAL.extending = False

    def ack(self, lease):
        if getattr(_LOCAL, "batch", False):
            return super().ack(lease)
        _maybe_fail("ack", [lease])
        done = super().ack(lease)
        if done:
            _log(f"ack {{lease.id}} {{os.getpid()}}\\n")
        return done

    def ack_many(self, leases):
        _maybe_fail("ack", leases)
        _LOCAL.batch = True
        try:
            done = super().ack_many(leases)
        finally:
            _LOCAL.batch = False
        for lease, ok in zip(leases, done):
            if ok:
                _log(f"ack {{lease.id}} {{os.getpid()}}\\n")
        return done
'''


HANGING_SOURCE = '''\
"""Chaos hooks: the worker's startup or shutdown hook hangs (CHAOS_HANG=startup|shutdown)."""

import os
import time

from nuvom_kernel import hookimpl

WHERE = os.environ.get("CHAOS_HANG", "")


def _hang(where):
    if WHERE == where:
        os.close(os.open(f"hung-{where}", os.O_WRONLY | os.O_CREAT, 0o644))
        time.sleep(3600)


@hookimpl
def nuvom_worker_startup(worker):
    _hang("startup")


@hookimpl
def nuvom_worker_shutdown(worker):
    _hang("shutdown")
'''


def _hung_lifecycle(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A startup hook that never returns must not stop the worker serving nor make it deaf
    to SIGINT; a shutdown hook that never returns yields to the second signal."""
    out = Outcome("hung-hooks", backend)
    with project_for(base, backend, "hung", targets={"hooks": ["chaos_hanging"]}) as project:
        project.write("chaos_hanging.py", HANGING_SOURCE)
        for where, signals in (("startup", 1), ("shutdown", 2)):
            ids = project.enqueue("work", [(i, 0.0) for i in range(20)])
            worker = project.start_worker(2, env={"CHAOS_HANG": where})
            project.wait_succeeded(out.submitted + len(ids), 60,
                                   f"jobs served despite a hung {where} hook")
            project.judge(out, ids)
            if where == "startup":  # jobs are served before the hook's thread may reach
                # it (a loaded CI machine): signalled before it began, it is not run at all
                wait_for(lambda: (project.root / "hung-startup").exists(), 30,
                         "the startup hook to hang")
            worker.signal(signal.SIGINT)
            if signals == 2:
                wait_for(lambda: (project.root / "hung-shutdown").exists(), 30,
                         "the drain to reach the hung shutdown hook")
                worker.signal(signal.SIGINT)
            try:
                code: int | None = worker.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            out.check(code == 0, f"hung {where} hook: after {signals} SIGINT(s) the worker "
                                 f"{'is still running' if code is None else f'exited {code}'}"
                                 f":\n{worker.tail()}")
            out.check("was interrupted" in worker.output(),
                      f"the interrupted {where} hook was not logged")
            if worker.alive():
                worker.kill()
    return out


SLOW_OBSERVER_SOURCE = '''\
"""Chaos hooks: the error observer blocks on the first timeout of every job."""

import time

from nuvom_kernel import hookimpl


@hookimpl
def nuvom_on_execute_error(job, error):
    if job.attempts == 1 and type(error).__name__ == "JobTimeoutError":
        time.sleep(3600)
'''


def _slow_observer(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """An error observer that blocks on a timed-out job must not stop lease extension for
    the other jobs of that worker (a long job keeps its lease), and the timed-out job is
    still recorded once its lease comes back."""
    out = Outcome("slow-observer", backend)
    with project_for(base, backend, "observer", visibility=1.0,
                     targets={"hooks": ["chaos_observer"]}) as project:
        project.write("chaos_observer.py", SLOW_OBSERVER_SOURCE)
        timed = project.enqueue("timed", [(0, 30.0)])[0]  # its timeout is 1 s
        long_job = project.enqueue("work", [(1, 4.0)])[0]  # 4x the lease, no timeout
        project.start_worker(2)
        project.start_worker(2)
        project.wait_succeeded(1, 60, "the long job", settled=False)
        wait_for(lambda: getattr(project.record(timed), "status", None) is JobStatus.FAILED,
                 60, "the timed-out job to be recorded on its next delivery")
        records = project.judge(out, [long_job])
        out.check(project.log.executions(long_job) == 1 and records[long_job] is not None
                  and records[long_job].attempts == 1,
                  f"the long job ran {project.log.executions(long_job)} time(s): a blocked "
                  "observer stopped its lease extension")
        record = project.record(timed)
        out.submitted += 1
        out.completed += out.check(
            record is not None and record.status is JobStatus.FAILED
            and record.error_type == "nuvom_kernel.errors.JobTimeoutError",
            f"the timed-out job: {brief(record)}")
        stop_all(project, out)
    return out


def scenario_plugins(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Lifecycle hooks that raise or hang, and a queue backend failing at random: the
    worker logs, backs off, keeps serving, and never acks a job it did not finish."""
    out = Outcome("plugins", backend)
    with project_for(base, backend, "hooks", targets={"hooks": ["chaos_hostile"]},
                     env={"NUVOM_JOB_TIMEOUT_SECS": "2"}) as project:
        project.write("chaos_hostile.py", HOSTILE_SOURCE)
        n = sizes.flow_jobs
        ids = project.enqueue("work", [(i, 0.005) for i in range(n)])
        hung = [ids[i] for i in (3, 7)]
        project.start_worker(2)
        project.start_worker(2)
        project.wait_succeeded(n - len(hung), 60)
        wait_for(lambda: all(getattr(project.record(j), "status", None) is JobStatus.FAILED
                             for j in hung), 30, "the hung jobs to time out")
        project.judge(out, [j for j in ids if j not in hung])
        for job_id in hung:
            record = project.record(job_id)
            out.completed += out.check(
                record is not None
                and record.error_type == "nuvom_kernel.errors.JobTimeoutError",
                f"job {job_id} hung in a hook: expected a JobTimeoutError record, got "
                f"{getattr(record, 'error_type', None)}")
        logs = project.logs()
        for hook in ("nuvom_worker_startup", "nuvom_before_execute", "nuvom_after_execute",
                     "nuvom_on_execute_error"):
            out.check(f"raised in {hook}" in logs, f"a raising {hook} hook was not logged")
        out.submitted += len(hung)
        stop_all(project, out)
        out.check("raised in nuvom_worker_shutdown" in project.logs(),
                  "a raising nuvom_worker_shutdown hook was not logged")
    out.merge(_hung_lifecycle(base, backend, sizes))
    out.merge(_slow_observer(base, backend, sizes))
    out.merge(_flaky_backend(base, backend, sizes))
    return out


def _flaky_backend(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("flaky-backend", backend)
    queue_cls, _ = backend_classes(base, backend, "flaky-probe")
    flaky = f"flaky_{backend}"
    with project_for(base, backend, "flaky", queue_backend=flaky, visibility=1.0,
                     targets={"queue_backend": ["chaos_flaky:FlakyQueue"]},
                     env={"CHAOS_FLAKY": "claim=0.3,extend=0.1,ack=0.05"}) as project:
        project.write("chaos_flaky.py", FLAKY_SOURCE.format(
            backend=backend, module=queue_cls.__module__, qualname=queue_cls.__qualname__))
        n = sizes.flow_jobs
        # a few jobs outlive the 1 s lease, so extend failures matter
        ids = project.enqueue("work", [(i, 2.5 if i % 50 == 0 else 0.01) for i in range(n)])
        workers = [project.start_worker(2), project.start_worker(2)]
        project.wait_succeeded(n, 120)
        project.judge(out, ids)
        log = project.log.refresh()
        out.check(not log.premature_acks, f"{len(log.premature_acks)} ack(s) of jobs the "
                  f"acking worker had not finished: {log.premature_acks[:3]}")
        logs = project.logs()
        out.check("failed to claim jobs; retrying in" in logs,
                  "claim failures were not logged with a back-off")
        out.check(all(w.alive() for w in workers), "a worker died of backend failures")
        out.notes.append(f"{logs.count('injected claim failure')} claim, "
                         f"{logs.count('injected extend failure')} extend and "
                         f"{logs.count('injected ack failure')} ack failures injected")
        stop_all(project, out)
    return out

