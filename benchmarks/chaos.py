"""Fault injection for Nuvom's "never lose a job" promise (DESIGN.md §3), on real processes.

This module is the one chaos engine: ``tests/test_chaos.py`` runs every scenario here at CI
size on each persistent backend, and the same code runs longer soaks from the repo root::

    python -m benchmarks.chaos --backend sqlite --jobs 20000
    python -m benchmarks.chaos --backend all --scenario storm --scenario crash -v

It prints one line per scenario and then, per backend, jobs submitted, completed, lost
(must be 0), duplicated (ran more than once) and the scenarios passed; exit status 1 if any
promise broke.

Why real processes and signals: the promise is about what survives ``kill -9``, a full disk
and a second Ctrl-C, which no in-process fake reproduces. Every scenario builds a fresh
project directory, starts ``python -m nuvom_kernel runworker`` subprocesses in it, hurts them,
and judges the outcome from two independent witnesses:

* the **result backend** (``get_job``/``JobRecord``): status, attempts, which worker recorded;
* the **execution log** ``chaos.log``: every task attempt appends ``start``/``end`` lines with
  its pid, one ``O_APPEND`` ``write(2)`` each, so lines from many processes never interleave
  and a killed process leaves only whole lines. Fault-injecting wrappers add ``ack`` and
  ``fault`` lines the same way.

A job that ran more than once is a duplicate; delivery is at least once, so duplicates are
allowed only when explained: every run but the last belongs to a worker the scenario killed
(or abandoned on purpose), or an injected backend fault hit that job. A record must count at
least as many attempts as the log shows runs. Waits are deadlines on observed state (log
lines, records, exit codes), never bare sleeps. A scenario returns an :class:`Outcome`; a
broken promise is a ``failures`` entry, so a soak reports every problem, not the first.

Scenarios (:data:`SCENARIOS`): ``crash`` (SIGKILL mid-job), ``storm`` (kill/restart at random
points), ``graceful`` (SIGINT drain, second SIGINT, expired grace), ``producer`` (SIGKILL
inside ``.map()``), ``disk`` (full and read-only data dir), ``corrupt`` (garbage entries,
missing tasks, undecodable payloads, torn records), ``plugins`` (raising and hanging hooks,
a flaky queue backend), ``long-job`` (a job outliving its lease three times over).

A new backend joins by being installed (persistent and multiprocess-safe). What the engine
knows per backend is in tables: :data:`BACKEND_SETTINGS`, :data:`ATOMIC_PUSH`,
:data:`DISK_BACKENDS` with :data:`SQUEEZERS` (real disk-full on a tmpfs; other backends get
ENOSPC from a wrapper), and :data:`CORRUPTORS` (backend-specific garbage; every backend gets
the generic corruption through the SPI).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nuvom_kernel.dispatcher import enqueue
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.kernel import Kernel, get_job, use_kernel
from nuvom_kernel.models import JobRecord, JobStatus, Message, TaskOptions

__all__ = [
    "SCENARIOS",
    "ExecLog",
    "Outcome",
    "Project",
    "Sizes",
    "WorkerProc",
    "persistent_backends",
    "run_scenario",
]

ROOT = Path(__file__).resolve().parent.parent
TASKS_MODULE = "chaos_tasks"
LOG_NAME = "chaos.log"

#: Per-backend ``[plugins.<name>]`` settings for chaos projects. The file queue's fsync only
#: matters for power loss, which no scenario simulates (a killed process's writes survive in
#: the page cache); turning it off keeps a 10,000-job ``.map()`` within the CI budget.
BACKEND_SETTINGS: dict[str, dict[str, Any]] = {"file": {"fsync": False}}

#: Whether a backend's ``push`` is all or none (a killed producer leaves all or none of a
#: ``.map()``). Every backend is held to that, the strict reading of ``QueueBackend.push``;
#: list one here as ``False`` only if it documents otherwise (then a killed ``.map()`` may
#: leave part of its batch, but still never a half-written job).
ATOMIC_PUSH: dict[str, bool] = {}

#: Name prefixes of the fault-injecting backend wrappers; they share their backend's
#: ``[plugins.<backend>]`` settings.
WRAPPER_PREFIXES = ("flaky_", "faulty_")

TASKS_SOURCE = '''\
"""Chaos tasks: each attempt appends whole lines to the execution log (O_APPEND)."""

import os
import time

from nuvom_kernel import current_job, task

LOG = os.path.abspath(os.environ.get("CHAOS_LOG", "chaos.log"))


def mark(kind):
    job = current_job()
    jid, attempt = (job.id, job.attempts) if job is not None else ("-", 0)
    line = f"{kind} {jid} {os.getpid()} {attempt} {time.time():.6f}\\n".encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task(name="chaos_work")
def work(i, secs=0.0):
    mark("start")
    if secs > 0:
        time.sleep(secs)
    mark("end")
    return i


@task(name="chaos_timed", timeout_secs=1.0)
def timed(i, secs=0.0):
    mark("start")
    time.sleep(secs)
    mark("end")
    return i


@task(name="chaos_flip")
def flip(i, secs=0.0):
    mark("start")
    attempt = current_job().attempts
    time.sleep(secs)
    mark("end")
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return i


@task(name="chaos_gated")
def gated(i, gate="gate", limit=120.0):
    mark("start")
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    mark("end")
    return i
'''


class ChaosTimeout(AssertionError):
    """A deadline passed before the awaited state was observed."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.01) -> Any:
    """Poll ``predicate`` until truthy; raise :class:`ChaosTimeout` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- sizes and outcomes -----------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big each scenario runs. The defaults are the CI size (the whole suite in a few
    minutes on 2 cores); :meth:`scaled` grows them for soak runs."""

    crash_jobs: int = 500
    crash_secs: float = 0.02
    storm_jobs: int = 2000
    storm_kills: int = 20
    graceful_jobs: int = 300
    graceful_interrupts: int = 3
    producer_jobs: int = 10_000
    producer_trials: int = 4
    producer_budget_secs: float = 8.0
    flow_jobs: int = 200
    seed: int = 7

    @classmethod
    def scaled(cls, jobs: int, seed: int = 7) -> Sizes:
        """Soak sizes: ``jobs`` for the crash storm, the rest in proportion."""
        return cls(crash_jobs=max(50, jobs // 4), storm_jobs=jobs,
                   storm_kills=max(5, jobs // 100), graceful_jobs=max(100, jobs // 6),
                   graceful_interrupts=max(3, jobs // 700),
                   producer_jobs=max(10_000, jobs), producer_trials=max(4, jobs // 2500),
                   producer_budget_secs=max(8.0, jobs / 250),
                   flow_jobs=max(200, jobs // 10), seed=seed)


@dataclass
class Outcome:
    """What one scenario did on one backend; ``failures`` lists every broken promise."""

    scenario: str
    backend: str
    submitted: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures and self.lost == 0

    def check(self, ok: object, message: str) -> bool:
        """Record ``message`` as a failure unless ``ok``; returns ``bool(ok)``."""
        if not ok:
            self.failures.append(message)
        return bool(ok)

    def merge(self, other: Outcome) -> None:
        """Add a sub-scenario's counts, failures and notes to this one."""
        for attr in ("submitted", "completed", "lost", "duplicated"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        self.failures += [f"{other.scenario}: {f}" for f in other.failures]
        self.notes += other.notes

    def report(self) -> str:
        lines = [f"{self.scenario} on {self.backend}: submitted={self.submitted} "
                 f"completed={self.completed} lost={self.lost} duplicated={self.duplicated}"]
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- the execution log ------------------------------------------------------------------


@dataclass
class Run:
    """One attempt of one job as the execution log saw it."""

    pid: int
    attempt: int
    started: float
    ended: float | None = None


class ExecLog:
    """Parses ``chaos.log`` incrementally: ``start``/``end`` lines from the tasks and
    ``ack`` lines from instrumented backends, in the order the kernel appended them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.runs: dict[str, list[Run]] = {}
        self.acks: list[tuple[str, int]] = []
        self.premature_acks: list[tuple[str, int]] = []  # acked before that pid's run ended
        self.faulted: set[str] = set()  # jobs whose ack/extend an injected fault broke
        self.ended = 0
        self.problems: list[str] = []

    def refresh(self) -> ExecLog:
        """Read the lines appended since the last call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))
        return self

    def _line(self, text: str) -> None:
        parts = text.split()
        try:
            kind, job_id, pid = parts[0], parts[1], int(parts[2])
            if kind == "fault":
                self.faulted.add(job_id)
                return
            if kind == "ack":
                self.acks.append((job_id, pid))
                if not any(r.pid == pid and r.ended for r in self.runs.get(job_id, ())):
                    self.premature_acks.append((job_id, pid))
                return
            attempt, at = int(parts[3]), float(parts[4])
        except (IndexError, ValueError):
            self.problems.append(f"malformed log line {text!r}")
            return
        runs = self.runs.setdefault(job_id, [])
        if kind == "start":
            runs.append(Run(pid, attempt, at))
        elif kind == "end":
            for run in reversed(runs):
                if run.pid == pid and run.ended is None:
                    run.ended = at
                    self.ended += 1
                    break
            else:
                self.problems.append(f"end without start: {text!r}")

    def executions(self, job_id: str) -> int:
        return len(self.runs.get(job_id, ()))

    def in_flight(self, pid: int) -> set[str]:
        """Jobs ``pid`` has started and not finished."""
        return {job_id for job_id, runs in self.runs.items()
                if any(r.pid == pid and r.ended is None for r in runs)}


# --- worker processes -------------------------------------------------------------------


class WorkerProc:
    """One ``python -m nuvom_kernel runworker`` subprocess with its output in a file (a
    pipe nobody reads would block a chatty worker)."""

    def __init__(self, project: Project, threads: int, args: Sequence[str],
                 env: dict[str, str], name: str) -> None:
        self.project = project
        self.name = name
        self.log_path = project.root / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom_kernel", "runworker", "--workers", str(threads),
             *args], cwd=project.root, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")  # the child writes it directly

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def started(self) -> bool:
        return " started: " in self.output()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap: no handler runs, nothing is released or acked."""
        self.signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._out.close()


# --- a project ------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


class Project:
    """A throwaway project directory on one backend: config, task module, workers.

    :param root: an empty directory; it becomes the workers' cwd.
    :param backend: queue and result backend name (``sqlite``, ``file``, ...).
    :param visibility: lease length; short, so crash recovery fits in a test.
    :param queue_backend: a different queue backend name for the workers (a wrapper
        registered through ``.nuvom_plugins.toml``); the result backend stays ``backend``.
    :param targets: extra ``[plugins]`` targets, ``{"hooks": ["module:attr"]}``.
    :param env: extra environment for every worker (``NUVOM_*`` settings).
    """

    def __init__(self, root: Path, backend: str, *, visibility: float = 2.0,
                 queue_backend: str | None = None,
                 targets: dict[str, list[str]] | None = None,
                 env: dict[str, str] | None = None, data_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.queue_backend = queue_backend or backend
        self.log_path = self.root / LOG_NAME
        self.log = ExecLog(self.log_path)
        self.workers: list[WorkerProc] = []
        self.killed: set[int] = set()
        self._kernel: Kernel | None = None
        self._tasks: ModuleType | None = None
        self._counter = 0
        self.env = {
            "NUVOM_QUEUE_BACKEND": self.queue_backend,
            "NUVOM_RESULT_BACKEND": backend,
            "NUVOM_VISIBILITY_TIMEOUT_SECS": str(visibility),
            "NUVOM_RETRY_DELAY_SECS": "0.05",
            "NUVOM_LOG_LEVEL": "INFO",
            "CHAOS_LOG": str(self.log_path),
            **({"NUVOM_DATA_DIR": str(data_dir)} if data_dir is not None else {}),
            **(env or {}),
        }
        (self.root / f"{TASKS_MODULE}.py").write_text(TASKS_SOURCE)
        self.write_config(targets or {})

    # -- files ------------------------------------------------------------------------

    def write_config(self, targets: dict[str, list[str]]) -> None:
        lines = []
        if targets:
            lines.append("[plugins]")
            lines += [f"{key} = {_toml_value(list(v))}" for key, v in targets.items()]
        names = {self.backend, self.queue_backend}
        for name in sorted(names):
            base = name.split("_", 1)[1] if name.startswith(WRAPPER_PREFIXES) else name
            settings = BACKEND_SETTINGS.get(base)
            if settings:
                lines.append(f"\n[plugins.{name}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
        (self.root / ".nuvom_plugins.toml").write_text("\n".join(lines) + "\n")

    def write(self, name: str, source: str) -> Path:
        """Write a module into the project (workers import it from their cwd) and forget
        any stale import of that name in this process."""
        path = self.root / name
        path.write_text(source)
        sys.modules.pop(name.removesuffix(".py"), None)
        return path

    @property
    def data_dir(self) -> Path:
        raw = self.env.get("NUVOM_DATA_DIR")
        return Path(raw) if raw else self.root / ".nuvom"

    # -- this process's view ----------------------------------------------------------

    def kernel(self) -> Kernel:
        """A kernel in this process on the *plain* backend (never a fault-injecting
        wrapper), for producing and judging."""
        if self._kernel is None:
            if str(self.root) not in sys.path:
                sys.path.insert(0, str(self.root))  # .nuvom_plugins.toml targets live here
            environ = {**self.env, "NUVOM_QUEUE_BACKEND": self.backend}
            self._kernel = Kernel(root=self.root, environ=environ)
        return self._kernel

    def tasks(self) -> ModuleType:
        """The chaos task module, loaded from the project file under its real name (so the
        jobs it enqueues name a module the workers can import)."""
        if self._tasks is None:
            spec = importlib.util.spec_from_file_location(
                TASKS_MODULE, self.root / f"{TASKS_MODULE}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._tasks = module
        return self._tasks

    def enqueue(self, task_name: str, items: Sequence[tuple[Any, ...]]) -> list[str]:
        """``.map()`` the task over ``items`` (one backend call); returns the job ids."""
        task = getattr(self.tasks(), task_name)
        with use_kernel(self.kernel()):
            return [job.id for job in task.map(list(items))]

    def enqueue_raw(self, func_name: str, args: Sequence[Any], module: str | None = None
                    ) -> str:
        """Enqueue a job by task name through the dispatcher, without the task existing."""
        envelope = Envelope.for_call(func_name, module, TaskOptions(), list(args), {})
        return enqueue(self.kernel(), [(envelope, envelope.job())])[0].id

    def record(self, job_id: str) -> JobRecord | None:
        try:
            return self.kernel().results.get(job_id)
        except Exception as exc:  # a corrupt record is reported, not fatal to the judge
            return JobRecord(job_id=job_id, func_name="<unreadable>",
                             status=JobStatus.UNKNOWN, error_message=repr(exc))

    def count(self, status: JobStatus = JobStatus.SUCCEEDED) -> int:
        return int(self.kernel().results.counts().get(status.value, 0))

    # -- workers ----------------------------------------------------------------------

    def worker_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                           env.get("PYTHONPATH")]))
        env.update(self.env)
        env.update(extra or {})
        return env

    def start_worker(self, threads: int = 4, *args: str,
                     env: dict[str, str] | None = None) -> WorkerProc:
        self._counter += 1
        worker = WorkerProc(self, threads, args, self.worker_env(env), f"w{self._counter}")
        self.workers.append(worker)
        return worker

    def kill(self, worker: WorkerProc) -> None:
        worker.kill()
        self.killed.add(worker.pid)

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive()]

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} (pid {w.pid}) ---\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        """Stop every worker still running (SIGKILL: the judging is over) and let go."""
        for worker in self.workers:
            if worker.alive():
                worker.kill()
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
        with contextlib.suppress(ValueError):
            sys.path.remove(str(self.root))

    # -- judging ----------------------------------------------------------------------

    def wait_succeeded(self, n: int, timeout: float, what: str = "", *,
                       settled: bool = True) -> None:
        """Wait until ``n`` records are SUCCEEDED and (``settled``) nothing is waiting or
        leased any more: a record can be SUCCEEDED while its job runs again (its ack was
        lost), and judging then would read an outcome about to be replaced."""
        queue = self.kernel().queue

        def done() -> bool:
            if self.count() < n:
                return False
            return not settled or (queue.qsize() == 0 and queue.stats().in_flight == 0)

        try:
            wait_for(done, timeout, what or f"{n} jobs SUCCEEDED", interval=0.05)
        except ChaosTimeout as exc:
            counts = self.kernel().results.counts()
            raise ChaosTimeout(f"{exc}; records: {counts}; queue: {self.kernel().queue.stats()}"
                               ) from None

    def judge(self, out: Outcome, job_ids: Sequence[str], *,
              expect: JobStatus = JobStatus.SUCCEEDED) -> dict[str, JobRecord | None]:
        """Fill ``out`` from the records and the execution log: completed, lost,
        duplicated, and every duplicate that no kill explains."""
        self.log.refresh()
        records = {job_id: self.record(job_id) for job_id in job_ids}
        out.submitted += len(job_ids)
        lost = [j for j, r in records.items() if r is None or r.status is not expect]
        out.completed += len(job_ids) - len(lost)
        out.lost += len(lost)
        out.check(not lost, f"{len(lost)} job(s) did not end {expect.value}: "
                  + ", ".join(f"{j}={getattr(records[j], 'status', None)}" for j in lost[:5]))
        dups = [j for j in job_ids if self.log.executions(j) > 1]
        out.duplicated += len(dups)
        unexplained = []
        for job_id in dups:
            runs = self.log.runs[job_id]
            if job_id not in self.log.faulted and \
                    any(run.pid not in self.killed for run in runs[:-1]):
                unexplained.append(job_id)
        out.check(not unexplained,
                  f"{len(unexplained)} job(s) ran more than once although no killed worker "
                  f"held them and no injected fault hit them: "
                  f"{[(j, self.log.runs[j]) for j in unexplained[:3]]}")
        low = [j for j, r in records.items()
               if r is not None and r.attempts < self.log.executions(j)]
        out.check(not low, f"{len(low)} record(s) count fewer attempts than executions: "
                  f"{[(j, records[j].attempts, self.log.executions(j)) for j in low[:3]]}")
        never = [j for j in job_ids if expect is JobStatus.SUCCEEDED
                 and not any(r.ended for r in self.log.runs.get(j, ()))]
        out.check(not never, f"{len(never)} SUCCEEDED job(s) never finished a run in the "
                  f"execution log: {never[:5]}")
        out.check(not self.log.problems, f"execution log problems: {self.log.problems[:3]}")
        return records


def _pid_of(record: JobRecord | None) -> int | None:
    worker = record.worker if record is not None else None
    try:
        return int(worker.rsplit(":", 1)[1]) if worker else None
    except ValueError:
        return None


@contextlib.contextmanager
def project_for(base: Path, backend: str, name: str, **kwargs: Any) -> Iterator[Project]:
    project = Project(base / f"{backend}-{name}", backend, **kwargs)
    try:
        yield project
    finally:
        project.close()


# --- scenario 1: crash mid-job ----------------------------------------------------------


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
        held = log.refresh().in_flight(victim.pid)
        out.notes.append(f"killed pid {victim.pid} holding {len(held)} running job(s)")
        project.start_worker(4)
        project.wait_succeeded(n, 60 + n * sizes.crash_secs)
        records = project.judge(out, ids)
        out.check(held, "the victim held no running job when killed (nothing was tested)")
        for job_id in held:
            with use_kernel(project.kernel()):
                attempts = get_job(job_id).attempts
            out.check(attempts >= 2 and log.executions(job_id) >= 2,
                      f"job {job_id} was running in the killed worker but shows "
                      f"attempts={attempts}, executions={log.executions(job_id)}")
            out.check(_pid_of(records[job_id]) != victim.pid,
                      f"job {job_id}: the killed worker is named as the one that recorded it")
        _stop_all(project, out)
    return out


def _stop_all(project: Project, out: Outcome, grace: float = 30.0) -> None:
    """Stop the live workers gracefully; each must exit 0.

    A worker still importing has no signal handler yet (a SIGINT there is a plain
    KeyboardInterrupt, harmless because it holds no lease), so wait for it to be serving.
    """
    for worker in project.live():
        with contextlib.suppress(ChaosTimeout):
            wait_for(lambda w=worker: w.started() or not w.alive(), 30, "worker start-up")
    for worker in project.live():
        worker.signal(signal.SIGINT)
    for worker in project.workers:
        if worker.pid in project.killed or worker.proc.returncode is not None:
            continue
        try:
            code = worker.wait(grace)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = -9
        out.check(code == 0, f"worker {worker.name} exited {code} after SIGINT:\n"
                             f"{worker.tail()}")


# --- scenario 2: crash storm ------------------------------------------------------------


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
        wrong = [j for j in ids if _pid_of(records[j]) in project.killed
                 and log.runs.get(j) and log.runs[j][-1].pid not in project.killed]
        out.check(not wrong, f"{len(wrong)} record(s) were written by a killed worker although "
                             f"a later run finished them: {wrong[:5]}")
        out.notes.append(f"{kills} kills caught {mid_job} job(s) mid-run; {out.duplicated} "
                         "job(s) ran more than once")
        _stop_all(project, out)
    return out


# --- scenario 3: graceful shutdown -------------------------------------------------------


def scenario_graceful(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """SIGINT drains: running jobs finish and are recorded by the interrupted worker, leased
    but unstarted ones go back at once (a 60 s visibility timeout would stall them), exit 0
    within the grace period, and no job ever runs twice."""
    out = Outcome("graceful", backend)
    grace = 20.0
    with project_for(base, backend, "graceful", visibility=60.0) as project:
        n = sizes.graceful_jobs
        ids = project.enqueue("work", [(i, 0.03) for i in range(n)])
        project.start_worker(2, "--grace-period", str(grace))  # keeps serving throughout
        victim = project.start_worker(4, "--grace-period", str(grace))
        log = project.log
        finishing: dict[str, int] = {}
        for k in range(sizes.graceful_interrupts):
            floor = (k + 1) * n // (sizes.graceful_interrupts + 2)
            wait_for(lambda v=victim, f=floor: log.refresh().ended >= f
                     and len(log.in_flight(v.pid)) >= 2, 60,
                     f"worker {victim.name} busy past {floor} jobs")
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
            victim = project.start_worker(4, "--grace-period", str(grace))
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
        _stop_all(project, out)
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
            stats = kernel.queue.stats()
            out.check(stats.in_flight == 0 and kernel.queue.qsize() == len(ids),
                      f"{label}: after exit {stats.in_flight} lease(s) in flight and "
                      f"{kernel.queue.qsize()} of {len(ids)} job(s) waiting: running jobs were "
                      "not returned at once")
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
        _stop_all(project, out)
    return out


# --- scenario 4: producer crash ---------------------------------------------------------

PRODUCER_SOURCE = '''\
"""Chaos producer: ``.map()`` N jobs; marks the moment the batch goes to the backend."""

import os
import sys
import time

sys.path.insert(0, os.getcwd())

import chaos_tasks
from nuvom_kernel import hookimpl
from nuvom_kernel.kernel import Kernel, set_kernel

N = int(sys.argv[1])


class Probe:
    """nuvom_before_enqueue runs for every job right before the one backend call."""

    seen = 0
    marked = 0.0

    @hookimpl
    def nuvom_before_enqueue(self, job):
        Probe.seen += 1
        if Probe.seen == N:
            Probe.marked = time.monotonic()
            os.close(os.open("producer.pushing", os.O_WRONLY | os.O_CREAT, 0o644))


kernel = Kernel(plugins={"chaos-probe": Probe()})
set_kernel(kernel)
kernel.queue.qsize()  # open the backend (and its files) before anything is timed
jobs = chaos_tasks.work.map([(i, 0.0) for i in range(N)])
elapsed = time.monotonic() - Probe.marked
with open("producer.done", "w") as fh:
    fh.write(f"{len(jobs)} {elapsed}")
'''


def scenario_producer_crash(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """SIGKILL a producer in the middle of ``.map()`` of N jobs: a transactional backend
    keeps all or none of the batch, and no backend ever shows a half-written job."""
    out = Outcome("producer", backend)
    atomic = ATOMIC_PUSH.get(backend, True)
    n = sizes.producer_jobs
    with project_for(base, backend, "producer") as project:
        project.write("chaos_producer.py", PRODUCER_SOURCE)
        kernel = project.kernel()
        env = project.worker_env()
        pushing, done = project.root / "producer.pushing", project.root / "producer.done"

        def produce(kill_after: float | None, on_visible: bool = False) -> tuple[bool, bool]:
            """Run one producer; kill it ``kill_after`` seconds into its backend call, or
            (``on_visible``) as soon as the queue shows any of its jobs. Returns (killed
            while pushing, push completed)."""
            pushing.unlink(missing_ok=True)
            done.unlink(missing_ok=True)
            proc = subprocess.Popen([sys.executable, "chaos_producer.py", str(n)],
                                    cwd=project.root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            try:
                if kill_after is None and not on_visible:
                    output = proc.communicate(timeout=300)[0].decode(errors="replace")
                    if proc.returncode != 0:
                        raise RuntimeError(f"producer failed:\n{output[-2000:]}")
                    return False, True
                wait_for(lambda: pushing.exists() or proc.poll() is not None, 120,
                         "the producer to reach its backend call", interval=0.0005)
                if on_visible:
                    wait_for(lambda: kernel.queue.qsize() > 0 or proc.poll() is not None, 120,
                             "the first job of the batch to become visible", interval=0.001)
                else:
                    time.sleep(kill_after)  # the kill point itself, not a synchronisation
                proc.kill()
                proc.wait(30)
                return not done.exists(), done.exists()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()

        def inspect(label: str) -> int:
            """Claim everything there is (a claim also finishes publishing a batch whose
            producer died after its commit), decode every message, then empty the queue."""
            queue = kernel.queue
            decoded, bad = 0, []
            while True:
                leases = queue.claim(1000)
                if not leases:
                    break
                for lease in leases:
                    try:
                        job = Envelope.from_message(lease.message, kernel.serializer).job()
                        if job.func_name != "chaos_work":
                            raise ValueError(f"task {job.func_name!r}")
                        decoded += 1
                    except Exception as exc:
                        bad.append(f"{lease.id}: {exc!r}")
            stats = queue.stats()
            out.check(not bad, f"{label}: {len(bad)} visible job(s) do not decode: {bad[:3]}")
            out.check(not stats.quarantined,
                      f"{label}: half-written entries were quarantined: {stats.quarantined[:3]}")
            queue.clear()
            return decoded

        def took() -> float:
            """How long the last uncrashed producer spent in its backend call."""
            return float(done.read_text().split()[1])

        produce(None)
        calibrated = took()
        out.check(inspect("uncrashed run") == n, "an uncrashed .map() did not enqueue its batch")
        results: list[tuple[str, bool, int]] = []

        def trial(label: str, kill_after: float | None, on_visible: bool = False) -> bool:
            """One killed producer, judged; returns whether the kill landed mid-call."""
            mid, finished = produce(kill_after, on_visible)
            count = inspect(f"kill at {label}")
            if atomic:
                out.check(count in (0, n), f"kill at {label} into .map() of {n}: {count} "
                                           f"jobs enqueued, expected 0 or {n}")
            if finished:
                out.check(count == n, f"the producer finished but {count} of {n} are queued")
            results.append((label, mid, count))
            return mid

        # A slow backend call gets fewer timed kills (the CI budget), never fewer than one.
        timed = max(1, min(sizes.producer_trials, int(sizes.producer_budget_secs / calibrated)))
        for k in range(timed):
            # Spread the kills over the backend call, denser towards its end, where a
            # non-transactional backend makes its writes visible.
            fraction = 0.05 + 0.93 * (k / (timed - 1)) ** 0.5 if timed > 1 else 0.5
            if not trial(f"+{fraction * calibrated * 1000:.0f} ms", fraction * calibrated) \
                    and done.exists():
                calibrated = min(calibrated, took())  # the first run was slow (cold caches)
        for _ in range(3):  # make sure at least one kill lands inside the call
            if any(mid for _, mid, _ in results):
                break
            trial(f"+{calibrated * 300:.0f} ms", calibrated * 0.3)
            if done.exists():
                calibrated = min(calibrated, took())
        # One more kill the moment the batch starts to show: mid-publication for a backend
        # that makes jobs visible one by one, just after the commit for a transactional one.
        trial("first visible job", None, on_visible=True)
        out.check(any(mid for _, mid, _ in results),
                  "no kill landed inside the backend call (nothing was tested)")
        partial = sum(1 for _, mid, count in results if mid and 0 < count < n)
        out.notes.append(
            f"backend call took {calibrated * 1000:.0f} ms for {n} jobs; kills mid-call: "
            + ", ".join(f"{label} -> {c}" for label, mid, c in results if mid)
            + ("; all-or-none" if atomic else
               f"; {partial} partial batch(es), every visible job whole"))
        leftovers = _hidden_files(project.data_dir)
        if leftovers:
            out.notes.append(f"{leftovers} invisible temp file(s) left by killed producers "
                             "(the backend sweeps them by age)")
        # The backend is not wedged by a producer killed inside its transaction.
        ids = project.enqueue("work", [(i, 0.0) for i in range(50)])
        project.start_worker(2)
        project.wait_succeeded(len(ids), 60, "jobs after the producer crashes")
        project.judge(out, ids)
        _stop_all(project, out)
    return out


def _hidden_files(directory: Path) -> int:
    """Dot files under ``directory`` other than markers and locks: writers' temp files."""
    if not directory.exists():
        return 0
    return sum(1 for p in directory.rglob(".*") if p.is_file() and "-marker" not in p.name
               and p.name != ".lock")


# --- scenario 5: disk full / read-only data dir ------------------------------------------

#: Backends that keep everything under ``data_dir``, so a small tmpfs mounted there can run
#: out of space for real. Others (a server's storage) get the fault-hook variant.
DISK_BACKENDS = frozenset({"sqlite", "file"})


def _squeeze_sqlite(data_dir: Path) -> None:
    """Empty the WAL into the database and truncate it: a WAL that was reset keeps its old
    blocks, and writes into those would succeed on a full disk."""
    conn = sqlite3.connect(data_dir / "nuvom.db", timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def _squeeze_file(data_dir: Path) -> None:
    """Pad each result segment to the end of its last allocated block with blank lines
    (the reader skips them): an append into that slack would succeed on a full disk."""
    for segment in (data_dir / "results").glob("results-*.jsonl"):
        st = segment.stat()
        slack = st.st_blocks * 512 - st.st_size
        if slack > 0:
            with segment.open("ab") as fh:
                fh.write(b"\n" * slack)


#: Per backend: make every later write need new blocks before the disk is filled.
SQUEEZERS: dict[str, Callable[[Path], None]] = {"sqlite": _squeeze_sqlite,
                                                 "file": _squeeze_file}


def _fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte; returns the filler."""
    path = directory / "chaos-filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def _mounted(*command: str, target: Path) -> Iterator[bool]:
    """Run a ``mount`` command; yields whether it worked, unmounts (lazily) after."""
    done = subprocess.run(["mount", *command, str(target)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


_STORAGE_WORDS = ("no space", "disk is full", "read-only", "readonly", "unable to open",
                  "permission", "injected")


def _check_enqueue_refused(out: Outcome, project: Project, kernel: Kernel, label: str,
                           before: int | None) -> None:
    """``.delay()`` and ``.map()`` must raise a clear NuvomError and store nothing (counted
    here unless ``before`` is ``None``: the caller counts once the storage is readable)."""
    from nuvom_kernel.errors import NuvomError

    tasks = project.tasks()
    for what, call in (("delay", lambda: tasks.work.delay(1, 0.0)),
                       ("map", lambda: tasks.work.map([(i, 0.0) for i in range(200)]))):
        with use_kernel(kernel):
            try:
                call()
            except Exception as exc:
                text = f"{exc} {exc.__cause__ or ''}".lower()
                out.check(isinstance(exc, NuvomError) and backend_named(exc, project)
                          and any(w in text for w in _STORAGE_WORDS),
                          f"{label}: .{what}() raised {type(exc).__module__}."
                          f"{type(exc).__name__}: {exc} -- expected a NuvomError naming the "
                          "backend and the storage problem")
            else:
                out.check(False, f"{label}: .{what}() succeeded")
    if before is not None:
        after = _visible(project)
        out.check(after == before, f"{label}: {after - before} job(s) of refused calls were "
                                   "stored")


def _unrecorded_line(worker: WorkerProc, job_id: str) -> str:
    """The worker's log line saying ``job_id``'s outcome could not be recorded, if any."""
    return next((line for line in worker.output().splitlines()
                 if job_id in line and "could not" in line and "record" in line), "")


def backend_named(exc: Exception, project: Project) -> bool:
    return repr(project.queue_backend) in str(exc) or repr(project.backend) in str(exc)


def _visible(project: Project) -> int:
    """Jobs waiting, counted by a fresh kernel (a full disk may have broken the old one's
    view, and the count must come from what is stored)."""
    with contextlib.suppress(Exception):
        project.kernel().close()
    project._kernel = None
    return project.kernel().queue.qsize()


def scenario_disk(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A full disk and a read-only data dir: ``.delay()`` raises a clear error and stores
    nothing; a worker that cannot record an outcome does not ack (the job runs again once
    there is room) and logs why. Real tmpfs and read-only bind mounts where the backend keeps
    its data locally and we may mount; a fault-injecting backend wrapper otherwise."""
    if backend in DISK_BACKENDS and _can_mount() and os.environ.get("CHAOS_DISK") != "hook":
        return _disk_for_real(base, backend, sizes)
    return _disk_by_hook(base, backend, sizes)


def _disk_for_real(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("disk", backend)
    root = base / f"{backend}-disk"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    squeeze = SQUEEZERS.get(backend, lambda path: None)
    with _mounted("-t", "tmpfs", "-o", "size=16m", "tmpfs", target=data) as ok:
        if not ok:
            return _disk_by_hook(base, backend, sizes)
        out.notes.append("real faults: a 16 MB tmpfs filled to the last byte, then a "
                         "read-only bind mount")
        project = Project(root, backend, data_dir=data)
        try:
            ids = project.enqueue("work", [(i, 0.0) for i in range(30)])
            before = _visible(project)
            squeeze(data)
            filler = _fill(data)
            _check_enqueue_refused(out, project, project.kernel(), "disk full", before)
            filler.unlink()
            # A worker whose result cannot be written: the gated job is running when the
            # disk fills, finishes while it is full, and must stay unacked until there is
            # room again.
            gated = project.enqueue("gated", [(0, "gate-disk")])[0]
            worker = project.start_worker(2)
            project.wait_succeeded(len(ids), 60, settled=False)
            wait_for(lambda: project.log.refresh().executions(gated) == 1, 30,
                     "the gated job to start")
            squeeze(data)
            filler = _fill(data)
            (project.root / "gate-disk").touch()
            wait_for(lambda: _unrecorded_line(worker, gated), 30,
                     "the worker to report the outcome it could not record")
            out.check(project.log.refresh().executions(gated) == 1,
                      "the job ran again while its first outcome was unrecorded and unacked")
            filler.unlink()
            project.killed.add(worker.pid)  # its unrecorded run is expected to be repeated
            project.wait_succeeded(len(ids) + 1, 60, "the unrecorded job to run again")
            records = project.judge(out, [*ids, gated])
            record = records[gated]
            out.check(record is not None and record.attempts >= 2
                      and project.log.executions(gated) >= 2,
                      f"the job whose outcome could not be recorded shows attempts="
                      f"{getattr(record, 'attempts', None)}, runs="
                      f"{project.log.executions(gated)}; expected a second delivery")
            line = _unrecorded_line(worker, gated)
            out.check(any(w in line.lower() for w in _STORAGE_WORDS),
                      f"the worker's log does not say why the outcome was lost: {line!r}")
            _stop_all(project, out)
            out.check(not project.kernel().queue.stats().quarantined,
                      "a half-written entry was quarantined after the disk filled")
            # Read-only data dir: bind it onto itself read-only.
            before = _visible(project)
            project.close()
            with _mounted("--bind", str(data), target=data) as bound:
                ro = bound and subprocess.run(
                    ["mount", "-o", "remount,bind,ro", str(data)], capture_output=True
                ).returncode == 0
                if ro:
                    _check_enqueue_refused(out, project, project.kernel(), "read-only",
                                           None)
                    project.close()
                else:
                    out.notes.append("read-only bind mount refused here; not tested")
            out.check(_visible(project) == before, "the read-only phase changed the queue")
        finally:
            project.close()
    return out


FAULTY_SOURCE = '''\
"""Chaos storage faults: the real {backend} backends, failing with ENOSPC while the flag
file exists (for backends whose storage a local tmpfs cannot fill)."""

import errno
import os

from {qmodule} import {qname} as _Queue
from {rmodule} import {rname} as _Results

FLAG = os.environ.get("CHAOS_DISK_FLAG", "disk-full")


def _full(what):
    if os.path.exists(FLAG):
        raise OSError(errno.ENOSPC, f"No space left on device (injected into {{what}})")


class FaultyQueue(_Queue):
    name = "faulty_{backend}"

    def push(self, messages):
        _full("push")
        return super().push(messages)


class FaultyResults(_Results):
    name = "faulty_{backend}"

    def put(self, record):
        _full("put")
        return super().put(record)
'''


def _disk_by_hook(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("disk", backend)
    out.notes.append("simulated faults: backend wrappers raising ENOSPC (no tmpfs here)")
    with project_for(base, backend, "probe-disk") as probe:
        qcls, rcls = type(probe.kernel().queue), type(probe.kernel().results)
    faulty = f"faulty_{backend}"
    root = base / f"{backend}-disk-hook"
    flag = root / "disk-full"
    with project_for(base, backend, "disk-hook", queue_backend=faulty,
                     targets={"queue_backend": ["chaos_faulty:FaultyQueue"],
                              "result_backend": ["chaos_faulty:FaultyResults"]},
                     env={"NUVOM_RESULT_BACKEND": faulty,
                          "CHAOS_DISK_FLAG": str(flag)}) as project:
        project.write("chaos_faulty.py", FAULTY_SOURCE.format(
            backend=backend, qmodule=qcls.__module__, qname=qcls.__qualname__,
            rmodule=rcls.__module__, rname=rcls.__qualname__))
        os.environ["CHAOS_DISK_FLAG"] = str(flag)  # the in-process producer's wrapper too
        try:
            ids = project.enqueue("work", [(i, 0.0) for i in range(30)])
            producer = Kernel(root=project.root, environ=project.env)
            try:
                flag.touch()
                _check_enqueue_refused(out, project, producer, "ENOSPC", len(ids))
                flag.unlink()
            finally:
                producer.close()
            gated = project.enqueue("gated", [(0, "gate-disk")])[0]
            worker = project.start_worker(2)
            project.wait_succeeded(len(ids), 60, settled=False)
            wait_for(lambda: project.log.refresh().executions(gated) == 1, 30,
                     "the gated job to start")
            flag.touch()
            (project.root / "gate-disk").touch()
            wait_for(lambda: _unrecorded_line(worker, gated), 30,
                     "the worker to report the outcome it could not record")
            flag.unlink()
            project.killed.add(worker.pid)
            project.wait_succeeded(len(ids) + 1, 60, "the unrecorded job to run again")
            records = project.judge(out, [*ids, gated])
            out.check(getattr(records[gated], "attempts", 0) >= 2,
                      "the job whose outcome could not be recorded did not run again")
            _stop_all(project, out)
        finally:
            os.environ.pop("CHAOS_DISK_FLAG", None)
    return out


# --- scenario 6: corrupt data -----------------------------------------------------------


@dataclass
class Corruption:
    """What a backend-specific corruptor did and what the system must make of it."""

    quarantined: int = 0  # queue entries that must be moved aside (and listed by status)
    failed: list[str] = field(default_factory=list)  # job ids that must end FAILED
    notes: list[str] = field(default_factory=list)


def _corrupt_sqlite(project: Project, victim: str) -> Corruption:
    """Rows another tool could have written: wrong column types (possible only with
    ``ignore_check_constraints``), a real job's body cut in half, an unreadable record."""
    done = Corruption()
    conn = sqlite3.connect(project.data_dir / "nuvom.db", timeout=30, isolation_level=None)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(nuvom_queue)")}
        now = time.time()
        conn.execute("PRAGMA ignore_check_constraints = ON")
        for k, override in enumerate(({"body": "a text body"}, {"priority": "high"},
                                      {"created_at": "yesterday"})):
            row = {"id": f"corrupt-row-{k}", "seq": time.time_ns() + k, "queue": "default",
                   "priority": 0, "created_at": now, "available_at": now, "visible_at": now,
                   "deliveries": 0, "body": b"{}", **override}
            names = [c for c in row if c in columns]
            conn.execute(f"INSERT INTO nuvom_queue ({', '.join(names)}) VALUES "
                         f"({', '.join('?' * len(names))})", [row[c] for c in names])
            done.quarantined += 1
        conn.execute("PRAGMA ignore_check_constraints = OFF")
        changed = conn.execute("UPDATE nuvom_queue SET body = substr(body, 1, length(body) / 2)"
                               " WHERE id = ?", (victim,)).rowcount
        if changed == 1:
            done.failed.append(victim)  # a well-typed row whose payload no longer decodes
        result_columns = [row[1] for row in conn.execute("PRAGMA table_info(nuvom_results)")]
        record = JobRecord(job_id="corrupt-record", func_name="chaos_work",
                           status=JobStatus.FAILED).to_dict()
        values = {k: json.dumps(v) if k in ("args", "kwargs", "options", "result", "history")
                  else v for k, v in record.items()}
        values["history"] = '[{"attempt": 1, "kind": '  # torn JSON
        names = [c for c in result_columns if c in values]
        conn.execute(f"INSERT INTO nuvom_results ({', '.join(names)}) VALUES "
                     f"({', '.join('?' * len(names))})", [values[c] for c in names])
        done.notes.append("3 mistyped queue rows, 1 truncated payload, 1 torn result record")
    finally:
        conn.close()
    return done


def _corrupt_file(project: Project, victim: str) -> Corruption:
    """Files another tool could have left: a stray name, garbage under a valid name, a real
    job cut in half, a garbage line and a torn last line in the results log."""
    done = Corruption()
    ready = project.data_dir / "queue" / "ready"
    (ready / "garbage.txt").write_bytes(b"not a job\n")
    now_us = int(time.time() * 1_000_000)
    (ready / f"{2**31:010d}{now_us:017d}000000.default.corruptfile1.0").write_bytes(
        b"\x00\xff random bytes")
    done.quarantined += 2
    for path in ready.iterdir():
        if f".{victim}." in path.name:
            os.truncate(path, path.stat().st_size // 2)
            done.quarantined += 1  # a checksummed file cut short is moved aside, no record
    results = project.data_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    segments = sorted(results.glob("results-*.jsonl")) or [results / "results-00000001.jsonl"]
    with segments[-1].open("ab") as fh:
        fh.write(b"this line is not json\n")
        fh.write(b'{"_nv":1,"op":"put","rec":{"job_id":"torn-rec')  # a writer died here
    done.notes.append("2 bad files, 1 truncated job file, 2 bad result lines")
    return done


#: Backend-specific corruption; a backend without one still gets every generic corruption.
CORRUPTORS: dict[str, Callable[[Project, str], Corruption]] = {
    "sqlite": _corrupt_sqlite,
    "file": _corrupt_file,
}


def _generic_corruption(project: Project) -> dict[str, str]:
    """Messages pushed through the backend SPI that no worker can run; returns job id ->
    the error type its FAILED record must name."""
    kernel = project.kernel()
    expected: dict[str, str] = {}
    bad = "nuvom_kernel.errors.SerializationError"
    missing = "nuvom_kernel.errors.UnknownTaskError"

    def push(body: bytes) -> None:
        job_id = f"corrupt{len(expected)}x{random.getrandbits(32):08x}"
        kernel.queue.enqueue(Message(id=job_id, body=body, queue="default"))
        expected[job_id] = bad

    envelope = kernel.serializer.loads(
        Envelope.for_call("chaos_work", TASKS_MODULE, TaskOptions(), [1], {})
        .to_body(kernel.serializer))
    whole = kernel.serializer.dumps(envelope)
    push(b"\xff\xfe\x00 not even text")  # undecodable payload
    push(whole[: len(whole) // 2])  # truncated envelope
    push(kernel.serializer.dumps({**envelope, "v": 99}))  # a future kernel's envelope
    push(kernel.serializer.dumps({**envelope, "args": "not a list", "opts": 5}))
    expected[project.enqueue_raw("chaos_removed_task", [1], TASKS_MODULE)] = missing
    expected[project.enqueue_raw("chaos_moved_task", [1], "chaos_module_gone")] = missing
    return expected


def _brief(record: JobRecord | None) -> object:
    if record is None:
        return None
    return (record.status.value, record.error_type, record.attempts, record.error_message)


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nuvom_kernel", *args], cwd=project.root,
                          env=project.worker_env({"NUVOM_QUEUE_BACKEND": project.backend}),
                          capture_output=True, text=True, timeout=120)


def scenario_corrupt(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Garbage entries, truncated payloads, missing tasks, unreadable records: each ends
    as a clear FAILED record or in quarantine, every good job still runs, and ``nuvom
    status`` reports the damage."""
    out = Outcome("corrupt", backend)
    with project_for(base, backend, "corrupt") as project:
        half = sizes.flow_jobs // 2
        ids = project.enqueue("work", [(i, 0.0) for i in range(half)])
        victim = project.enqueue("work", [(-1, 0.0)])[0]
        expected = _generic_corruption(project)
        corruptor = CORRUPTORS.get(backend)
        damage = corruptor(project, victim) if corruptor else Corruption()
        if victim not in damage.failed:
            out.notes.append("the truncated job was quarantined (no record expected)")
        for job_id in damage.failed:
            expected[job_id] = "nuvom_kernel.errors.SerializationError"
        out.notes += damage.notes
        ids += project.enqueue("work", [(i, 0.0) for i in range(half, sizes.flow_jobs)])
        project.start_worker(2)
        project.start_worker(2)
        kernel = project.kernel()
        project.wait_succeeded(len(ids), 60)

        def settled() -> bool:
            records = [project.record(j) for j in expected]
            return all(r is not None and r.status is JobStatus.FAILED for r in records)

        with contextlib.suppress(ChaosTimeout):
            wait_for(settled, 30, "every corrupt job to be recorded FAILED", interval=0.1)
        project.judge(out, ids)
        for job_id, error_type in expected.items():
            record = project.record(job_id)
            out.completed += out.check(
                record is not None and record.status is JobStatus.FAILED
                and record.error_type == error_type and bool(record.error_message)
                and record.attempts == 1,
                f"corrupt job {job_id}: expected one FAILED attempt with {error_type}, "
                f"got {_brief(record)}")
        out.submitted += len(expected)
        wait_for(lambda: kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0,
                 30, "the queue to drain around the corrupt entries")
        stats = kernel.queue.stats()
        out.check(len(stats.quarantined) >= damage.quarantined,
                  f"{damage.quarantined} corrupt entries should be quarantined, stats lists "
                  f"{stats.quarantined}")
        out.check(all(w.alive() for w in project.workers), "a worker died on corrupt data")
        status = _cli(project, "status", "--json")
        out.check(status.returncode == 0, f"nuvom status failed:\n{status.stderr[-2000:]}")
        if status.returncode == 0:
            data = json.loads(status.stdout)
            out.check(len(data["quarantined"]) >= damage.quarantined,
                      f"nuvom status lists {len(data['quarantined'])} quarantined entries, "
                      f"expected {damage.quarantined}")
            out.check(data["states"].get("FAILED", 0) >= len(expected),
                      f"nuvom status counts {data['states'].get('FAILED', 0)} FAILED, "
                      f"expected {len(expected)}")
            out.check(data["states"].get("SUCCEEDED", 0) == len(ids),
                      f"nuvom status counts {data['states']} for {len(ids)} good jobs")
        history = _cli(project, "history", "recent", "--status", "FAILED", "--json",
                       "--limit", "100")
        out.check(history.returncode == 0,
                  f"nuvom history fails on corrupt records:\n{history.stderr[-2000:]}")
        out.notes.append(f"{len(expected)} corrupt jobs recorded FAILED, "
                         f"{len(stats.quarantined)} entries quarantined")
        _stop_all(project, out)
    return out


# --- scenario 7: hostile and broken plugins ---------------------------------------------

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
        _maybe_fail("extend", [lease])
        return super().extend(lease, secs)

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
            if where == "startup":
                out.check((project.root / "hung-startup").exists(), "the hook never hung")
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
            f"the timed-out job: {_brief(record)}")
        _stop_all(project, out)
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
        _stop_all(project, out)
        out.check("raised in nuvom_worker_shutdown" in project.logs(),
                  "a raising nuvom_worker_shutdown hook was not logged")
    out.merge(_hung_lifecycle(base, backend, sizes))
    out.merge(_slow_observer(base, backend, sizes))
    out.merge(_flaky_backend(base, backend, sizes))
    return out


def _flaky_backend(base: Path, backend: str, sizes: Sizes) -> Outcome:
    out = Outcome("flaky-backend", backend)
    kernel_cls = None
    with project_for(base, backend, "flaky-probe") as probe:
        kernel_cls = type(probe.kernel().queue)
    flaky = f"flaky_{backend}"
    with project_for(base, backend, "flaky", queue_backend=flaky, visibility=1.0,
                     targets={"queue_backend": ["chaos_flaky:FlakyQueue"]},
                     env={"CHAOS_FLAKY": "claim=0.3,extend=0.1,ack=0.05"}) as project:
        project.write("chaos_flaky.py", FLAKY_SOURCE.format(
            backend=backend, module=kernel_cls.__module__, qualname=kernel_cls.__qualname__))
        n = sizes.flow_jobs
        # a few jobs outlive the 1 s lease, so extend failures matter
        ids = project.enqueue("work", [(i, 2.5 if i % 50 == 0 else 0.01) for i in range(n)])
        workers = [project.start_worker(2), project.start_worker(2)]
        project.wait_succeeded(n, 120)
        records = project.judge(out, ids)
        log = project.log.refresh()
        out.check(not log.premature_acks, f"{len(log.premature_acks)} ack(s) of jobs the "
                  f"acking worker had not finished: {log.premature_acks[:3]}")
        logs = project.logs()
        out.check("failed to lease jobs; retrying in" in logs,
                  "claim failures were not logged with a back-off")
        out.check(all(w.alive() for w in workers), "a worker died of backend failures")
        del records
        out.notes.append(f"{logs.count('injected claim failure')} claim, "
                         f"{logs.count('injected extend failure')} extend and "
                         f"{logs.count('injected ack failure')} ack failures injected")
        _stop_all(project, out)
    return out


# --- scenario 9: a paused worker past its lease (fencing) ---------------------------------


def scenario_paused(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """A worker frozen (SIGSTOP) past its lease while running a job must not overwrite the
    outcome of the worker that took the job over, once it wakes (DESIGN.md §3, fencing).
    The frozen run fails and the take-over succeeds, so an overwrite would turn a job that
    succeeded into FAILED."""
    out = Outcome("paused", backend)
    with project_for(base, backend, "paused", visibility=1.0) as project:
        job_id = project.enqueue("flip", [(0, 2.0)])[0]
        frozen = project.start_worker(1)
        log = project.log
        wait_for(lambda: job_id in log.refresh().in_flight(frozen.pid), 60,
                 "the first worker to start the job")
        frozen.signal(signal.SIGSTOP)
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
        out.check(taken is not None and _pid_of(taken) == taker.pid,
                  f"the take-over's record: {_brief(taken)}")
        out.check(record is not None and record.status is JobStatus.SUCCEEDED
                  and _pid_of(record) == taker.pid and record.attempts == 2,
                  f"after the frozen worker woke, the record is {_brief(record)} from pid "
                  f"{_pid_of(record)} (frozen {frozen.pid}, take-over {taker.pid}): a worker "
                  "that lost its lease overwrote the outcome of the one that took over")
        _stop_all(project, out)
    return out


# --- scenario 8: long job vs visibility timeout -----------------------------------------


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
        _stop_all(project, out)
    return out


# --- driver -----------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Path, str, Sizes], Outcome]] = {
    "crash": scenario_crash,
    "storm": scenario_storm,
    "graceful": scenario_graceful,
    "producer": scenario_producer_crash,
    "disk": scenario_disk,
    "corrupt": scenario_corrupt,
    "plugins": scenario_plugins,
    "long-job": scenario_long_job,
    "paused": scenario_paused,
}


def run_scenario(name: str, base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Run one scenario; an exception (a deadline, a crash of the engine) becomes a
    failure of that scenario with the workers' last words attached."""
    t0 = time.monotonic()
    try:
        out = SCENARIOS[name](base, backend, sizes)
    except Exception as exc:
        out = Outcome(name, backend)
        out.failures.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
                            + _last_words(base / f"{backend}-{name}"))
    out.seconds = time.monotonic() - t0
    return out


def _last_words(root: Path) -> str:
    logs = sorted((root / "logs").glob("*.log")) if (root / "logs").exists() else []
    return "".join(f"\n--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace")
                                                       .splitlines()[-15:]) for p in logs)


def persistent_backends() -> list[str]:
    """Installed queue backends that are persistent and shared between processes (the ones
    a crash can be survived on), in the order the tests list them."""
    from nuvom_kernel.config import load_config
    from nuvom_kernel.plugins import NuvomPluginManager

    pm = NuvomPluginManager()
    with tempfile.TemporaryDirectory() as empty:
        pm.load(load_config(empty, {}), environ={})
    found = {name: cls for name, (cls, _) in pm.collect("nuvom_register_queue_backends").items()
             if cls.capabilities.persistent and cls.capabilities.multiprocess_safe}
    order = ["sqlite", "file", "redis", "postgres"]
    return sorted(found, key=lambda b: (order.index(b) if b in order else len(order), b))


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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Fault-injection soak: every scenario on real worker processes.")
    parser.add_argument("--backend", action="append", default=None,
                        help="backend name (repeatable) or 'all' (default: all persistent)")
    parser.add_argument("--jobs", type=int, default=2000,
                        help="jobs in the crash storm; other scenarios scale with it")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable; default: all)")
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
                out = run_scenario(name, base, backend, sizes)
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


if __name__ == "__main__":
    sys.exit(main())
