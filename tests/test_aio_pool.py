"""The asyncio pool's faults a reviewer found with real workers, each pinned by a test.

* an unexpected error in the worker's own code (not in the task) left the job RUNNING
  forever: its lease extended by the monitor, never settled;
* a sync task past its timeout kept its thread, and the sync tasks queued behind it were
  recorded as timed out without ever starting, then ran anyway after being recorded FAILED;
* jobs claimed while a coroutine blocked the loop had leases nobody extended: another worker
  ran them, then this one ran them again; a forced stop did not give them back;
* a coroutine that swallows ``CancelledError`` was never timed out (RUNNING, its lease
  extended forever), and a forced stop could not end the process.

In-process workers on SQLite files, except where the process's exit is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import JobStatus, Worker, get_job, hookimpl, task
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import wait_until, write_module

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def sqlite(make_kernel: Callable[..., Kernel]) -> Iterator[Callable[..., Kernel]]:
    """A SQLite kernel made with ``env`` and installed as this process's kernel."""
    stack = contextlib.ExitStack()

    def make(**env: str) -> Kernel:
        kernel = make_kernel("sqlite", **env)
        stack.enter_context(use_kernel(kernel))
        return kernel

    with stack:
        yield make


@contextlib.contextmanager
def started(kernel: Kernel, workers: int, pool: str = "asyncio") -> Iterator[Worker]:
    """A started in-process worker, stopped at once at the end unless the test stopped it
    (what a test leaves stuck is given up, not waited for)."""
    worker = Worker(kernel, workers=workers, pool=pool, scheduler=False,
                    poll_timeout_secs=0.05)
    worker.start()
    try:
        yield worker
    finally:
        if not worker._stopping.is_set():
            worker.stop(graceful=False)
            worker.join()


def status(job: Job) -> JobStatus:
    return get_job(job.id).status


def history_kind(job: Job) -> str:
    return str(get_job(job.id).history[-1]["kind"])


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What blocked tasks wait for; always opened at the end, so nothing stays stuck."""
    event = threading.Event()
    yield event
    event.set()


# --- 1. an unexpected error in the worker lets the job's lease go ---------------------------

def test_an_unexpected_error_in_the_worker_lets_the_lease_go(sqlite, caplog):
    """Before: ``run_async`` had no guard, so the job's ``Running`` entry stayed in the
    table the monitor extends, forever; the log said only "Task exception was never
    retrieved". Now it is dropped, the lease expires, and the job runs again."""
    kernel = sqlite(NUVOM_VISIBILITY_TIMEOUT_SECS="1")

    @task(retries=0)
    def boom() -> None:
        raise ValueError("boom")

    with started(kernel, workers=1) as worker:
        real = worker.settler.failure
        calls = []

        def failure(*args: Any, **kwargs: Any) -> Any:  # the worker's own bug, once
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug outside the task")
            return real(*args, **kwargs)

        worker.settler.failure = failure  # type: ignore[method-assign]
        job = boom.delay()
        wait_until(lambda: status(job) is JobStatus.FAILED, timeout=15,
                   what="the job to run again once its lease expired, and fail")
        wait_until(lambda: worker.settling == 0, what="nothing left held")
    assert get_job(job.id).attempts == 2 and len(calls) == 2
    assert "unexpected error in the worker" in caplog.text
    assert "Task exception was never retrieved" not in caplog.text


# --- 2. sync tasks past their timeout ------------------------------------------------------

def stuck_and_quick(gate: threading.Event) -> tuple[Any, Any]:
    @task(timeout_secs=0.3, retries=0)
    def stuck() -> None:
        gate.wait(30)

    @task(retries=0)
    def quick() -> str:
        return threading.current_thread().name

    return stuck, quick


