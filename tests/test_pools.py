"""``runworker --pool process|asyncio`` and ``async def`` tasks, with real worker processes.

What each test proves is what a thread pool cannot do: a runaway job is stopped (soft signal,
then SIGKILL), a child that dies is recorded with its signal and rusage, children are
recycled without losing capacity, no child outlives its worker, and an asyncio pool runs
hundreds of awaiting jobs at once on one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobFailedError, JobStatus, get_job
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.kernel import Kernel, get_kernel, use_kernel
from nuvom_kernel.models import TaskOptions
from tests.helpers import alive, wait_until, write_module

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

TASKS = """
import asyncio, ctypes, os, pathlib, signal, subprocess, sys, threading, time
from nuvom_kernel import current_job, task

@task
def pid():
    return os.getpid()

@task(timeout_secs=70, retries=3, tags=["x"])
def whoami():
    job = current_job()
    return [job.options.timeout_secs, job.options.retries, list(job.options.tags),
            job.status.value, job.created_at > 0, job.trace_id != ""]

@task
def pid_after(secs):
    time.sleep(secs)
    return os.getpid()

@task(timeout_secs=1)
def nap():
    try:
        time.sleep(60)
    finally:
        pathlib.Path("nap.finally").write_text(str(os.getpid()))

@task(timeout_secs=1)
def spin():
    while True:  # swallows the soft timeout: only SIGKILL stops it
        try:
            while True:
                pass
        except BaseException:
            pass

@task(timeout_secs=1)
def c_sleep():
    # Blocks the soft signal, as a long C call that never returns to Python would.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(60)

@task(retries=1, retry_delay_secs=0)
def die():
    os.kill(os.getpid(), signal.SIGKILL)

def _leave_behind(how):
    # A process that outlives this task, holding what it inherited; its pid goes to
    # grandchild.<child pid> (the test kills it).
    if how == "system":  # fork + exec, no close_fds: the shell's background job
        os.system(f"sleep 60 & echo $! > grandchild.{os.getpid()}")
        return
    pid = os.fork()  # fork without exec (a multiprocessing fork): every fd stays open
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    pathlib.Path(f"grandchild.{os.getpid()}").write_text(str(pid))

@task(retries=0)
def leave_and_die(how):
    _leave_behind(how)
    os._exit(1)

@task
def leave_and_return(how):
    _leave_behind(how)
    return os.getpid()

@task
def pipe_inodes():
    # The child's pipe ends (in its argv) here, and in a process it starts without close_fds
    pipes = sys.argv[1:3]
    probe = ("import os, sys; print(*[os.fstat(int(f)).st_ino if os.path.exists("
             "'/proc/self/fd/' + f) else 0 for f in sys.argv[1:]])")
    seen = subprocess.run([sys.executable, "-c", probe, *pipes], close_fds=False, check=True,
                          capture_output=True, text=True).stdout
    return [[os.fstat(int(f)).st_ino for f in pipes], [int(i) for i in seen.split()]]

@task
def hog(mb):
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(30)

@task
def slow(secs):
    pathlib.Path(f"started.{os.getpid()}").write_text("")
    time.sleep(secs)
    return os.getpid()

@task
async def stamp(secs):
    start = time.time()
    await asyncio.sleep(secs)
    return [start, time.time()]

@task
async def loop_id():
    await asyncio.sleep(0)
    return id(asyncio.get_running_loop())

@task
async def family():
    async def member():
        await asyncio.sleep(0.01)
        return current_job().id
    return await asyncio.gather(*(member() for _ in range(3)))

@task(timeout_secs=0.5)
async def too_long():
    await asyncio.sleep(30)

@task
async def cancels_itself():
    raise asyncio.CancelledError("my own reasons")

@task
def sync_thread():
    return threading.current_thread().name

@task(timeout_secs=30)
def stops_what_it_started():
    import multiprocessing, subprocess
    sleeper = subprocess.Popen(["sleep", "100"])
    sleeper.terminate()
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(100,))
    forked.start()
    forked.terminate()
    forked.join(10)
    return [sleeper.wait(10), forked.exitcode]

@task
async def blocks_loop(secs):
    time.sleep(secs)  # no await: the loop is stuck
    return "done"
