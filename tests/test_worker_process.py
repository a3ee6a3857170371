"""A real `nuvom runworker` subprocess: signals, drain, idle CPU — on each persistent backend."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, get_job
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import (
    PERSISTENT_BACKENDS,
    read_until_started,
    start_worker,
    wait_until,
    write_module,
)

pytestmark = pytest.mark.skipif(not PERSISTENT_BACKENDS, reason="no persistent backend installed")

TASKS = """
import pathlib, time
from nuvom_kernel import task

@task
def slow(name, secs):
    d = pathlib.Path('marks')
    d.mkdir(exist_ok=True)
    (d / f'{name}.start').write_text('')
    time.sleep(secs)
    (d / f'{name}.end').write_text('')
    return name
"""


@pytest.fixture(params=PERSISTENT_BACKENDS)
def env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    environ = {"NUVOM_QUEUE_BACKEND": request.param, "NUVOM_RESULT_BACKEND": request.param,
               "NUVOM_VISIBILITY_TIMEOUT_SECS": "60", "NUVOM_LOG_LEVEL": "INFO"}
    write_module(project, "proc_tasks", TASKS)
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        yield environ
    kernel.close()


def started(project: Path) -> set[str]:
    marks = project / "marks"
    return {p.stem for p in marks.glob("*.start")} if marks.exists() else set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_drains_running_jobs_and_exits_0(env, project: Path, sig):
    from proc_tasks import slow

    from nuvom_kernel.kernel import get_kernel

    jobs = slow.map([(f"j{i}", 1.0) for i in range(6)])
    proc = start_worker(project, env, "--workers", "2", "--grace-period", "20")
    try:
        wait_until(lambda: len(started(project)) == 2, timeout=30, what="2 jobs running")
        running = started(project)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "finishing running jobs" in out
    done = {j.args[0] for j in jobs if get_job(j.id).status is JobStatus.SUCCEEDED}
    assert running <= done, "a running job was not allowed to finish"
    queue = get_kernel().queue
    stats = queue.stats()
    assert stats.in_flight == 0, "leases were left to expire instead of being returned"
    assert queue.qsize() == len(jobs) - len(done)
    assert all((project / "marks" / f"{name}.end").exists() for name in running)


def test_second_signal_stops_at_once_and_returns_the_lease(env, project: Path):
    from proc_tasks import slow

    from nuvom_kernel.kernel import get_kernel

    job = slow.delay("long", 60)
    proc = start_worker(project, env, "--workers", "1", "--grace-period", "60")
    try:
        wait_until(lambda: "long" in started(project), timeout=30, what="job running")
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        time.sleep(0.2)  # let the first signal's handler run before the second arrives
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert elapsed < 10, out
    assert proc.returncode == 1, out
    assert "stopping now" in out
    queue = get_kernel().queue
    assert queue.stats().in_flight == 0
    assert queue.qsize() == 1  # back in the queue at once, not after the visibility timeout
    assert get_job(job.id).status is JobStatus.QUEUED


def test_a_forced_stop_of_the_process_pool_says_no_child_replaces_the_killed_one(
        project: Path) -> None:
    """It logged "a fresh child takes its place" as the worker exited."""
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_LOG_LEVEL": "INFO"}
    write_module(project, "proc_tasks", TASKS)
    with use_kernel(Kernel(root=project, environ=environ)):
        from proc_tasks import slow

        slow.delay("long", 60)
        proc = start_worker(project, environ, "--workers", "1", "--pool", "process")
        lines: list[str] = []
        pump = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        pump.start()
        try:
            wait_until(lambda: "long" in started(project), timeout=60, what="job running")
            proc.send_signal(signal.SIGINT)
            wait_until(lambda: "finishing running jobs" in "".join(lines),
                       what="the first signal's drain")
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            pump.join(timeout=10)
        finally:
            proc.kill()
        out = "".join(lines)
        assert proc.returncode == 1, out
        assert "killed by signal 9 (SIGKILL); the worker is stopping" in out, out
        assert "a fresh child takes its place" not in out, out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_idle_worker_uses_under_5_percent_cpu(env, project: Path):
    proc = start_worker(project, env, "--workers", "4")
    try:
        from proc_tasks import slow

        job = slow.delay("warm", 0)  # proves the worker is up and serving
        assert job.get(timeout=30) == "warm"
        before = _cpu_seconds(proc.pid)
        t0 = time.monotonic()
        time.sleep(10)  # the measurement window itself, not synchronization
        used = _cpu_seconds(proc.pid) - before
        wall = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert used / wall < 0.05, f"idle worker used {used:.2f} s CPU in {wall:.1f} s"


HANGING = """
import threading
from nuvom_plugins_sqlite.queue import SQLiteJobQueue
from nuvom_plugins_sqlite.results import SQLiteResultBackend