def test_a_sync_task_past_its_timeout_gets_a_new_thread(sqlite, gate):
    """As in the thread pool: the stuck thread is replaced (``max_abandoned_threads``
    allows one per slot), so a sync task behind it starts at once. Before, it queued
    behind the stuck thread (and was recorded as timed out there, if it had a timeout)."""
    kernel = sqlite()
    stuck, quick = stuck_and_quick(gate)
    timed_out = stuck.delay()
    with started(kernel, workers=1) as worker:
        wait_until(lambda: status(timed_out) is JobStatus.FAILED, what="the timeout")
        assert history_kind(timed_out) == "timeout"
        # not "(it was cancelled)": a thread cannot be, and this one runs on
        assert "its thread could not be stopped" in (get_job(timed_out.id).error or "")
        after = quick.delay()
        wait_until(lambda: status(after) is JobStatus.SUCCEEDED, timeout=10,
                   what="the sync task behind the stuck one to run")
        assert not gate.is_set(), "it ran while the stuck thread was still stuck"
        assert worker.abandoned_threads == 1, "the stuck thread is reported"
        gate.set()
        wait_until(lambda: worker.abandoned_threads == 0, what="the stuck thread to return")


def test_past_max_abandoned_threads_the_asyncio_pool_claims_fewer_jobs(sqlite, gate, caplog):
    """``NUVOM_MAX_ABANDONED_THREADS=0``: the stuck thread is not replaced, its slot is held
    back, so the next job stays QUEUED for another worker until the thread returns."""
    kernel = sqlite(NUVOM_MAX_ABANDONED_THREADS="0")
    stuck, quick = stuck_and_quick(gate)
    timed_out = stuck.delay()
    with started(kernel, workers=1) as worker:
        wait_until(lambda: status(timed_out) is JobStatus.FAILED, what="the timeout")
        after = quick.delay()
        wait_until(lambda: "max_abandoned_threads=0" in caplog.text, what="the warning")
        wait_until(lambda: worker.slots.free == 0, what="the timed-out job's task to end")
        assert kernel.queue.peek_state(after.id) is JobStatus.QUEUED
        gate.set()
        wait_until(lambda: status(after) is JobStatus.SUCCEEDED, what="the next job")
        assert get_job(after.id).result == "nuvom-sync"
        assert worker.abandoned_threads == 0


def sync_blockers(gate: threading.Event, n: int) -> tuple[list[Job], list[str],
                                                          Callable[[], int]]:
    """``n`` sync jobs holding the pool's threads until ``gate``; how many have started."""
    ran: list[str] = []
    inside = [0]
    lock = threading.Lock()

    @task(retries=0)
    def hold() -> None:
        with lock:
            inside[0] += 1
        gate.wait(30)

    return hold.map([()] * n), ran, lambda: inside[0]


def test_a_sync_task_waiting_for_a_thread_is_not_charged_the_wait(sqlite, gate):
    """32 threads busy, a 33rd sync task (``timeout_secs=0.3``) waits for one longer than
    its timeout: its clock starts when a thread takes it. Before, it was recorded as timed
    out without ever starting (and then ran anyway)."""
    kernel = sqlite()
    blockers, ran, inside = sync_blockers(gate, 32)

    @task(timeout_secs=0.3, retries=0)
    def waits() -> str:
        ran.append("waits")
        return "ran"

    @task(timeout_secs=0.3, retries=0)
    async def clock() -> None:  # times out 0.3 s after it starts, on the same loop
        await asyncio.sleep(30)

    with started(kernel, workers=34) as worker:
        wait_until(lambda: inside() == 32, what="32 sync threads busy")
        waiting = waits.delay()
        wait_until(lambda: waiting.id in worker._running, what="the 33rd to start waiting")
        ticks = clock.delay()  # its deadline is after the 33rd's would have been
        wait_until(lambda: status(ticks) is JobStatus.FAILED, what="0.3 s to pass")
        assert ran == [] and status(waiting) is JobStatus.RUNNING
        gate.set()
        wait_until(lambda: status(waiting) is not JobStatus.RUNNING, what="the 33rd")
        assert status(waiting) is JobStatus.SUCCEEDED, get_job(waiting.id).error
        wait_until(lambda: all(status(j) is JobStatus.SUCCEEDED for j in blockers),
                   what="the blockers")