"""


@pytest.fixture
def env(project: Path) -> Iterator[dict[str, str]]:
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_VISIBILITY_TIMEOUT_SECS": "30", "NUVOM_LOG_LEVEL": "INFO",
               "NUVOM_KILL_GRACE_SECS": "1"}
    write_module(project, "pool_tasks", TASKS)
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        yield environ
    kernel.close()


class Worker:
    """A ``nuvom runworker`` subprocess and the children it starts."""

    def __init__(self, project: Path, environ: dict[str, str], *args: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        full.update(environ, PYTHONFAULTHANDLER="1")  # a worker that hangs: see stop()
        self.log = project / f"worker-{len(list(project.glob('worker-*.log')))}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker", *args],
                                     cwd=project, env=full, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        self.seen: set[int] = set()

    def children(self) -> set[int]:
        """Live child processes of the worker (zombies excluded), remembered for later."""
        kids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                kids.add(int(stat.parent.name))
        self.seen |= kids
        return kids

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, *signals: signal.Signals) -> int:
        for sig in signals or (signal.SIGINT,):
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            # Where it hangs, from its threads' stacks (faulthandler prints them on SIGABRT).
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            raise AssertionError(f"the worker did not stop within 30 s of {signals}; its "
                                 f"log:\n{self.output()[-12000:]}") from None
        finally:
            self.proc.kill()
            self._out.close()

    def assert_no_orphans(self) -> None:
        """Every child this test saw is gone (not even a zombie left unreaped by us)."""
        wait_until(lambda: not [p for p in self.seen if alive(p)], timeout=10,
                   what=f"children {sorted(self.seen)} to exit")


@pytest.fixture
def start(project: Path, env: dict[str, str]) -> Iterator[object]:
    workers: list[Worker] = []

    def start_worker(*args: str, **extra: str) -> Worker:
        worker = Worker(project, {**env, **extra}, *args)
        workers.append(worker)
        wait_until(lambda: " started: " in worker.output(), timeout=30, what="worker start")
        return worker

    yield start_worker
    for worker in workers:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGINT, signal.SIGINT)
        worker.assert_no_orphans()


def test_a_process_a_task_starts_can_be_terminated(start, project: Path):
    """The pool's children ignored SIGTERM (``SIG_IGN``), and every process a task started
    inherited it: its ``terminate()`` did nothing, a ``multiprocessing`` pool's exit hung,
    and such processes outlived the worker."""
    from pool_tasks import stops_what_it_started

    start("--pool", "process", "--workers", "1")
    assert stops_what_it_started.delay().get(timeout=60) == [-signal.SIGTERM, -signal.SIGTERM]


EXECUTE_HOOKS_PLUGIN = """
import pathlib
from nuvom_kernel import hookimpl

def _note(job, what):
    with open(pathlib.Path.cwd() / "execute-hooks.log", "a") as log:
        log.write(f"{what} {job.id}\\n")

@hookimpl
def nuvom_before_execute(job):
    _note(job, "before")

@hookimpl
def nuvom_after_execute(job, result):
    _note(job, "after")

@hookimpl
def nuvom_on_execute_error(job, error):
    _note(job, "error")
"""


def test_a_job_stopped_before_any_child_was_ready_goes_back_unrun(start, project: Path):
    """Children that cannot start (here: Python dies starting any ``python -c``, which is
    how a child starts): a job waiting for one was recorded FAILED when the worker stopped,
    though it never ran (with retries, an attempt spent). Nor does it begin for observers:
    ``nuvom_before_execute`` without a closing hook left an OpenTelemetry span open."""
    from pool_tasks import pid

    (project / "execute_hooks.py").write_text(EXECUTE_HOOKS_PLUGIN)
    (project / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["execute_hooks"]\n')
    site = project / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '-c' in sys.orig_argv:\n    os._exit(3)\n")
    job = pid.delay()
    worker = start("--pool", "process", "--workers", "1", PYTHONPATH=str(site))
    wait_until(lambda: "died while starting" in worker.output(), timeout=30,
               what="a child to die while starting")
    assert worker.stop(signal.SIGTERM) == 0, worker.output()[-4000:]
    assert get_job(job.id).status is JobStatus.QUEUED, worker.output()[-4000:]
    [lease] = get_kernel().queue.claim(1)
    assert (lease.id, lease.deliveries) == (job.id, 1), "its give-back took its delivery back"
    assert "given back to its queue" in worker.output()
    hooks = project / "execute-hooks.log"
    assert not hooks.exists(), hooks.read_text()
    get_kernel().queue.release(lease)
    start("--pool", "process", "--workers", "1")  # children that start: it runs now
    wait_until(lambda: get_job(job.id).status is JobStatus.SUCCEEDED, timeout=60,
               what="the job to run once a child could start")
    assert hooks.read_text() == f"before {job.id}\nafter {job.id}\n"


SLOW_START = """
import os, pathlib, time
from nuvom_kernel import task