class HangingQueue(SQLiteJobQueue):
    '''A store that stops answering as the worker stops: handing a lease back never returns.'''
    name = "hanging"

    def extend(self, lease, secs):
        if secs == 0:
            threading.Event().wait()
        return super().extend(lease, secs)

    def extend_many(self, leases, secs):
        if secs == 0:
            threading.Event().wait()
        return super().extend_many(leases, secs)

class HangingResults(SQLiteResultBackend):
    name = "hanging"

    def forget_worker(self, worker_id):
        threading.Event().wait()
"""


def _hanging_worker(project: Path, jobs: int, grace: float
                    ) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """A ``runworker`` over :data:`HANGING` running ``jobs`` minute-long jobs: the process,
    the lines it prints (read by the thread) and that thread."""
    write_module(project, "hang_plugin", HANGING)
    write_module(project, "proc_tasks", TASKS)
    (project / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["hang_plugin:HangingQueue"]\n'
        'result_backend = ["hang_plugin:HangingResults"]\n')
    environ = {"NUVOM_QUEUE_BACKEND": "hanging", "NUVOM_RESULT_BACKEND": "hanging",
               "NUVOM_LOG_LEVEL": "INFO"}
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        from proc_tasks import slow

        for name in "abcdefgh"[:jobs]:
            slow.delay(name, 60)
    kernel.close()
    proc = start_worker(project, environ, "--workers", str(jobs), "--grace-period",
                        str(grace))
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    pump.start()
    wait_until(lambda: len(started(project)) == jobs, timeout=30, what="the jobs running")
    return proc, lines, pump


@pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS, reason="needs the SQLite plugin")
def test_second_signal_stops_even_when_the_store_stops_answering(project: Path):
    """A host cut off from its Redis or PostgreSQL handed each running job's lease back in
    a call of its own that waited out the backend's timeouts: minutes, against "stops at
    once". The give-back is one bounded call now, and the process ends at the latest
    FORCED_EXIT_SECS after the second signal whatever still waits."""
    from nuvom_kernel.worker.signals import FORCED_EXIT_SECS

    proc, lines, pump = _hanging_worker(project, 2, 60)
    try:
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any("finishing running jobs" in line for line in lines),
                   timeout=10, what="the first signal's drain")  # two at once may merge
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=FORCED_EXIT_SECS + 20)
        elapsed = time.monotonic() - t0
        pump.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 1, out
    assert "did not take back 2 abandoned job(s)" in out, out
    assert elapsed < FORCED_EXIT_SECS + 5, (elapsed, out)


@pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS, reason="needs the SQLite plugin")
def test_the_grace_period_running_out_stops_even_when_the_store_stops_answering(
        project: Path):
    """One signal, a grace period that runs out, a store that does not answer: the stop
    took 22 s past a 3 s grace (the exit timer was armed by a second signal only), though
    workers.md says the grace running out stops the worker at once."""
    from nuvom_kernel.worker.signals import FORCED_EXIT_SECS

    grace = 1.0
    proc, lines, pump = _hanging_worker(project, 1, grace)
    try:
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=grace + FORCED_EXIT_SECS + 30)
        elapsed = time.monotonic() - t0
        pump.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 1, out
    assert elapsed < grace + FORCED_EXIT_SECS + 5, (elapsed, out)


def test_a_finished_forced_stop_does_not_end_the_program_later(tmp_path: Path):
    """The exit timer of the second signal was never cancelled: a program that embeds a
    worker and goes on after its stop was killed (status 1) FORCED_EXIT_SECS later."""
    import subprocess
    import sys

    script = """