def test_a_sync_call_given_up_before_it_started_never_runs(sqlite, gate):
    """A forced stop gives up a sync task still waiting for a thread: it must not run when
    a thread frees up. Before, the thread ran it anyway."""
    kernel = sqlite()
    before = set(threading.enumerate())
    _, ran, inside = sync_blockers(gate, 32)

    @task(retries=0)
    def never() -> None:
        ran.append("never")

    worker = Worker(kernel, workers=33, pool="asyncio", scheduler=False,
                    poll_timeout_secs=0.05)
    worker.start()
    wait_until(lambda: inside() == 32, what="32 sync threads busy")
    waiting = never.delay()
    wait_until(lambda: waiting.id in worker._running, what="the 33rd to wait for a thread")
    worker.stop(graceful=False)
    assert worker.join() == 1
    gate.set()
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name == "nuvom-sync" and t not in before],
               what="every sync thread to take what was queued and end")
    assert ran == [], "a sync call given up before it started ran"


# --- 3. jobs claimed while a coroutine blocks the loop -------------------------------------

def blocker_and_quicks(gate: threading.Event) -> tuple[threading.Event, Job, list[Job],
                                                       list[int]]:
    """A coroutine that blocks the loop until ``gate`` (enqueued first, claimed first) and
    three quick ones claimed with it, which cannot start meanwhile."""
    blocking = threading.Event()
    ran: list[int] = []

    @task(retries=0)
    async def block_loop() -> str:
        blocking.set()
        gate.wait(30)  # no await: the loop is stuck
        return "done"

    @task(retries=0)
    async def quick(i: int) -> int:
        ran.append(i)
        await asyncio.sleep(0)
        return i

    blocker = block_loop.apply_async(priority=10)
    return blocking, blocker, quick.map([(i,) for i in range(3)]), ran


@pytest.mark.parametrize("monitor_gives_back", [True, False],
                         ids=["given-back", "monitor-behind"])
def test_jobs_claimed_while_the_loop_is_blocked_run_once(sqlite, gate, monitor_gives_back):
    """The blocked worker gives the jobs it could not start back, and another worker runs
    them, each once. Before, their leases expired unextended, the other worker ran them,
    and this one ran them again once the loop was free. With the monitor behind (it gives
    nothing back), a lease taken after half its visibility timeout is not run either."""
    kernel = sqlite(NUVOM_VISIBILITY_TIMEOUT_SECS="2")
    blocking, blocker, quicks, ran = blocker_and_quicks(gate)
    with started(kernel, workers=4) as first:
        if not monitor_gives_back:
            first.monitor._give_back_overdue = lambda: float("inf")  # type: ignore[method-assign]
        assert blocking.wait(10), "the blocking coroutine did not start"
        with started(kernel, workers=2, pool="thread"):
            wait_until(lambda: all(status(j) is JobStatus.SUCCEEDED for j in quicks),
                       timeout=15, what="the other worker to run the three jobs")
        gate.set()
        wait_until(lambda: status(blocker) is JobStatus.SUCCEEDED, what="the blocker")
        wait_until(lambda: first.slots.free == 4, what="every task of the first worker")
    assert sorted(ran) == [0, 1, 2], f"a job ran twice: {ran}"


def test_a_forced_stop_returns_the_jobs_a_blocked_loop_did_not_start(sqlite, gate):
    """Before, they stayed leased for the whole visibility timeout (30 s here)."""
    kernel = sqlite(NUVOM_VISIBILITY_TIMEOUT_SECS="30")
    blocking, _, quicks, ran = blocker_and_quicks(gate)
    worker = Worker(kernel, workers=4, pool="asyncio", scheduler=False,
                    poll_timeout_secs=0.05)
    worker.start()
    assert blocking.wait(10), "the blocking coroutine did not start"
    worker.stop(graceful=False)
    assert worker.join() == 1
    assert [kernel.queue.peek_state(j.id) for j in quicks] == [JobStatus.QUEUED] * 3
    gate.set()
    assert ran == []