pathlib.Path(f"importing.{os.getpid()}").write_text("")
time.sleep(3)  # a child imports its task modules for seconds

@task
def ran_after_stop():
    pathlib.Path("ran").write_text("")
"""


def test_a_job_whose_child_was_ready_only_after_a_stop_goes_back_unrun(start, project: Path):
    """The docs: at a stop, leased jobs that have not started go back at once. A job whose
    executor waited for its child to finish starting was run all the same when the child
    became ready after the first SIGINT (and killed part-way by a short grace period)."""
    write_module(project, "slow_start", SLOW_START)
    from slow_start import ran_after_stop  # (the test's import sleeps too)

    job = ran_after_stop.delay()
    worker = start("--pool", "process", "--workers", "1")
    ours = project / f"importing.{os.getpid()}"
    wait_until(lambda: set(project.glob("importing.*")) - {ours}
               and get_kernel().queue.qsize() == 0,
               timeout=30, what="the job claimed while its child starts")
    assert worker.stop(signal.SIGINT) == 0, worker.output()[-4000:]
    assert not (project / "ran").exists(), "it ran after the stop"
    assert get_job(job.id).status is JobStatus.QUEUED, worker.output()[-4000:]
    [lease] = get_kernel().queue.claim(1)
    assert (lease.id, lease.deliveries) == (job.id, 1), "its give-back took its delivery back"


def test_a_task_module_that_kills_its_child_at_import_stops_no_other_task(
        start, project: Path):
    """Children import every task module at start: one that kills the interpreter when
    imported (a broken C extension) killed every child while starting, and no job of any
    task ran again (they stayed RUNNING, their leases extended)."""
    from pool_tasks import pid

    (project / "crashes_at_import.py").write_text(
        "import ctypes\nfrom nuvom_kernel import task\n\n\n@task\ndef never():\n"
        "    pass\n\n\nctypes.string_at(0)\n")
    worker = start("--pool", "process", "--workers", "1")
    assert isinstance(pid.delay().get(timeout=60), int)
    assert "died importing task module 'crashes_at_import' (exit code -11" in \
        worker.output()
    # a job of its task (sent by name: importing the module here would kill this process)
    kernel = get_kernel()
    envelope = Envelope.for_call("never", "crashes_at_import", TaskOptions(), (), {})
    kernel.queue.enqueue(envelope.to_message(kernel.serializer))
    assert "killed by signal 11" in str(failed(get_job(envelope.id)))
    assert isinstance(pid.delay().get(timeout=60), int), "and the others still run"


def failed(job: object) -> JobFailedError:
    with pytest.raises(JobFailedError) as info:
        job.get(timeout=60)  # type: ignore[attr-defined]
    return info.value


# --- process pool -------------------------------------------------------------------------

def test_soft_timeout_raises_in_the_task_and_the_child_lives_on(start, project: Path):
    from pool_tasks import nap, pid

    worker = start("--pool", "process", "--workers", "1")
    before = pid.delay().get(timeout=60)
    error = failed(nap.delay())
    assert error.error_type == "nuvom_kernel.errors.JobTimeoutError"
    assert (project / "nap.finally").read_text() == str(before), "finally did not run"
    assert pid.delay().get(timeout=60) == before, "a soft timeout should not cost the child"
    assert before in worker.children()


@pytest.mark.parametrize("name", ["spin", "c_sleep"])
def test_a_job_that_ignores_the_soft_timeout_is_killed(start, name: str):
    import pool_tasks

    worker = start("--pool", "process", "--workers", "1")
    first = pool_tasks.pid.delay().get(timeout=60)
    job = getattr(pool_tasks, name).delay()
    error = failed(job)
    assert error.error_type == "nuvom_kernel.errors.JobTimeoutError"
    assert "killed by signal 9 (SIGKILL)" in str(error)
    entry = get_job(job.id).history[-1]
    assert entry["kind"] == "timeout" and entry["signal"] == 9
    assert entry["finished_at"] - entry["started_at"] < 1 + 1 + 5  # timeout + grace + slack
    replacement = pool_tasks.pid.delay().get(timeout=60)
    assert replacement != first, "the killed child was not replaced"
    assert not alive(first)
    worker.children()


def test_a_child_killed_by_a_signal_fails_the_attempt_and_ends_failed(start):
    from pool_tasks import die, pid

    start("--pool", "process", "--workers", "1")
    job = die.delay()
    error = failed(job)
    assert "killed by signal 9 (SIGKILL)" in str(error)
    record = get_job(job.id)
    assert record.status is JobStatus.FAILED and record.attempts == 2  # retries=1, no loop
    assert [e["signal"] for e in record.history] == [9, 9]
    assert all(e["max_rss_kb"] > 0 and e["cpu_secs"] is not None for e in record.history)
    assert isinstance(pid.delay().get(timeout=60), int), "the pool did not recover"


@pytest.fixture
def grandchildren(project: Path) -> Iterator[None]:
    """Kills the processes the tasks left behind (pids in ``grandchild.*``) after the test,
    before the worker is stopped: they would outlive it by a minute."""
    yield
    for path in project.glob("grandchild.*"):
        try:
            os.kill(int(path.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def test_what_a_task_starts_does_not_inherit_the_childs_pipes(start):
    # Held open by it, they would hide the child's death from the worker (end of file).
    from pool_tasks import pipe_inodes

    start("--pool", "process", "--workers", "1")
    own, seen = pipe_inodes.delay().get(timeout=60)
    assert all(own) and not set(own) & set(seen), (own, seen)


# Each: "system" is fork + exec without close_fds (the child's pipe ends are close-on-exec);
# "fork" is a fork without exec, which keeps them open (the worker watches the child's pid).
@pytest.mark.parametrize("how", ["system", "fork"])
def test_a_child_that_dies_leaving_a_process_behind_is_noticed_at_once(
        start, grandchildren: None, how: str):
    from pool_tasks import leave_and_die, pid

    worker = start("--pool", "process", "--workers", "1")
    job = leave_and_die.delay(how)
    with pytest.raises(JobFailedError) as info:
        job.get(timeout=15)  # not the 60 s the process it left behind lives
    assert "exited with code 1" in str(info.value)
    entry = get_job(job.id).history[-1]
    assert entry["finished_at"] - entry["started_at"] < 5
    assert isinstance(pid.delay().get(timeout=15), int), "the slot stayed blocked"
    worker.children()


@pytest.mark.parametrize("how", ["system", "fork"])
def test_an_idle_child_killed_with_a_process_it_left_behind_is_replaced(
        start, grandchildren: None, how: str):
    from pool_tasks import leave_and_return, pid

    worker = start("--pool", "process", "--workers", "1")
    first = leave_and_return.delay(how).get(timeout=60)
    worker.children()
    os.kill(first, signal.SIGKILL)  # as the OOM killer does, between jobs
    wait_until(lambda: not alive(first), timeout=10, what="the child to die")
    job = pid.delay()
    wait_until(lambda: job.refresh().status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
               timeout=15, what="the next job to end, not to wait on a dead child")
    # Usually the death is seen before the job is sent, and the job goes to a fresh child
    # uncharged; a job sent in the instant the death is not yet visible is charged one
    # attempt (ChildKilledError), at once: never a job left waiting on a dead child.
    if job.status is JobStatus.SUCCEEDED:
        assert job.result != first and get_job(job.id).attempts == 1
        assert "was gone before the job reached it" in worker.output()
    else:
        assert "ChildKilledError" in (job.error_type or ""), job.error
    assert pid.delay().get(timeout=15) != first


def test_recycling_by_task_count_keeps_capacity(start):
    from pool_tasks import pid

    worker = start("--pool", "process", "--workers", "1", "--max-tasks-per-child", "2")
    pids = [pid.delay().get(timeout=60) for _ in range(6)]
    assert len(set(pids)) >= 3 and all(pids.count(p) <= 2 for p in pids), pids
    # Each ran its 2 jobs and retired. Once they are gone, one child per slot plus one warm
    # spare are left: a retirement starts its replacement, so capacity never drops.
    wait_until(lambda: not worker.children() & set(pids), timeout=15, what="retired reaped")
    assert len(worker.children()) == 2, "1 child + 1 spare"


def test_recycling_by_age(start):
    from pool_tasks import pid_after

    start("--pool", "process", "--workers", "1", "--max-child-age", "0.5")
    pids = [pid_after.delay(0.3).get(timeout=60) for _ in range(4)]
    assert len(set(pids)) >= 2, pids


def test_a_child_over_its_memory_limit_is_killed_while_it_runs(start):
    from pool_tasks import hog, pid

    start("--pool", "process", "--workers", "1", "--max-memory-per-child", "150MB")
    error = failed(hog.delay(300))
    assert "killed by signal 9 (SIGKILL)" in str(error)
    assert "max_memory_per_child (150 MB)" in str(error)
    assert isinstance(pid.delay().get(timeout=60), int)


def test_a_memory_limit_below_a_fresh_childs_is_said(start):
    """A limit under what a child holds before running anything (~26 MB) killed every job
    of more than a moment and replaced the child after each, without a word at start."""
    from pool_tasks import pid

    worker = start("--pool", "process", "--workers", "1", "--max-memory-per-child", "5MB")
    pid.delay().get(timeout=60)
    said = re.search(r"max_memory_per_child \(5 MB\) is below what a fresh pool child "
                     r"holds before running anything \((\d+) MB\)", worker.output())
    assert said and int(said.group(1)) > 5, worker.output()[-3000:]
    assert worker.output().count("is below what a fresh pool child holds") == 1


def test_a_task_module_that_fails_to_import_in_the_child_fails_only_its_job(start, project):
    from pool_tasks import pid

    write_module(project, "broken_tasks", "from nuvom_kernel import task\n\n"
                 "@task\ndef fine():\n    return 1\n")
    from broken_tasks import fine

    job = fine.delay()
    (project / "broken_tasks.py").write_text("raise RuntimeError('broken at import')\n")
    start("--pool", "process", "--workers", "1")
    first = pid.delay().get(timeout=60)
    error = failed(job)
    assert "broken at import" in str(error)
    assert pid.delay().get(timeout=60) == first, "the import error cost the child"


def test_killing_the_parent_takes_the_children_with_it(start, project: Path):
    from pool_tasks import slow

    worker = start("--pool", "process", "--workers", "2")
    slow.delay(60)
    wait_until(lambda: list(project.glob("started.*")), timeout=30, what="job running")
    busy = int(next(project.glob("started.*")).suffix[1:])
    assert busy in worker.children()
    worker.proc.kill()
    worker.proc.wait(10)
    worker.assert_no_orphans()


def test_first_signal_lets_children_finish_second_kills_them(start, project: Path):
    from pool_tasks import slow

    worker = start("--pool", "process", "--workers", "1", "--grace-period", "30")
    job = slow.delay(1.5)
    wait_until(lambda: list(project.glob("started.*")), timeout=30, what="job running")
    worker.children()
    assert worker.stop(signal.SIGINT) == 0
    assert get_job(job.id).status is JobStatus.SUCCEEDED
    worker.assert_no_orphans()

    again = start("--pool", "process", "--workers", "1", "--grace-period", "30")
    long_job = slow.delay(60)
    wait_until(lambda: len(list(project.glob("started.*"))) == 2, timeout=30,
               what="second job running")
    again.children()
    again.proc.send_signal(signal.SIGINT)
    wait_until(lambda: "finishing running jobs" in again.output(), timeout=10,
               what="first signal handled")
    assert again.stop(signal.SIGINT) == 1
    again.assert_no_orphans()
    assert get_job(long_job.id).status is JobStatus.QUEUED  # back in the queue at once


# --- asyncio pool and async def tasks --------------------------------------------------

def test_asyncio_pool_runs_hundreds_of_awaiting_jobs_at_once(start):
    from pool_tasks import stamp

    start("--pool", "asyncio", "--workers", "300")
    jobs = stamp.map([(1.0,)] * 300)
    spans = [job.get(timeout=120) for job in jobs]
    # How many ran at the same moment: the most spans that contain one start time.
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap >= 100, f"only {overlap} of 300 awaiting jobs overlapped"


def test_asyncio_pool_timeouts_current_job_and_sync_tasks(start):
    from pool_tasks import cancels_itself, family, sync_thread, too_long

    start("--pool", "asyncio", "--workers", "10")
    job = family.delay()
    assert job.get(timeout=60) == [job.id] * 3, "current_job() lost across gather"
    timed_out = too_long.delay()
    assert failed(timed_out).error_type == "nuvom_kernel.errors.JobTimeoutError"
    assert get_job(timed_out.id).history[-1]["kind"] == "timeout"
    own = cancels_itself.delay()
    assert failed(own).error_type == "asyncio.exceptions.CancelledError"
    assert get_job(own.id).history[-1]["kind"] == "error", "not our timeout"
    assert sync_thread.delay().get(timeout=60) == "nuvom-sync", "a sync task ran on the loop"


def test_a_blocked_loop_is_reported_and_keeps_its_lease(start, env):
    from pool_tasks import blocks_loop

    worker = start("--pool", "asyncio", "--workers", "2",
                   NUVOM_VISIBILITY_TIMEOUT_SECS="1.5")
    job = blocks_loop.delay(4)
    assert job.get(timeout=60) == "done"
    assert get_job(job.id).attempts == 1, "the lease expired while the loop was blocked"
    assert "event loop has not answered" in worker.output()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_async_tasks_keep_one_loop_per_executor(start, pool: str):
    from pool_tasks import loop_id, too_long

    start("--pool", pool, "--workers", "1")
    assert len({loop_id.delay().get(timeout=60) for _ in range(3)}) == 1
    assert failed(too_long.delay()).error_type == "nuvom_kernel.errors.JobTimeoutError"
    assert loop_id.delay().get(timeout=60) is not None  # no "event loop is closed"


def test_async_producer_api(start):
    from pool_tasks import loop_id, stamp

    start("--pool", "asyncio", "--workers", "20")

    async def produce() -> list[object]:
        beats = 0

        async def heartbeat() -> None:  # proves the caller's loop is never blocked
            nonlocal beats
            while True:
                beats += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(heartbeat())
        jobs = await stamp.map_async([(0.2,)] * 10)
        one = await loop_id.delay_async()
        results = [await job.get_async(timeout=60) for job in [*jobs, one]]
        ticker.cancel()
        assert beats >= 10
        return results

    results = asyncio.run(produce())
    assert len(results) == 11 and all(r is not None for r in results)


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    (["--pool", "fork"], "'fork' is not one of 'thread', 'process', 'asyncio'"),
    (["--max-memory-per-child", "lots"], "must be a size such as 512MB"),
    (["--max-memory-per-child", "0"], "must be a finite size of at least 1 byte"),
    # an OverflowError traceback, and 1e-9 MB became 0 (no limit while a job ran, a new
    # child after every job)
    (["--max-memory-per-child", "inf"], "must be a finite size of at least 1 byte"),
    (["--max-memory-per-child", "infgb"], "must be a finite size of at least 1 byte"),
    (["--max-memory-per-child", "nan"], "must be a finite size of at least 1 byte"),
    (["--max-memory-per-child", "1e-9"], "must be a finite size of at least 1 byte"),
])
def test_bad_pool_flags_are_usage_errors(project: Path, args: list[str], expected: str):
    out = subprocess.run([sys.executable, "-m", "nuvom_kernel", "runworker", *args],
                         cwd=project, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr
    flag = args[0]
    assert flag in out.stderr


def test_bad_pool_setting_names_the_variable(project: Path):
    env = {**os.environ, "NUVOM_POOL": "fork"}
    out = subprocess.run([sys.executable, "-m", "nuvom_kernel", "runworker"], cwd=project,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "NUVOM_POOL" in out.stderr and "thread, process, asyncio" in out.stderr


def _in_manifest(project: Path, task: str, module: str) -> None:
    """A manifest listing only ``task`` of ``module``: every pool child imports it first."""
    manifest = project / ".nuvom" / "manifest.json"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(json.dumps({"version": 1, "state": {}, "tasks": [
        {"name": task, "module": module}]}))


@pytest.mark.parametrize("ending", ["sys.exit(3)", "raise Abort('refuses to load')"])
def test_a_manifest_module_ending_its_import_costs_no_child(start, project: Path,
                                                            ending: str):
    # Discovery is static, so a script with tasks and a sys.exit() (or any BaseException)
    # at module level is in the manifest; every child imports it first. It must fail only
    # that module's jobs: a BaseException killed every child as it started.
    write_module(project, "exiting_tasks", "import sys\nfrom nuvom_kernel import task\n\n"
                 "class Abort(BaseException):\n    pass\n\n"
                 f"@task\ndef leaves():\n    return 1\n\n{ending}\n")
    _in_manifest(project, "leaves", "exiting_tasks")
    from pool_tasks import pid

    worker = start("--pool", "process", "--workers", "1")
    first = pid.delay().get(timeout=60)
    assert pid.delay().get(timeout=60) == first, "a child died over the module"
    said = ("SystemExit(3)", "called sys.exit(3)") if "exit" in ending else ("Abort(",)
    assert any(text in worker.output() for text in said), worker.output()
    assert "died while starting" not in worker.output()


def test_children_that_die_at_start_are_restarted_with_a_backoff(start, project: Path):
    # Every child dies while starting, before it imports any task module (Python dies
    # starting any `python -c`, which is how a child starts); one that dies importing a
    # task module is started again at once, without it (see the test of that).
    site = project / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '-c' in sys.orig_argv:\n    os._exit(3)\n")
    from pool_tasks import pid

    pid.delay()  # an executor takes a child only for a job
    worker = start("--pool", "process", "--workers", "1", PYTHONPATH=str(site))
    wait_until(lambda: worker.output().count("died while starting") >= 3, timeout=30,
               what="three failed starts")
    waits = re.findall(r"starting another in ([\d.]+) s", worker.output())
    assert [float(w) for w in waits[:3]] == [0.5, 1.0, 2.0], waits
    assert worker.proc.poll() is None, "the worker itself must survive its children"


def test_current_job_in_a_child_has_the_jobs_options_and_state(start):
    """A child built the job of ``current_job()`` without its options, times or state: a
    task read ``timeout_secs=None``, ``retries=0`` and QUEUED while it ran."""
    from pool_tasks import whoami

    start("--pool", "process", "--workers", "1")
    assert whoami.delay().get(timeout=60) == [70, 3, ["x"], "RUNNING", True, True]


CONFIGURE_PLUGIN = """
import os, pathlib, sys
from nuvom_kernel import hookimpl