import signal, sys, time
from pathlib import Path
import nuvom_kernel.worker.signals as signals
from nuvom_kernel import Worker
from nuvom_kernel.testing.pytest_plugin import build_test_kernel

signals.FORCED_EXIT_SECS = 1.5
kernel = build_test_kernel(Path(sys.argv[1]))
worker = Worker(kernel, workers=1, poll_timeout_secs=0.05)
worker.start()
worker.signals.handle(signal.SIGTERM, None)
worker.signals.handle(signal.SIGTERM, None)  # forced
assert worker.join() == 0
deadline = time.monotonic() + 3  # past the timer: the program goes on
while time.monotonic() < deadline:
    time.sleep(0.05)
print("still here")
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "still here" in done.stdout, done.stdout + done.stderr


def test_a_second_signal_inside_the_first_ones_stop_does_not_hang_the_worker(tmp_path: Path):
    """Python runs a signal handler in the main thread between any two bytecodes, so a
    second signal right after the first (a double ``kill -INT``, as a test's teardown sent)
    can run inside the first one's handler. The handler stopped the worker itself: a second
    signal landing in the first one's ``Event.set()`` waited on a lock its own thread held,
    and the worker hung for good (once in CI). Here the second signal is sent from inside
    that critical section, where it would otherwise land by chance."""
    import subprocess
    import sys

    script = """
import os, signal, sys, threading
from pathlib import Path
from nuvom_kernel import Worker
from nuvom_kernel.testing.pytest_plugin import build_test_kernel

class SignalledInside(threading.Event):
    sent = False

    def set(self):
        with self._cond:  # as Event.set: its lock held
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
                print("second signal sent", flush=True)
            self._flag = True
            self._cond.notify_all()

worker = Worker(build_test_kernel(Path(sys.argv[1])), workers=1, poll_timeout_secs=0.05)
worker._stopping = SignalledInside()
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
print("exit", worker.run(), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    out = done.stdout + done.stderr
    assert "second signal sent" in out and "exit 0" in out, out
    assert "received SIGINT again: stopping now" in out, out


def test_a_process_forked_from_the_worker_takes_its_signals_as_python_would(tmp_path: Path):
    """A task's ``multiprocessing`` pool (fork) inherits the worker's handler: a SIGTERM to
    it (``systemctl stop`` signals the whole cgroup, Ctrl-C the whole process group) was
    caught there, so ``Pool.terminate()`` hung, and once the handler wrote to the worker's
    pipe it counted in the worker too: a forced stop where a drain was asked for."""
    import subprocess
    import sys

    script = """
import os, signal, sys, time
from pathlib import Path
from nuvom_kernel import Worker
from nuvom_kernel.testing.pytest_plugin import build_test_kernel

worker = Worker(build_test_kernel(Path(sys.argv[1])), workers=1)
worker.signals.install()
ready, said = os.pipe()
child = os.fork()
if child == 0:
    os.write(said, b"r")  # past the interpreter's after-fork reset of pending signals
    while True:
        signal.pause()
assert os.read(ready, 1) == b"r"
os.kill(child, signal.SIGTERM)
deadline = time.monotonic() + 20
while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
if done[0] == 0:
    os.kill(child, signal.SIGKILL)
    print("the child ignored SIGTERM", flush=True)
else:
    print("child", os.waitstatus_to_exitcode(done[1]), flush=True)
