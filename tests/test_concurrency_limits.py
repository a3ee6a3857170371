"""``@task(concurrency=N)``: enforced by the queue at claim, refused where it cannot be."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time

import attrs
import pytest
from click.testing import CliRunner

from nuvom_kernel import JobStatus, task
from nuvom_kernel.cli import make_cli
from nuvom_kernel.discovery import TaskRef, write_manifest
from nuvom_kernel.errors import BackendCapabilityError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.limits import concurrency_limits
from nuvom_kernel.worker import Worker
from tests.helpers import (
    start_worker,
    stop_worker,
    wait_until,
    worker_starts_and_stops,
    write_module,
)


def test_limit_holds_across_executors_and_a_held_job_costs_nothing(kernel):
    if not kernel.queue.capabilities.concurrency:  # a third-party backend without limits
        @task(concurrency=1)
        def refused() -> None: ...

        with pytest.raises(BackendCapabilityError, match=f"'{kernel.queue.name}'.*concurrency="):
            refused.delay()
        return
    lock = threading.Lock()
    now = {"running": 0, "most": 0}

    @task(concurrency=2)
    def crawl(i: int) -> int:
        with lock:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
        time.sleep(0.05)
        with lock:
            now["running"] -= 1
        return i

    @task
    def other(i: int) -> int:
        return i

    limited = crawl.map(range(8))
    others = other.map(range(8))
    worker = Worker(kernel, workers=6, scheduler=False, poll_timeout_secs=0.05)
    worker.start()
    try:
        wait_until(lambda: all(j.refresh().status is JobStatus.SUCCEEDED
                               for j in limited + others), timeout=30, what="all jobs")
    finally:
        worker.stop()
        worker.join()
    assert now["most"] == 2
    assert all(j.attempts == 1 for j in limited)  # held back: no attempt consumed


@pytest.fixture
def memory_kernel(make_kernel):
    with use_kernel(make_kernel("memory")) as kernel:
        yield kernel


def test_a_timed_out_attempt_counts_until_its_function_returns(memory_kernel):
    kernel = memory_kernel
    spans: list[tuple[str, float]] = []

    @task(concurrency=1, timeout_secs=0.2)
    def stuck(i: int) -> None:
        spans.append(("start", time.monotonic()))
        time.sleep(0.8 if i == 0 else 0.0)
        spans.append(("end", time.monotonic()))

    first, second = stuck.delay(0), stuck.delay(1)
    worker = Worker(kernel, workers=2, scheduler=False, poll_timeout_secs=0.05)
    worker.start()
    try:
        wait_until(lambda: second.refresh().status is JobStatus.SUCCEEDED, timeout=20,
                   what="the second job")
    finally:
        worker.stop()
        worker.join()
    assert first.refresh().status is JobStatus.FAILED
    assert first.error_type.endswith("JobTimeoutError")
    assert [kind for kind, _ in spans] == ["start", "end", "start", "end"]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_stop_settles_a_timed_out_attempt_still_counting(make_kernel, backend: str):
    """Its outcome waited for its function to return, and the stop did not wait for that:
    the job stayed RUNNING, its lease held its task's only slot for a visibility timeout,
    and then it ran again though it had no retries left (found by a hunt)."""
    release = threading.Event()
    started = threading.Event()

    @task(concurrency=1, timeout_secs=0.2)
    def wedged() -> None:
        started.set()
        release.wait(30)

    with use_kernel(make_kernel(backend)) as kernel:
        job = wedged.delay()
        worker = Worker(kernel, workers=1, scheduler=False, poll_timeout_secs=0.05)
        worker.start()
        try:
            wait_until(started.is_set, timeout=10, what="the job to start")
            wait_until(lambda: any(t.name == "nuvom-timeout" for t in threading.enumerate()),
                       timeout=10, what="the attempt to time out")
        finally:
            worker.stop()
            assert worker.join() == 0
            release.set()
        record = job.refresh()
        assert record.status is JobStatus.FAILED and record.error_type.endswith(
            "JobTimeoutError"), f"{record.status}: a timed-out attempt is recorded at a stop"
        assert kernel.queue.peek_state(job.id) is None, "and its lease is settled, not held"


def test_concurrency_on_a_queue_without_the_capability_is_refused(memory_kernel):
    kernel = memory_kernel
    kernel.queue.capabilities = attrs.evolve(kernel.queue.capabilities, concurrency=False)

    @task(concurrency=1)
    def crawl() -> None: ...

    with pytest.raises(BackendCapabilityError) as at_delay:
        crawl.delay()
    with pytest.raises(BackendCapabilityError) as at_start:
        Worker(kernel, workers=1, scheduler=False).start()
    for info in (at_delay, at_start):
        assert "'memory'" in str(info.value) and "concurrency=" in str(info.value)


def test_status_shows_running_over_limit_and_waiting(make_kernel):
    kernel = make_kernel("sqlite")

    @task(concurrency=1)
    def crawl(i: int) -> None: ...

    with use_kernel(kernel):
        crawl.map(range(3))
    kernel.queue.set_concurrency_limits({"crawl": 1})
    leases = kernel.queue.claim(5)
    assert [lease.message.task for lease in leases] == ["crawl"]
    result = CliRunner().invoke(make_cli(kernel), ["status", "--json"], obj=kernel)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["limits"] == {
        "crawl": {"running": 1, "limit": 1, "waiting": 2}}
    text = CliRunner().invoke(make_cli(kernel), ["status"], obj=kernel).output
    assert "concurrency crawl: running 1/1, 2 ready (held back by the limit)" in text
    assert kernel.queue.ack(leases[0])
    text = CliRunner().invoke(make_cli(kernel), ["status"], obj=kernel).output
    assert "concurrency crawl: running 0/1, 2 ready\n" in text, \
        "with room left, ready jobs wait for a worker, not on the limit (said by a hunt)"


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_a_worker_discovers_where_the_manifest_is_missing_or_stale(project, pool: str) -> None:
    """A process pool's children import the task modules, never the worker: a hunt ran 12
    jobs at once of a task limited to 2. A thread pool learns a limit only as it imports the
    module, after its first claims: two fresh workers ran 3 at once of a task limited to 1.
    A warning said to run `nuvom discover tasks`; the worker now does what it says, where the
    manifest is missing or older than a task file it names, and says nothing otherwise."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    write_module(project, "pp_limited", "from nuvom_kernel import task\n\n\n"
                 "@task(concurrency=2)\ndef crawl(i):\n    return i\n")
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    manifest = project / ".nuvom" / "manifest.json"

    def options() -> dict[str, object]:
        return json.loads(manifest.read_text())["tasks"][0]["options"]

    said = worker_starts_and_stops(project, env, "--pool", pool, "--workers", "1")
    assert "no manifest at " in said and ": discovered 1 task(s) under " in said, said
    assert "knows schedules from" not in said and "concurrency limits: crawl=2" in said, said
    assert options() == {"concurrency": 2}
    said = worker_starts_and_stops(project, env, "--pool", pool, "--workers", "1")
    assert "discovered" not in said and "changed after" not in said, said

    # the module edited after discovery (a limit changed, a schedule added)
    write_module(project, "pp_limited", "from nuvom_kernel import task\n\n\n"
                 "@task(concurrency=1)\ndef crawl(i):\n    return i\n")
    written = manifest.stat().st_mtime
    os.utime(project / "pp_limited.py", (written + 1, written + 1))
    said = worker_starts_and_stops(project, env, "--pool", pool, "--workers", "1")
    assert "1 task file(s) changed or removed after " in said and "(pp_limited.py): discovered 1 " \
        "task(s)" in said and "concurrency limits: crawl=1" in said, said
    assert options() == {"concurrency": 1}

    # a manifest that does not say how it was discovered (an older one, or written by hand):
    # its --include/--exclude are unknown, so it is only said to be stale
    data = json.loads(manifest.read_text())
    del data["scan"]
    manifest.write_text(json.dumps(data))
    os.utime(project / "pp_limited.py", (time.time() + 5, time.time() + 5))
    said = worker_starts_and_stops(project, env, "--pool", pool, "--workers", "1")
    assert ("1 task file(s) changed or removed after " in said and "(pp_limited.py): a "
            "schedule=, a concurrency= or a task added there is unknown to this worker, and "
            "one removed still known, until `nuvom discover tasks` runs again") in said \
        and "discovered" not in said, said

    # without a discoverer, a worker without a manifest says what it does not know
    manifest.unlink()
    said = worker_starts_and_stops(project, {**env, "NUVOM_DISABLE_PLUGINS": "discovery"},
                                   "--pool", pool, "--workers", "1")
    assert "knows schedules from" in said and "and there is none" in said, said
    assert "run `nuvom discover tasks` where it finds your tasks" in said, said