@hookimpl
def nuvom_configure(config):
    marker = pathlib.Path(config.root) / f"configured-{os.getpid()}"
    marker.write_text("tasks imported first" if "pool_tasks" in sys.modules else "before")
"""


def test_a_plugins_configure_runs_in_each_child_before_its_task_modules(start, project):
    """``nuvom_configure`` ran in the worker only: an OpenTelemetry SDK set up there (as the
    docs advise) recorded nothing of a process-pool task, whose spans were lost."""
    from pool_tasks import pid

    (project / "configured.py").write_text(CONFIGURE_PLUGIN)
    (project / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["configured"]\n')
    worker = start("--pool", "process", "--workers", "1")
    child = pid.delay().get(timeout=60)
    assert child != worker.proc.pid
    assert (project / f"configured-{worker.proc.pid}").read_text() == "before"
    assert (project / f"configured-{child}").read_text() == "before"


WAITING_TASKS = """
from nuvom_kernel import task

@task
def inner(x):
    return x + 1

@task(store_result=True)
def outer(x, allow=False):
    return inner.delay(x).get(timeout=20, allow_in_task=allow) * 10

@task(store_result=True)
async def outer_async(x):
    return await inner.delay(x).get_async(timeout=20) * 10

@task(store_result=True)
def outer_flow(x):
    from nuvom_kernel import chain
    return chain(inner.s(x), inner.s()).delay().get(timeout=20)