# --- 6. a coroutine that ignores its timeout's cancellation --------------------------------

def test_a_coroutine_that_swallows_its_cancellation_is_timed_out_and_given_up(sqlite):
    """After ``kill_grace_secs`` the attempt is recorded as timed out and the task left to
    run, its slot given to the next job (as the thread pool gives up a stuck thread).
    Before, the job stayed RUNNING, its lease extended forever."""
    kernel = sqlite(NUVOM_KILL_GRACE_SECS="0.3")
    release = threading.Event()

    @task(timeout_secs=0.3, retries=0)
    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except BaseException:  # the fault under test: it swallows the cancellation
                pass

    @task(retries=0)
    async def next_one() -> str:
        return "ran"

    try:
        job = stubborn.delay()
        with started(kernel, workers=1) as worker:
            wait_until(lambda: status(job) is JobStatus.FAILED, what="the timeout")
            assert history_kind(job) == "timeout"
            assert "had not stopped 0.3 s later" in str(get_job(job.id).error)
            assert worker.abandoned_threads == 1
            after = next_one.delay()
            wait_until(lambda: status(after) is JobStatus.SUCCEEDED,
                       what="the next job, in the slot given up")
            release.set()
            wait_until(lambda: worker.abandoned_threads == 0, what="the task to end")
            wait_until(lambda: worker.slots.free == 1, what="the slot count to be whole")
    finally:
        release.set()


def test_a_coroutine_that_never_awaits_is_reported_not_timed_out(sqlite, caplog):
    """What the docs say: a coroutine that blocks the loop past its timeout cannot be
    cancelled; it ends with its own outcome (SUCCEEDED here), and the watchdog logs the
    blocked loop. The monitor does not give it up: it was never cancelled."""
    kernel = sqlite(NUVOM_KILL_GRACE_SECS="0.1")

    @task(timeout_secs=0.2, retries=0)
    async def no_await() -> str:
        time.sleep(1.5)  # the task's own fault: it blocks the loop past its timeout
        return "done"

    job = no_await.delay()
    with started(kernel, workers=1):
        wait_until(lambda: status(job) is JobStatus.SUCCEEDED, what="its own outcome")
    assert get_job(job.id).attempts == 1
    assert "event loop has not answered" in caplog.text


STUBBORN = """
import asyncio, pathlib
from nuvom_kernel import task

@task(timeout_secs=1, retries=0)
async def stubborn():
    pathlib.Path("stubborn.started").write_text("")
    while True:  # a "retry forever" loop whose bare except swallows CancelledError too
        try:
            await asyncio.sleep(0.05)
        except BaseException:
            pass
"""


def test_a_forced_stop_ends_the_process_with_such_a_coroutine_alive(project: Path):
    """A real ``nuvom runworker --pool asyncio`` and real signals. Before, the second
    SIGTERM logged "stopped" but the process never exited: finalizing the coroutine at
    interpreter exit ran its loop on (100 % CPU)."""
    from tests.test_pools import Worker as WorkerProcess

    write_module(project, "stubborn_tasks", STUBBORN)
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_KILL_GRACE_SECS": "600", "NUVOM_LOG_LEVEL": "INFO"}
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        from stubborn_tasks import stubborn  # type: ignore[import-not-found]

        job = stubborn.delay()
        worker = WorkerProcess(project, environ, "--pool", "asyncio", "--workers", "2")
        try:
            wait_until(lambda: (project / "stubborn.started").exists(), timeout=30,
                       what="the task to start")
            worker.proc.send_signal(signal.SIGTERM)
            # The second only once the first was handled (two pending signals are one).
            wait_until(lambda: "received SIGTERM" in worker.output(), what="the first")
            worker.proc.send_signal(signal.SIGTERM)
            try:
                worker.proc.wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail("the worker did not exit after a second SIGTERM:\n"
                            + worker.output())
        finally:
            worker.proc.kill()
            worker.proc.wait()
            worker._out.close()
        out = worker.output()
        assert worker.proc.returncode == 1, out
        assert "stopping now" in out and "did not end when cancelled" in out, out
        assert kernel.queue.peek_state(job.id) is JobStatus.QUEUED  # returned at once
    kernel.close()


