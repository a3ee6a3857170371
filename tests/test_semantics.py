"""Kernel v1 semantics (issue 10), end to end: real `nuvom runworker` processes, real signals.

Each test is written against the public API, as a user would drive Nuvom: tasks in a project
directory, jobs enqueued from this process, workers started as subprocesses, states read back
with ``get_job``. Tasks synchronize with the test through files: a task blocks on a gate file
the test creates, and leaves marks the test counts; the test never sleeps to wait.
"""

from __future__ import annotations

import decimal
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

import nuvom_kernel
from benchmarks.chaos.freeze import freeze_outside_writes
from nuvom_kernel import JobStatus, get_job
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import PERSISTENT_BACKENDS, wait_until, write_module

pytestmark = pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS,
                                reason="the SQLite backend is not installed")

TASKS = """
import asyncio, pathlib, time, uuid
from nuvom_kernel import current_job, task


def touch(folder, name=None):
    path = pathlib.Path(folder)
    path.mkdir(exist_ok=True)
    (path / (name or uuid.uuid4().hex)).write_text("")


def gate(name):
    while not pathlib.Path("gates", name).exists():
        time.sleep(0.01)


class Boom(BaseException):
    pass


RAISES = {"CancelledError": asyncio.CancelledError, "Boom": Boom,
          "KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}


@task
def echo(x):
    return x


@task
def record(tag):
    touch("runs", f"{tag}.{uuid.uuid4().hex}")
    return tag


@task
def raise_base(kind):
    raise RAISES[kind](f"{kind} raised by the task")


@task(retries=1, retry_delay_secs=0)
def raise_base_once(kind):
    if current_job().attempts == 1:
        raise RAISES[kind](f"{kind} raised by the first attempt")
    return kind


@task(retries=3, retry_delay_secs=0)
def fenced():
    attempt = current_job().attempts
    if attempt == 1:
        touch("marks", "started-1")
        gate("fenced")
        raise RuntimeError("attempt 1 went on after losing its lease")
    return attempt


@task
def needs_fix(i):
    if not pathlib.Path("fixed").exists():
        raise RuntimeError("not fixed yet")
    return i


@task(retries=25, retry_delay_secs=0)
def flaky25():
    attempt = current_job().attempts
    if attempt <= 25:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@task(retries=3)
def hang():
    touch("deliveries")
    gate("never")


@task(timeout_secs=0.3, retries=6, retry_delay_secs=0)
def stuck(i):
    me = pathlib.Path("running", uuid.uuid4().hex)
    me.parent.mkdir(exist_ok=True)
    me.write_text("")
    try:
        gate("stuck")
    finally:
        me.unlink()
    return i


@task(store_result=False)
def unstored(x):
    return x


@task(store_result=False, retries=1, retry_delay_secs=0)
def unstored_flaky(x):
    if current_job().attempts == 1:
        raise RuntimeError("the first attempt fails")
    return x
"""

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class WorkerProcess:
    """A `nuvom runworker` subprocess; its log lines are collected as they are written."""

    def __init__(self, project: Path, environ: dict[str, str], args: tuple[str, ...]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(environ)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # task modules are rewritten within a second
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom_kernel", "runworker", *args], cwd=project, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit (the drain) and the end of the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


class Cluster:
    """One project on one backend: this process's kernel, and the workers the test starts."""

    def __init__(self, project: Path, backend: str) -> None:
        self.project = project
        self.backend = backend
        self.environ = {"NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend,
                        "NUVOM_VISIBILITY_TIMEOUT_SECS": "5", "NUVOM_LOG_LEVEL": "INFO"}
        self.kernel = Kernel(root=project, environ=self.environ)
        self.workers: list[WorkerProcess] = []

    def worker(self, *args: str, **env: str) -> WorkerProcess:
        proc = WorkerProcess(self.project, {**self.environ, **env}, args)
        self.workers.append(proc)
        return proc

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 10.0
             ) -> object:
        """:func:`wait_until`, with every worker's log in the failure message."""
        try:
            return wait_until(condition, timeout=timeout, what=what)
        except AssertionError as exc:
            logs = "\n".join(f"--- worker {w.proc.pid} ---\n{w.output}" for w in self.workers)
            raise AssertionError(f"{exc}\n{logs}") from None

    def status(self, job_id: str) -> JobStatus:
        return get_job(job_id).status

    def open_gate(self, name: str) -> None:
        gates = self.project / "gates"
        gates.mkdir(exist_ok=True)
        (gates / name).write_text("")

    def files(self, folder: str, prefix: str = "") -> list[str]:
        path = self.project / folder
        return sorted(p.name for p in path.iterdir() if p.name.startswith(prefix)
                      ) if path.exists() else []

    def close(self) -> None:
        for proc in self.workers:
            proc.kill()
        self.kernel.close()


