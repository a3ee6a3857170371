"""A chaos project: a throwaway directory on one backend, its worker processes, and the
judge that reads both witnesses (the result backend and the execution log)."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from nuvom_kernel.dispatcher import enqueue
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord, JobStatus, TaskOptions

from .backends import profile
from .execlog import ExecLog
from .outcome import ChaosTimeout, Outcome, wait_for
from .tasks import LOG_NAME, TASKS_MODULE, TASKS_SOURCE

__all__ = ["Project", "WorkerProc", "backend_classes", "brief", "pid_of", "project_for",
           "run_cli", "stop_all"]

#: The worker pool every scenario's workers use (``--pool``): ``run_scenario`` sets it.
POOL: contextvars.ContextVar[str] = contextvars.ContextVar("chaos_pool", default="thread")

#: The repository root, on every worker's ``PYTHONPATH``.
ROOT = Path(__file__).resolve().parents[2]


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
        self.visibility = visibility
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
            "NUVOM_POOL": POOL.get(),
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
            settings = profile(name).settings
            if callable(settings):
                settings = settings(self.root)
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

    def reopen(self) -> Kernel:
        """Close this process's kernel and open a fresh one (a full disk may have broken
        the old one's view of what is stored)."""
        with contextlib.suppress(Exception):
            self.kernel().close()
        self._kernel = None
        return self.kernel()

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

    def enqueue_raw(self, task: str, args: Sequence[Any], module: str | None = None
                    ) -> str:
        """Enqueue a job by task name through the dispatcher, without the task existing."""
        envelope = Envelope.for_call(task, module, TaskOptions(), list(args), {})
        return enqueue(self.kernel(), [(envelope, envelope.job())])[0].id

    def record(self, job_id: str) -> JobRecord | None:
        try:
            return self.kernel().results.get(job_id)
        except Exception as exc:  # a corrupt record is reported, not fatal to the judge
            return JobRecord(job_id=job_id, task="<unreadable>",
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


def pid_of(record: JobRecord | None) -> int | None:
    """The pid of the worker that wrote ``record`` (``host:pid``), if any."""
    worker = record.worker if record is not None else None
    try:
        return int(worker.rsplit(":", 1)[1]) if worker else None
    except ValueError:
        return None


@contextlib.contextmanager
def project_for(base: Path, backend: str, name: str, **kwargs: Any) -> Iterator[Project]:
    """A :class:`Project` in ``base/<backend>-<name>``, closed (workers killed) after."""
    project = Project(base / f"{backend}-{name}", backend, **kwargs)
    try:
        yield project
    finally:
        project.close()



def stop_all(project: Project, out: Outcome, grace: float = 30.0) -> None:
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



def brief(record: JobRecord | None) -> object:
    """A record's status, error type, attempts and message, for failure messages."""
    if record is None:
        return None
    return (record.status.value, record.error_type, record.attempts, record.error_message)


def run_cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """``nuvom ARGS...`` in the project, on the plain backend."""
    return subprocess.run([sys.executable, "-m", "nuvom_kernel", *args], cwd=project.root,
                          env=project.worker_env({"NUVOM_QUEUE_BACKEND": project.backend}),
                          capture_output=True, text=True, timeout=120)


def backend_classes(base: Path, backend: str, name: str) -> tuple[type, type]:
    """The installed queue and result backend classes of ``backend``, found in a throwaway
    project ``name``: what a fault-injecting wrapper subclasses."""
    with project_for(base, backend, name) as probe:
        return type(probe.kernel().queue), type(probe.kernel().results)