def test_a_fresh_worker_holds_a_limit_from_its_first_claim(project) -> None:
    """Three jobs of a task limited to 1 queued before the first worker ever started, with
    no manifest: the worker claimed all three at once (it learns a limit as it imports the
    task's module, after the claim) and ran them side by side."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    write_module(project, "fresh_once", PP_ONCE.replace("once.log", "fresh.log"))
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_LOG_LEVEL": "INFO"}
    from fresh_once import once

    with use_kernel(Kernel(root=project, environ=environ)) as kernel:
        jobs = once.map(range(3))
        worker = start_worker(project, environ, "--workers", "3", "--no-scheduler")
        try:
            wait_until(lambda: all(kernel.refresh_job(j).status is JobStatus.SUCCEEDED
                                   for j in jobs), timeout=60, what="the limited jobs")
        finally:
            stop_worker(worker)
        kernel.close()
    spans: dict[str, dict[str, float]] = {}
    for line in (project / "fresh.log").read_text().splitlines():
        kind, when, i = line.split()
        spans.setdefault(i, {})[kind] = float(when)
    ordered = sorted((s["start"], s["end"]) for s in spans.values())
    assert len(ordered) == 3
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(ordered)), \
        f"jobs of a task limited to 1 ran at once: {ordered}"


def test_limits_come_from_the_manifest_then_the_children_then_imports(make_kernel) -> None:
    """What a process pool's children report overrides the manifest (their code is newer
    than a manifest discovered before it changed) and this process's imports override both."""
    kernel = make_kernel("memory")
    write_manifest(kernel.data_dir, [
        TaskRef(name=name, module="elsewhere", file="elsewhere.py", line=1,
                options={"concurrency": limit})
        for name, limit in (("lifted", 2), ("kept", 3), ("imported", 4))])

    @task(concurrency=5)
    def imported() -> None: ...

    reported = {"lifted": None, "new": 6, "imported": 7}
    assert concurrency_limits(kernel, reported) == {"kept": 3, "new": 6, "imported": 5}
    assert concurrency_limits(kernel) == {"lifted": 2, "kept": 3, "imported": 5}