"""


@pytest.mark.parametrize("pool", ["thread", "process", "asyncio"])
def test_a_task_waiting_for_another_job_is_refused_not_a_hung_worker(start, project, pool):
    """``inner.delay(x).get()`` inside a task on a one-slot worker: the task held the only
    slot while it waited, nothing ran ``inner``, and the first signal could not drain the
    worker. It fails at once saying why (Celery refuses it too); ``allow_in_task=True``
    waits where other slots serve the queue."""
    write_module(project, "waiting_tasks", WAITING_TASKS)
    from waiting_tasks import outer, outer_async, outer_flow

    start("--pool", pool, "--workers", "1" if pool != "asyncio" else "2")
    refused = failed(outer.delay(1))
    assert "waits for job" in str(refused) and "holds its worker slot" in str(refused)
    assert "waits for workflow" in str(failed(outer_flow.delay(1)))
    if pool == "asyncio":
        assert "holds its worker slot" in str(failed(outer_async.delay(1)))
    else:
        start("--pool", pool, "--workers", "2")  # a second worker serves the inner jobs
        assert outer.delay(1, allow=True).get(timeout=60) == 20


SLOW_IMPORT = """
import time
from nuvom_kernel import task

time.sleep(1.5)  # a heavy import: every child of the pool pays it before it is ready

