"""Opt-in pytest plugin for testing your own tasks: isolated kernels, eager mode, a worker.

Enable it in a ``conftest.py`` (or with ``-p nuvom_kernel.testing.pytest_plugin``)::

    pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]

Fixtures:

* ``nuvom_test_kernel`` — a :class:`~nuvom_kernel.Kernel` with in-memory queue and result
  backends, installed as the current kernel for the test (so ``.delay()`` uses it), reading
  no ``.nuvom_plugins.toml`` and loading no installed plugin; ``nuvom_queue`` and
  ``nuvom_results`` are its backends.
* ``nuvom_eager`` — ``.delay()`` runs the job inline, through the real worker code path
  (serialization, result recording, retries without their delay), and records it.
* ``nuvom_worker`` — a real :class:`~nuvom_kernel.Worker` thread pool on
  ``nuvom_test_kernel``; ``nuvom_worker.drain()`` waits until every job has finished.

Override ``nuvom_environ`` (``NUVOM_*`` settings) or ``nuvom_extra_plugins`` (plugin
objects to register, e.g. an observer) in your own conftest to change the kernel. It is
opt-in on purpose: installing Nuvom never changes how anyone's test suite runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.config import unknown_variables
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.registry import REGISTRY
from nuvom_kernel.task import Task
from nuvom_kernel.testing.stubs import StubQueue, StubResults
from nuvom_kernel.worker import Worker
from nuvom_kernel.workflow.graph import WF_HEADER, GraphTxn

__all__ = ["EagerMode", "EagerQueue", "WorkerHarness", "build_test_kernel"]

T = TypeVar("T")


class EagerQueue(StubQueue):
    """A stub queue that runs what is pushed at once, in the caller's thread.

    Start delays and retry delays are dropped (a test should not wait for them), so a task
    with ``retries=2`` that keeps failing runs three times inside one ``.delay()``.
    """

    name = "stub-eager"
    runner: Worker | None = None
    _running = False

    def push(self, messages: Sequence[Message]) -> list[bool]:
        return super().push([attrs.evolve(m, available_at=0.0) for m in messages])

    def retry(self, lease: Any, *, delay_secs: float, body: bytes | None = None) -> bool:
        return super().retry(lease, delay_secs=0.0, body=body)

    def enqueue_many(self, messages: Sequence[Message]) -> list[bool]:
        stored = super().enqueue_many(messages)
        self._run_ready()  # inside a task too: its child runs before it continues
        return stored

    def workflow_transaction(self, fn: Callable[[GraphTxn], T],
                             workflows: Sequence[str] = ()) -> T:
        """A workflow's steps are pushed here (submitted, then released as their parents
        end), not through ``enqueue_many``: run them once the transaction has committed.
        A step's own settle releases the next one inside the loop already running, which
        takes it after the step is acked (running it from the settle would nest one call
        per step, and a long chain would overflow the stack)."""
        out = super().workflow_transaction(fn, workflows)
        if not self._running:
            self._run_ready()
        return out

    def _run_ready(self) -> None:
        if self.runner is None:
            return
        outer, self._running = self._running, True
        try:
            while leases := self.claim(1):
                self.runner.run_one(leases[0])
        finally:
            self._running = outer


class _StubPlugin:
    """Registers the stub backends (the kernel never imports a plugin distribution)."""

    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type[QueueBackend]]:
        return [StubQueue, EagerQueue]

    @hookimpl
    def nuvom_register_result_backends(self) -> list[type[ResultBackend]]:
        return [StubResults]


def build_test_kernel(
    root: Path,
    environ: Mapping[str, str] | None = None,
    plugins: Mapping[str, Any] | None = None,
    *,
    eager: bool = False,
) -> Kernel:
    """A kernel on the stub backends, reading nothing from the user's project.

    :param root: its project root and (under ``.nuvom``) data directory; use ``tmp_path``.
    :param environ: ``NUVOM_*`` settings that win over the test defaults.
    """
    env = {
        "NUVOM_QUEUE_BACKEND": EagerQueue.name if eager else StubQueue.name,
        "NUVOM_RESULT_BACKEND": StubResults.name,
        "NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1",
        "NUVOM_DATA_DIR": str(root / ".nuvom"),
        "NUVOM_RETRY_DELAY_SECS": "0",
        # A server backend chosen in ``environ`` (Redis, PostgreSQL) keeps each test's jobs
        # apart: a fresh namespace per kernel, whose keys or schema the process that created
        # them deletes when it exits (the ``nuvom-test-`` prefix).
        "NUVOM_NAMESPACE": f"nuvom-test-{uuid.uuid4().hex[:12]}",
        **(environ or {}),
    }
    return Kernel(root=root, environ=env, plugins={"nuvom-testing": _StubPlugin(),
                                                   **(plugins or {})})


@pytest.fixture
def nuvom_environ() -> dict[str, str]:
    """``NUVOM_*`` settings for the test kernels; override to change them."""
    return {}


@pytest.fixture
def nuvom_extra_plugins() -> dict[str, Any]:
    """Plugin objects (name -> object) registered in the test kernels; override to add."""
    return {}


@pytest.fixture
def nuvom_test_kernel(request: pytest.FixtureRequest, tmp_path: Path,
                      nuvom_environ: dict[str, str], nuvom_extra_plugins: dict[str, Any]
                      ) -> Iterator[Kernel]:
    """An isolated in-memory kernel, installed as the current one for the test.

    One kernel per test, whichever fixtures it asks for: with ``nuvom_eager`` among them
    it is the eager kernel. (Eager mode had a kernel of its own, and whichever fixture was
    set up last was current: ``nuvom_eager`` beside ``nuvom_results`` ran nothing, or
    ``nuvom_results`` read the other kernel's store.)
    """
    unknown = unknown_variables(nuvom_environ)
    if unknown:  # else only a warning in the captured log, and the test ran on defaults
        raise pytest.UsageError(
            "nuvom_environ returns " + "; ".join(f"{var}{hint}" for var, hint in
                                                  unknown.items())
            + (", which is not a Nuvom setting" if len(unknown) == 1 else
               ", which are not Nuvom settings")
            + ": `nuvom config` lists the settings and their variables "
            "(docs/configuration.md)")
    eager = "nuvom_eager" in request.fixturenames
    if eager and "nuvom_worker" in request.fixturenames:
        raise pytest.UsageError(
            "nuvom_eager and nuvom_worker cannot serve one test: eager mode runs each job "
            "inside .delay(), a worker runs them on its own threads. Use one of them")
    mode = EagerMode()
    plugins = {**nuvom_extra_plugins, **({"nuvom-eager": mode} if eager else {})}
    kernel = build_test_kernel(tmp_path, nuvom_environ, plugins, eager=eager)
    mode.kernel = kernel
    queue = kernel.queue
    if isinstance(queue, EagerQueue):  # unless nuvom_environ chose another backend
        queue.runner = Worker(kernel, workers=1)
    with use_kernel(kernel):
        yield kernel
    kernel.close()


@pytest.fixture
def nuvom_queue(nuvom_test_kernel: Kernel) -> QueueBackend:
    return nuvom_test_kernel.queue


@pytest.fixture
def nuvom_results(nuvom_test_kernel: Kernel) -> ResultBackend:
    return nuvom_test_kernel.results


class EagerMode:
    """What ``nuvom_eager`` gives a test: every job ``.delay()`` ran, in call order.

    Each recorded :class:`~nuvom_kernel.Job` is refreshed once it has run, so
    ``job.status`` and ``job.result`` are already final when ``.delay()`` returns
    (``job.get()`` also works, and raises ``JobFailedError`` for a failed job).
    """

    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel
        self.jobs: list[Job] = []

    def calls(self, task: str | Task[Any, Any]) -> list[Job]:
        """The recorded jobs of one task: the task itself, or its registered name.

        :raises ValueError: no task is registered under that name. A name missing its
            ``name=`` prefix (``"add"`` for ``@task(name="billing.add")``) used to give an
            empty list, so ``assert len(calls("add")) == 1`` failed as "0 == 1" with no word
            of the names that were recorded.
        """
        name = task.name if isinstance(task, Task) else task
        if REGISTRY.get(name) is None and all(job.task != name for job in self.jobs):
            recorded = sorted({job.task for job in self.jobs})
            raise ValueError(
                f"no task is registered as {name!r}, so it has no calls; "
                f"recorded: {', '.join(recorded) or 'none'}. Pass the task itself "
                f"(calls(my_task)) or the name it was registered under (@task(name=...))")
        return [job for job in self.jobs if job.task == name]

    def clear(self) -> None:
        self.jobs.clear()

    @hookimpl
    def nuvom_before_enqueue(self, job: Job) -> None:
        if WF_HEADER not in job.headers:  # a workflow's steps: its nodes list them
            self.jobs.append(job)

    @hookimpl
    def nuvom_after_enqueue(self, job: Job) -> None:
        if self.kernel is not None:
            self.kernel.refresh_job(job)


@pytest.fixture
def nuvom_eager(nuvom_test_kernel: Kernel) -> EagerMode:
    """Eager mode: ``.delay()`` runs the job inline on the test's kernel and records it."""
    mode = nuvom_test_kernel.pm.get_plugin("nuvom-eager")
    if not isinstance(mode, EagerMode):  # asked for with request.getfixturevalue()
        raise pytest.UsageError(
            "nuvom_eager was requested after the test's kernel was built (with "
            "request.getfixturevalue?): name it among the test's or a fixture's parameters, "
            "or mark the test with @pytest.mark.usefixtures('nuvom_eager')")
    return mode


def _undrained(queue: QueueBackend, shown: int = 5) -> str:
    """What keeps a drain waiting, job by job: "1 job(s) waiting" sent a user to
    ``NUVOM_RETRY_DELAY_SECS``, which a task's own ``retry_delay_secs`` overrides, and said
    nothing of a start delay, which the worker keeps too."""
    try:
        jobs = queue.browse(limit=shown + 1)
    except NotImplementedError:  # a backend that cannot list: the counts must do
        return (" A task may hang, a retry may wait its retry_delay_secs (the task's own, "
                "else NUVOM_RETRY_DELAY_SECS), or a job its start delay")
    now = time.time()
    lines, retrying, delayed = [], False, False
    for job in jobs[:shown]:
        if job.state is JobStatus.RUNNING:
            what = "running"
        elif job.state is JobStatus.RETRYING:
            what, retrying = f"retrying in {max(job.available_at - now, 0.0):.1f} s", True
        elif job.available_at > now:
            what, delayed = f"starting in {job.available_at - now:.1f} s", True
        else:
            what = "ready"
        lines.append(f"\n  job {job.id} ({job.task}): {what}")
    if len(jobs) > shown:
        lines.append("\n  ...")
    if retrying:
        lines.append("\nA retry waits its task's retry_delay_secs, or NUVOM_RETRY_DELAY_SECS "
                     "(0 under these fixtures) for a task without one: drain with a longer "
                     "timeout, or test the retries with nuvom_eager, which skips the delays.")
    if delayed:
        lines.append("\nA worker keeps a start delay (delay_secs=, eta=) as in production: "
                     "drain with a longer timeout, or use nuvom_eager, which skips it.")
    if any(job.state is JobStatus.RUNNING for job in jobs):
        lines.append("\nA running job's task may hang: give it timeout_secs= (or "
                     "NUVOM_JOB_TIMEOUT_SECS in nuvom_environ).")
    return "".join(lines)


class WorkerHarness:
    """A started :class:`~nuvom_kernel.Worker` on a test kernel, and a way to wait for it."""

    def __init__(self, kernel: Kernel, workers: int = 2) -> None:
        self.kernel = kernel
        # No schedules: every imported @task(schedule=...) would fire during tests that never
        # asked for it, and `processed` would count jobs the test did not enqueue. A test of
        # a schedule fires it itself: worker.scheduler.fire_now(name).
        self.worker = Worker(kernel, workers=workers, grace_period_secs=5.0,
                             poll_timeout_secs=0.1, scheduler=False)
        self.worker.start()

    def drain(self, timeout: float = 10.0) -> None:
        """Block until no job is waiting (delayed retries included) or running, and the
        worker has counted every settled job (``worker.processed``).

        The counts come from one ``stats()`` snapshot: read apart, a retry moving its job
        from running to waiting between the two reads looked like an empty queue.

        :raises TimeoutError: saying how many jobs are still waiting or running.
        """
        queue = self.kernel.queue
        deadline = time.monotonic() + timeout
        interval = 0.002
        while True:
            stats = queue.stats()
            waiting, running = sum(stats.depth.values()), stats.in_flight
            if waiting == 0 and running == 0 and not self.worker.settling:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the worker did not drain the queue in {timeout} s: {waiting} job(s) "
                    f"waiting, {running} running.{_undrained(queue)}")
            time.sleep(interval)
            interval = min(interval * 2, 0.05)

    def stop(self) -> None:
        self.worker.stop()
        self.worker.join()


@pytest.fixture
def nuvom_worker(nuvom_test_kernel: Kernel) -> Iterator[WorkerHarness]:
    """A real worker pool (two threads) serving ``nuvom_test_kernel`` until the test ends."""
    harness = WorkerHarness(nuvom_test_kernel)
    try:
        yield harness
    finally:
        harness.stop()