def test_a_task_module_is_imported_off_the_event_loop(sqlite, project: Path):
    """The pool imported a task's module on its event loop when the module's first job
    arrived: an import of seconds held every running coroutine (and the watchdog blamed
    them), and a module that runs a loop of its own at import (``asyncio.run``) failed its
    jobs with ``UnknownTaskError`` in this pool only."""
    kernel = sqlite()
    write_module(project, "t_loop_at_import", (
        "import asyncio\nfrom nuvom_kernel import task\n"
        "READY = asyncio.run(asyncio.sleep(0, result='ready'))\n"
        "@task\nasync def ready():\n    return READY\n"))
    with started(kernel, 2):
        from nuvom_kernel.envelope import Envelope
        from nuvom_kernel.models import TaskOptions

        env = Envelope.for_call("ready", "t_loop_at_import", TaskOptions(), (), {})
        kernel.queue.enqueue(env.to_message(kernel.serializer))
        assert get_job(env.id).get(timeout=30) == "ready"


class _MarkedLoop(asyncio.SelectorEventLoop):
    """Any loop of a policy a plugin sets (uvloop's, say), told apart by its type."""


class _MarkedPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _MarkedLoop()


class _SetsThePolicy:
    @hookimpl
    def nuvom_worker_prepare(self, worker: Worker) -> None:
        asyncio.set_event_loop_policy(_MarkedPolicy())


def test_an_event_loop_policy_set_while_the_worker_prepares_is_the_pools(sqlite,
                                                                         project: Path):
    """The pool made its loop when the worker was built, before any plugin could set a
    policy (uvloop's): there was no way to run it on another loop."""
    kernel = sqlite()
    kernel.pm.register(_SetsThePolicy(), name="sets-the-policy")
    write_module(project, "t_loop_type", (
        "import asyncio\nfrom nuvom_kernel import task\n"
        "@task\nasync def loop_type():\n"
        "    return type(asyncio.get_running_loop()).__name__\n"))
    from t_loop_type import loop_type  # type: ignore[import-not-found]

    try:
        with started(kernel, 2):
            assert loop_type.delay().get(timeout=30) == "_MarkedLoop"
    finally:
        asyncio.set_event_loop_policy(None)


def test_a_timed_out_coroutine_is_said_to_exceed_its_timeout_not_what_was_left() -> None:
    """The message gave the time left when the coroutine started (``0.999 s`` for
    ``timeout_secs=1``), where the other pools give the task's timeout."""
    from nuvom_kernel.errors import JobTimeoutError
    from nuvom_kernel.models import TaskOptions
    from nuvom_kernel.worker.aio import bounded

    job = Job(id="j1", task="t", options=TaskOptions(timeout_secs=0.2))
    job.deadline = time.monotonic() + 0.05  # started a while ago: 0.05 s of 0.2 left
    with pytest.raises(JobTimeoutError, match=r"exceeded its timeout of 0\.2 s"):
        asyncio.run(bounded(asyncio.sleep(5), job))


def test_a_timeout_from_the_setting_is_said_as_the_setting(tmp_path: Path) -> None:
    """``NUVOM_JOB_TIMEOUT_SECS=1`` was reported as "timeout of 0.996 s" (the time left
    when the coroutine started): only a task's own timeout_secs was said whole."""
    from nuvom_kernel.errors import JobTimeoutError
    from nuvom_kernel.worker.aio import bounded

    environ = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory",
               "NUVOM_JOB_TIMEOUT_SECS": "0.2"}
    kernel = Kernel(root=tmp_path, environ=environ)
    job = Job(id="j1", task="t", kernel=kernel)
    job.deadline = time.monotonic() + 0.05
    with pytest.raises(JobTimeoutError, match=r"exceeded its timeout of 0\.2 s "
                                              r"\(it was cancelled\)"):
        asyncio.run(bounded(asyncio.sleep(5), job))