print("worker", worker.signals.received, worker._stopping.is_set(), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    out = done.stdout + done.stderr
    assert f"child {-signal.SIGTERM}" in out and "worker 0 False" in out, out


@pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS, reason="needs the SQLite plugin")
def test_runworker_on_a_store_a_newer_plugin_wrote_exits_at_once_saying_so(project: Path):
    """A host left behind in a rolling upgrade (or rolled back): the SQLite store is opened
    by the first claim, so ``runworker`` started, then logged the schema error with a
    traceback every 2 s and never stopped. The worker reads both stores before it starts."""
    import sqlite3

    from tests.helpers import run_nuvom

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite"})
    kernel.queue.qsize()  # the file exists, at this plugin's schema
    kernel.close()
    db = next((project / ".nuvom").glob("*.db"))
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    done = run_nuvom(["runworker"], project, timeout=60, NUVOM_QUEUE_BACKEND="sqlite")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "schema version 999" in lines[0], lines
    assert "`pip install -U ./nuvom_plugins_sqlite`" in lines[0]


OFFLOADING = """
import asyncio, time
from nuvom_kernel import task

@task(timeout_secs=1)
async def offload():
    await asyncio.to_thread(time.sleep, 120)
"""


@pytest.mark.skipif("sqlite" not in PERSISTENT_BACKENDS, reason="needs the SQLite plugin")
def test_a_timed_out_to_thread_call_does_not_keep_the_process_alive(project: Path):
    """Python's exit waits for every executor thread's call: a task that awaited
    ``asyncio.to_thread`` and timed out left one running, and the worker said "stopped"
    while its process lived on (through any number of signals) until the call returned."""
    from nuvom_kernel.cli.core import EXIT_SECS

    write_module(project, "offload_tasks", OFFLOADING)
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        from offload_tasks import offload

        job = offload.delay()
        proc = start_worker(project, environ)
        try:
            wait_until(lambda: job.refresh().status is JobStatus.FAILED, timeout=30,
                       what="the job to time out")
            proc.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            out, _ = proc.communicate(timeout=EXIT_SECS + 30)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    kernel.close()
    assert proc.returncode == 0, out
    assert elapsed < EXIT_SECS + 10, (elapsed, out)
    assert "waiting for threads that tasks started" in out


def test_a_program_that_ran_a_worker_gets_its_signals_back(tmp_path: Path) -> None:
    """``Worker.run()`` in a program that goes on afterwards (a test suite, a service with a
    worker phase): the worker's SIGINT handler stayed installed, so the program's own
    Ctrl-C only counted towards a worker already gone, and each run left its signal thread
    and pipe behind. Two runs in one process, a signal after each."""
    import subprocess
    import sys

    script = """
import os, signal, sys, threading
from pathlib import Path
from nuvom_kernel import Worker
from nuvom_kernel.testing.pytest_plugin import build_test_kernel

def fds():
    return len(os.listdir("/proc/self/fd"))

mine = lambda signum, frame: print("the program's handler", flush=True)
signal.signal(signal.SIGTERM, mine)
before = fds()
for run in (1, 2):
    worker = Worker(build_test_kernel(Path(sys.argv[1]) / str(run)), workers=1,
                    poll_timeout_secs=0.05)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    print("exit", worker.run(), flush=True)
    print("handlers", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          signal.getsignal(signal.SIGTERM) is mine, flush=True)
    print("threads", sum(t.name == "nuvom-signals" for t in threading.enumerate()), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the program's own handler answers
print("fds", fds() - before, flush=True)
try:
    os.kill(os.getpid(), signal.SIGINT)
    threading.Event().wait(10)  # a handler runs at once: KeyboardInterrupt ends the wait
    print("no KeyboardInterrupt", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.count("exit 0") == 2, out + done.stderr
    assert out.count("handlers True True") == 2, out
    assert out.count("threads 0") == 2, out
    assert out.count("the program's handler") == 2, out
    assert "KeyboardInterrupt" in out, out
    fds = int(out.split("fds ")[1].split()[0])
    assert fds == 0, out  # no pipe left per run


ADD = """
from nuvom_kernel import task