def _cluster(project: Path, backend: str) -> Iterator[Cluster]:
    write_module(project, "sem_tasks", TASKS)
    cluster = Cluster(project, backend)
    try:
        with use_kernel(cluster.kernel):
            yield cluster
    finally:
        cluster.close()


@pytest.fixture(params=PERSISTENT_BACKENDS)
def cluster(request: pytest.FixtureRequest, project: Path) -> Iterator[Cluster]:
    """Every persistent backend (the cheap tests)."""
    yield from _cluster(project, request.param)


@pytest.fixture
def sqlite(project: Path) -> Iterator[Cluster]:
    """The default backend only (the tests that take a few seconds)."""
    yield from _cluster(project, "sqlite")


# --- 1. a task raising a BaseException is a failed attempt --------------------------------

BASE_EXCEPTIONS = ["CancelledError", "Boom", "KeyboardInterrupt", "SystemExit"]


@pytest.mark.parametrize("kind", BASE_EXCEPTIONS)
def test_base_exception_fails_the_job_and_keeps_the_slot(cluster: Cluster, kind: str):
    from sem_tasks import echo, raise_base

    failing = raise_base.delay(kind)
    after = echo.delay("after")
    cluster.worker("--workers", "1")
    cluster.wait(lambda: cluster.status(failing.id) is JobStatus.FAILED,
                 f"the job raising {kind} to be FAILED")
    assert get_job(failing.id).error_type.endswith(kind)
    assert after.get(timeout=10) == "after", "the only executor slot was lost"


@pytest.mark.parametrize("kind", BASE_EXCEPTIONS)
def test_base_exception_is_retried(cluster: Cluster, kind: str):
    from sem_tasks import echo, raise_base_once

    job = raise_base_once.delay(kind)
    after = echo.delay("after")
    cluster.worker("--workers", "1")
    assert job.get(timeout=10) == kind
    final = get_job(job.id)
    assert final.attempts == 2
    assert final.history[0]["error_type"].endswith(kind)
    assert after.get(timeout=10) == "after"


# --- 2. result writes are fenced ----------------------------------------------------------

@pytest.mark.slow
def test_worker_paused_past_its_lease_cannot_overwrite_the_takeover(sqlite: Cluster):
    from sem_tasks import fenced

    fast = {"NUVOM_VISIBILITY_TIMEOUT_SECS": "1"}
    job = fenced.delay()
    first = sqlite.worker("--workers", "1", **fast)
    sqlite.wait(lambda: sqlite.files("marks") == ["started-1"], "attempt 1 to start")
    # not inside a write (a lease extension): SQLite's write lock would be held by a frozen
    # process, and no worker could take the job over
    freeze_outside_writes(first.proc.pid, sqlite.kernel.queue.location)
    second = sqlite.worker("--workers", "1", **fast)
    sqlite.wait(lambda: sqlite.status(job.id) is JobStatus.SUCCEEDED,
                "the second worker to take the job over", timeout=15)
    assert get_job(job.id).result == 2
    second.stop()
    first.signal(signal.SIGCONT)
    sqlite.open_gate("fenced")  # attempt 1 raises now: it would record RETRYING
    sqlite.wait(lambda: first.logged("lost its lease"), "the paused worker to see it lost")
    first.stop()
    final = get_job(job.id)
    assert final.status is JobStatus.SUCCEEDED, first.output
    assert final.result == 2
    assert sqlite.kernel.queue.peek_state(job.id) is None


# --- 3. `nuvom retry job` ends in an outcome, never stuck at QUEUED -----------------------

@pytest.mark.slow
def test_cli_retry_of_fixed_jobs_succeeds_as_run_2(sqlite: Cluster):
    from sem_tasks import needs_fix

    jobs = needs_fix.map([(i,) for i in range(30)])
    sqlite.worker("--workers", "4")
    sqlite.wait(lambda: all(sqlite.status(j.id) is JobStatus.FAILED for j in jobs),
                "every job to fail")
    (sqlite.project / "fixed").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(sqlite.environ)
    clis = [subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "retry", "job", j.id],
                             cwd=sqlite.project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for j in jobs]
    for cli in clis:
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, out
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        states = {j.id: get_job(j.id) for j in jobs}
        if all(s.status is JobStatus.SUCCEEDED for s in states.values()):
            break
    stuck = {i: s.status for i, s in states.items() if s.status is not JobStatus.SUCCEEDED}
    assert not stuck, f"{len(stuck)} retried job(s) never reached an outcome: {stuck}"
    assert {s.run for s in states.values()} == {2}