@task(timeout_secs=1)
def sleepy():
    time.sleep(3)
    return "ran to the end"
"""


def test_a_job_waiting_for_its_child_to_start_keeps_its_whole_timeout(start, project):
    """The deadline ran from the claim: a first job on each child reached it with the
    deadline past, the soft timeout was sent before the task began (and dropped), and the
    task ran its 3 s to the end despite ``timeout_secs=1``."""
    write_module(project, "slow_import", SLOW_IMPORT)
    _in_manifest(project, "sleepy", "slow_import")
    from slow_import import sleepy

    jobs = [sleepy.delay() for _ in range(2)]
    start("--pool", "process", "--workers", "2")
    for job in jobs:
        error = failed(job)
        assert error.error_type.endswith("JobTimeoutError"), error
        record = get_job(job.id)
        assert record.status is JobStatus.FAILED
        took = record.history[-1]["finished_at"] - record.history[-1]["started_at"]
        assert 0.9 < took < 2.5, f"{took:.2f} s: the attempt's clock counts from the child"


def test_a_child_whose_worker_stopped_listening_exits_without_a_traceback(project: Path):
    """A forced stop closes the pipes of a child still running its job; its reply then met
    a closed pipe and printed a BrokenPipeError traceback on the worker's terminal."""
    from nuvom_kernel.worker.child import read_frame, write_frame
    from nuvom_kernel.worker.child_process import _CHILD_MAIN

    write_module(project, "bp_tasks", "import time\nfrom nuvom_kernel import task\n\n\n"
                 "@task\ndef nap():\n    time.sleep(0.3)\n")
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(req_r), str(rep_w),
                              str(os.getpid())], pass_fds=(req_r, rep_w), cwd=project,
                             stderr=subprocess.PIPE, text=True)
    os.close(req_r)
    os.close(rep_w)
    try:
        write_frame(req_w, {"sys_path": [str(project)], "data_dir": str(project / ".nuvom"),
                            "preload": ["bp_tasks"], "root": None})
        assert read_frame(rep_r) == {"importing": "bp_tasks"}  # (said before each import)
        assert read_frame(rep_r) == {"ready": True, "pid": child.pid}
        write_frame(req_w, {"id": "j1", "task": "nap", "module": "bp_tasks", "args": [],
                            "kwargs": {}, "attempts": 1, "run": 1})
        os.close(rep_r)  # the worker stops listening while the job runs
        os.close(req_w)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0
    assert "Traceback" not in err, err