@task(store_result=True)
def add(x, y):
    return x + y
"""

MUL = """

@task(store_result=True)
def mul(x, y):
    return x * y
"""


def test_a_task_added_while_the_worker_runs_says_to_restart_it(project: Path) -> None:
    """A worker imports a task module at its first job and never again. A task added to
    that module afterwards failed with "run `nuvom discover tasks`", which the user had
    done, and which changes nothing: only a restart loads the new code. The error now
    says so, naming the file."""
    from tests.helpers import run_nuvom, stop_worker

    (project / "tasks.py").write_text(ADD)
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    worker = start_worker(project, {}, "--workers", "1")
    try:
        done = run_nuvom(["enqueue", "add", "--args", "[1, 2]", "--wait", "30"],
                         project)
        assert done.returncode == 0 and "3" in done.stdout, done.stdout + done.stderr
        with (project / "tasks.py").open("a") as tasks:  # the module imported: now edited
            tasks.write(MUL)
        assert run_nuvom(["discover", "tasks"], project).returncode == 0
        done = run_nuvom(["enqueue", "mul", "--args", "[2, 3]", "--wait", "30"],
                         project)
    finally:
        out = stop_worker(worker)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text + out
    assert "module 'tasks' has no task named 'mul'" in text, text
    assert f"{project / 'tasks.py'} changed after this process imported it" in text, text
    assert "restart the worker to run the new code" in text, text
    assert "nuvom discover tasks" not in text, text


def test_a_misspelt_queue_of_runworker_is_told(project: Path) -> None:
    """``nuvom runworker --queue defualt`` served a queue no job goes to, without a word,
    while the jobs waited in ``default``. A name close to none known is left alone."""
    from tests.helpers import worker_starts_and_stops

    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    out = worker_starts_and_stops(project, env, "--workers", "1", "--queue", "defualt",
                                  "--queue", "reports")
    assert "--queue 'defualt': no task of the manifest routes jobs to it and no job waits " \
           "in it (did you mean 'default'?); this worker serves it all the same" in out, out
    assert "--queue 'reports'" not in out, out


def test_the_queue_typo_hint_reads_a_manifest_entry_without_options(project: Path) -> None:
    """A manifest entry may carry ``"options": null`` (the manifest check allows it); the
    hint read it as a mapping, and ``runworker --queue`` stopped with an AttributeError."""
    import json

    from nuvom_kernel.cli.output import queue_typo

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory"})
    try:
        kernel.data_dir.mkdir(parents=True, exist_ok=True)
        (kernel.data_dir / "manifest.json").write_text(json.dumps({"tasks": [
            {"name": "t", "module": "m", "options": None},
            {"name": "u", "module": "m", "options": {"queue": "reports"}}]}))
        assert queue_typo(kernel, "defualt") == " (did you mean 'default'?)"
        assert queue_typo(kernel, "report") == " (did you mean 'reports'?)"
    finally:
        kernel.close()


def test_a_signal_just_after_the_stop_leaves_its_exit_status(env, project: Path):
    """A second SIGINT 20-100 ms after the "stopped" line killed the process by SIGINT
    (status -2, no word) where the stop had decided 0: the worker's handlers were gone
    before the process exited."""
    worker = start_worker(project, env, "--workers", "1")
    try:
        assert " started: " in "".join(read_until_started(worker))
        worker.send_signal(signal.SIGINT)
        assert worker.stdout is not None
        for line in worker.stdout:  # up to the "stopped" line, then until it exits
            if " stopped: " in line:
                deadline = time.monotonic() + 30
                while worker.poll() is None and time.monotonic() < deadline:
                    worker.send_signal(signal.SIGINT)
                    worker.send_signal(signal.SIGTERM)
                    time.sleep(0.001)  # (a pace, not a wait for anything)
                break
        out, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, out