# --- 4. poison messages -------------------------------------------------------------------

def _poison(cluster: Cluster, good: str, bad: bytes) -> str:
    """Enqueue ``echo(x)`` through the public API, take its real message off the queue, and
    push it back raw under a new id with ``good`` (a piece of its body) replaced by ``bad``."""
    queue = cluster.kernel.queue
    leases = queue.claim(1)
    assert len(leases) == 1
    original = leases[0].message
    assert good.encode() in original.body, original.body
    poison_id = uuid.uuid4().hex
    body = original.body.replace(original.id.encode(), poison_id.encode())
    body = body.replace(good.encode(), bad)
    assert queue.ack(leases[0])
    # the real message, routing fields and all, with only its id and body changed
    queue.enqueue(attrs.evolve(original, id=poison_id, body=body))
    return poison_id


POISONS = {
    # a typed-JSON Decimal that is not a number: decimal.InvalidOperation when decoded
    "decimal": (decimal.Decimal("1.5"), '["decimal","1.5"]', b'["decimal","not-a-number"]'),
    # an argument nested deeper than the JSON parser can go: RecursionError when decoded
    "nested": ("POISON", '"POISON"', b"[" * 100_000 + b"]" * 100_000),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_poison_message_fails_and_the_worker_goes_on(cluster: Cluster, poison: str):
    from sem_tasks import echo

    value, good, bad = POISONS[poison]
    echo.delay(value)
    poison_id = _poison(cluster, good, bad)
    after = echo.delay("after")
    cluster.worker("--workers", "1")
    cluster.wait(lambda: cluster.status(poison_id) is JobStatus.FAILED,
                 "the poison message to be FAILED")
    assert get_job(poison_id).error_type.endswith("SerializationError")
    assert after.get(timeout=10) == "after"
    assert cluster.kernel.queue.peek_state(poison_id) is None, "still in the queue"


def test_a_message_copied_under_another_id_fails_and_its_job_runs_once(cluster: Cluster):
    """A queue entry copied by hand under a new id (to enqueue a job again) carries the
    original's body: the worker ran the original's job twice, recorded it under the
    original's id, and the copy read UNKNOWN."""
    from sem_tasks import echo

    job = echo.delay("once")
    queue = cluster.kernel.queue
    [lease] = queue.claim(1)
    assert queue.release(lease)
    copy_id = uuid.uuid4().hex
    queue.enqueue(attrs.evolve(lease.message, id=copy_id))
    cluster.worker("--workers", "1")
    cluster.wait(lambda: cluster.status(copy_id) is JobStatus.FAILED,
                 "the copied message to be FAILED")
    copy = get_job(copy_id)
    assert f"its body is that of job {job.id!r}" in (copy.error or ""), copy.error
    assert job.get(timeout=10) == "once"
    original = get_job(job.id)
    assert (original.status, original.attempts, len(original.history)) == \
        (JobStatus.SUCCEEDED, 1, 0), "the original ran once"


# --- 5. retries and crash re-deliveries are separate counters -----------------------------

def test_retries_beyond_max_deliveries_succeed(cluster: Cluster):
    from sem_tasks import flaky25

    job = flaky25.delay()
    cluster.worker("--workers", "1")
    assert job.get(timeout=20) == 26
    final = get_job(job.id)
    assert final.status is JobStatus.SUCCEEDED
    assert final.attempts == 26
    assert len(final.history) == 25


@pytest.mark.slow
def test_crash_loop_fails_after_max_deliveries(sqlite: Cluster):
    from sem_tasks import hang

    env = {"NUVOM_VISIBILITY_TIMEOUT_SECS": "0.5", "NUVOM_MAX_DELIVERIES": "2"}
    job = hang.delay()
    for delivery in (1, 2):
        worker = sqlite.worker("--workers", "1", **env)
        sqlite.wait(lambda n=delivery: len(sqlite.files("deliveries")) == n,
                    f"delivery {delivery} to start", timeout=15)
        worker.kill()  # SIGKILL mid-task: no outcome
    sqlite.worker("--workers", "1", **env)
    sqlite.wait(lambda: sqlite.status(job.id) is JobStatus.FAILED,
                "the crash-looping job to be FAILED", timeout=15)
    assert len(sqlite.files("deliveries")) == 2, "it ran a third time"
    failed = get_job(job.id)
    assert "delivered 2 times without an outcome" in (failed.error or ""), failed.error
    assert "(NUVOM_MAX_DELIVERIES or [settings] max_deliveries, now 2)" in (failed.error or "")
    # Never recorded before it failed: its record comes from the message, so it still
    # says what the task was (it read retries=0 and no arguments).
    assert failed.options.retries == 3


# --- 6. threads left in timed-out tasks are bounded ---------------------------------------

@pytest.mark.slow
def test_abandoned_threads_are_bounded(sqlite: Cluster):
    from sem_tasks import stuck

    jobs = stuck.map([(i,) for i in range(6)])
    worker = sqlite.worker("--workers", "2", NUVOM_MAX_ABANDONED_THREADS="2")
    most = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # sample while the gate is closed
        most = max(most, len(sqlite.files("running")))
        if most > 4 or worker.logged("max_abandoned_threads"):
            break
        time.sleep(0.005)  # the sampling interval; an attempt lives at least 0.3 s
    # the worker paused leasing with 4 attempts stuck; keep sampling for 1 s of that
    settle = time.monotonic() + 1
    while most <= 4 and time.monotonic() < settle:
        most = max(most, len(sqlite.files("running")))
        time.sleep(0.005)
    assert most <= 4, f"{most} attempts ran at once; at most 2 workers + 2 abandoned"
    assert worker.logged("max_abandoned_threads"), worker.output
    sqlite.open_gate("stuck")
    sqlite.wait(lambda: all(sqlite.status(j.id) in TERMINAL for j in jobs),
                "every job to settle after the gate opened", timeout=15)
    sqlite.wait(lambda: not sqlite.files("running"), "the abandoned threads to return")


# --- 7. store_result=False ----------------------------------------------------------------

def test_store_result_false_reads_succeeded(cluster: Cluster):
    from sem_tasks import unstored, unstored_flaky

    job = unstored.delay(1)
    flaky = unstored_flaky.delay(2)
    cluster.worker("--workers", "2")
    t0 = time.monotonic()
    assert job.get(timeout=10) is None
    assert time.monotonic() - t0 < 10
    assert get_job(job.id).status is JobStatus.SUCCEEDED
    cluster.wait(lambda: cluster.status(flaky.id) is JobStatus.SUCCEEDED,
                 "the retried store_result=False job to read SUCCEEDED")


# --- 8. an enqueued job is never UNKNOWN --------------------------------------------------

def test_enqueued_job_is_never_unknown(cluster: Cluster):
    from sem_tasks import echo

    cluster.worker("--workers", "4")
    assert echo.delay("warm").get(timeout=10) == "warm"
    jobs = echo.map([(i,) for i in range(200)])
    seen: dict[str, set[JobStatus]] = {j.id: set() for j in jobs}
    done: set[str] = set()
    deadline = time.monotonic() + 20

    def poll() -> None:  # several threads, as a web app polling its jobs would
        while len(done) < len(jobs) and time.monotonic() < deadline:
            # the oldest pending: the ones a FIFO worker is finishing now
            for job in [j for j in jobs if j.id not in done][:8]:
                status = get_job(job.id).status
                seen[job.id].add(status)
                if status is JobStatus.SUCCEEDED:
                    done.add(job.id)

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()
    unknown = [i for i, states in seen.items() if JobStatus.UNKNOWN in states]
    assert not unknown, f"{len(unknown)} enqueued job(s) read UNKNOWN"
    assert len(done) == len(jobs), f"{len(jobs) - len(done)} job(s) never succeeded"


# --- 9. Job.get() on a cancelled or an unknown job ----------------------------------------

def test_get_of_a_cancelled_job_raises_job_cancelled_error(cluster: Cluster):
    from sem_tasks import echo

    job = echo.delay("never runs")
    assert job.cancel()
    with pytest.raises(nuvom_kernel.JobFailedError) as info:
        job.get(timeout=5)
    assert "cancelled" in str(info.value)
    assert isinstance(info.value, nuvom_kernel.JobCancelledError)


def test_get_of_a_never_seen_job_raises_unknown_job_error_promptly(cluster: Cluster):
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:  # the type is checked below, after the time
        get_job("never-seen").get(timeout=5)
    assert time.monotonic() - t0 < 2, f"took the whole timeout, then: {info.value!r}"
    assert isinstance(info.value, nuvom_kernel.UnknownJobError), repr(info.value)


# --- job ids for life ---------------------------------------------------------------------

def test_job_id_runs_once_for_life(cluster: Cluster):
    from sem_tasks import echo, record

    first = record.apply_async(("order",), {}, job_id="order-42")
    second = record.apply_async(("order",), {}, job_id="order-42")
    assert first.id == second.id == "order-42"
    cluster.worker("--workers", "1")
    assert first.get(timeout=10) == "order"
    third = record.apply_async(("order",), {}, job_id="order-42")
    assert third.id == "order-42"
    assert third.status is JobStatus.SUCCEEDED
    assert cluster.kernel.queue.peek_state("order-42") is None
    # FIFO with one executor: once this runs, a re-queued order-42 would have run before it
    assert echo.delay("barrier").get(timeout=10) == "barrier"
    assert len(cluster.files("runs", "order.")) == 1


def test_map_with_job_ids_runs_only_the_new_ones(cluster: Cluster):
    from sem_tasks import echo, record

    cluster.worker("--workers", "1")
    assert record.apply_async(("a",), job_id="a").get(timeout=10) == "a"
    handles = record.map([("a",), ("b",)], job_ids=["a", "b"])
    assert [h.id for h in handles] == ["a", "b"]
    assert handles[1].get(timeout=10) == "b"
    assert echo.delay("barrier").get(timeout=10) == "barrier"
    assert len(cluster.files("runs", "a.")) == 1
    assert len(cluster.files("runs", "b.")) == 1


# --- unknown task: fail at once, or hand back during a rolling deploy ---------------------

DEPLOY_OLD = """
from nuvom_kernel import task

@task
def present():
    return "present"
"""

DEPLOY_NEW = DEPLOY_OLD + """

@task
def added_later():
    return "added later"
"""


def _enqueue_added_later(project: Path) -> str:
    """Enqueue ``added_later`` from the new module, then leave the old one on disk."""
    write_module(project, "deploy_tasks", DEPLOY_NEW)
    from deploy_tasks import added_later

    job_id = added_later.delay().id
    write_module(project, "deploy_tasks", DEPLOY_OLD)
    return job_id


def test_task_missing_from_its_module_fails_at_once(cluster: Cluster):
    job_id = _enqueue_added_later(cluster.project)
    cluster.worker("--workers", "1")
    cluster.wait(lambda: cluster.status(job_id) is JobStatus.FAILED,
                 "the job of a missing task to be FAILED")
    assert get_job(job_id).error_type.endswith("UnknownTaskError")


@pytest.mark.slow
def test_unknown_task_is_handed_back_to_a_newer_worker(sqlite: Cluster):
    from sem_tasks import echo

    grace = {"NUVOM_UNKNOWN_TASK_GRACE_SECS": "30"}
    job_id = _enqueue_added_later(sqlite.project)
    barrier = echo.delay("barrier")
    old = sqlite.worker("--workers", "1", "--batch-size", "1", **grace)
    # FIFO with one executor: the barrier runs after the old worker looked at the job
    assert barrier.get(timeout=10) == "barrier"
    assert sqlite.status(job_id) not in TERMINAL, old.output
    assert old.stop() == 0, old.output
    write_module(sqlite.project, "deploy_tasks", DEPLOY_NEW)
    sqlite.worker("--workers", "1", **grace)
    sqlite.wait(lambda: sqlite.status(job_id) is JobStatus.SUCCEEDED,
                "the newer worker to run the job", timeout=20)
    assert get_job(job_id).result == "added later"


@pytest.mark.slow
def test_unknown_task_goes_to_a_newer_worker_running_beside_the_old_one(sqlite: Cluster):
    """A rolling deploy: old and new workers serve the queue at once. The old worker handed
    a job back for exactly 1 s, the time its idle claim loop took to start again with an
    immediate claim, so it took the job back the moment it was due, every time, and the
    job failed when its grace ran out while the newer worker (polling every 0.1 s) never
    saw it."""
    write_module(sqlite.project, "rolling_tasks", DEPLOY_OLD)
    from rolling_tasks import present

    old = sqlite.worker("--workers", "1", NUVOM_UNKNOWN_TASK_GRACE_SECS="20")
    assert present.delay().get(timeout=10) == "present"  # the old module is imported
    write_module(sqlite.project, "rolling_tasks", DEPLOY_NEW)
    from rolling_tasks import added_later

    new = sqlite.worker("--workers", "1")
    assert present.delay().get(timeout=10) == "present"
    sqlite.wait(lambda: new.logged(" started: "), "the newer worker to start")
    jobs = [added_later.delay() for _ in range(4)]
    sqlite.wait(lambda: all(sqlite.status(job.id) is JobStatus.SUCCEEDED for job in jobs),
                "the newer worker to run every job the old one handed back", timeout=8)
    assert old.stop() == 0 and new.stop() == 0


def test_spi_version_is_1():
    assert nuvom_kernel.SPI_VERSION == 1