PP_ONCE = """
import os, time
from nuvom_kernel import task

def stamp(text):
    fd = os.open("once.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (text + "\\n").encode())
    os.close(fd)

@task(concurrency=1)
def once(i):
    stamp(f"start {time.time()} {i}")
    time.sleep(0.2)
    stamp(f"end {time.time()} {i}")
"""


def test_a_process_pool_worker_learns_a_limit_from_its_children(project) -> None:
    """Without a manifest (and no discoverer to write one at start) the worker, which
    imports no task module, learns a task's limit from the children that ran its first job:
    before, it never did, and ran a task limited to 1 three at a time for good."""
    write_module(project, "pp_once", PP_ONCE)
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_LOG_LEVEL": "INFO"}
    worker = start_worker(project, {**environ, "NUVOM_DISABLE_PLUGINS": "discovery"},
                          "--pool", "process", "--workers", "3", "--no-scheduler")
    said: list[str] = []
    pump = threading.Thread(target=lambda: said.extend(worker.stdout or ()), daemon=True)
    pump.start()
    try:
        from pp_once import once

        with use_kernel(Kernel(root=project, environ=environ)) as kernel:
            first = once.delay(0)
            wait_until(lambda: kernel.refresh_job(first).status is JobStatus.SUCCEEDED,
                       timeout=60, what="the first job")
            wait_until(lambda: any("concurrency limits: " in line and "=1" in line
                                   for line in list(said)), timeout=30,
                       what="the worker applying the limit its children reported")
            jobs = once.map(range(1, 7))
            wait_until(lambda: all(kernel.refresh_job(j).status is JobStatus.SUCCEEDED
                                   for j in jobs), timeout=60, what="the limited jobs")
            kernel.close()
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        finally:
            worker.kill()
        pump.join(timeout=10)
    spans: dict[str, dict[str, float]] = {}
    for line in (project / "once.log").read_text().splitlines():
        kind, when, i = line.split()
        spans.setdefault(i, {})[kind] = float(when)
    ordered = sorted((s["start"], s["end"]) for i, s in spans.items() if i != "0")
    assert len(ordered) == 6
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(ordered)), \
        f"jobs of a task limited to 1 ran at once: {ordered}"