def test_a_child_not_ready_in_time_is_killed_not_waited_for_nor_blamed_on_its_import(
        project: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A child still importing after the start timeout was reaped alive: ``wait4`` held
    its executor (and the job it had taken) for good, and when the stop killed the child,
    the module was blamed for killing it and preloaded no more."""
    import threading

    from nuvom_kernel.worker import processes

    monkeypatch.setattr(processes, "START_TIMEOUT_SECS", 3.0)  # (its import: 60 s)
    write_module(project, "hangs_at_import", "import os, time\n"
                 "from nuvom_kernel.worker import child\n"
                 "if child.PARENT_PID:\n    time.sleep(60)\n")
    _in_manifest(project, "hang", "hangs_at_import")
    kernel = get_kernel()
    kernel.registry.load_manifest(kernel.data_dir)
    stop = threading.Event()
    pool = processes.ProcessPool(kernel, 1, stop)
    pool.hello = pool._make_hello()
    taken: list[object] = []
    taker = threading.Thread(target=lambda: taken.append(pool._take()), daemon=True)
    with caplog.at_level(logging.ERROR, logger="nuvom.worker"):
        taker.start()
        wait_until(lambda: "was not ready 3 s after it started" in caplog.text, timeout=30,
                   what="the silent child to be given up")
        stop.set()
        taker.join(30)
        assert not taker.is_alive() and taken == [None]
        pool.stop(force=True)
    assert "it was importing task module 'hangs_at_import'" in caplog.text
    assert "died importing" not in caplog.text, "the worker killed it, not its import"
    assert "hangs_at_import" in pool.hello["preload"], "still imported by later children"
