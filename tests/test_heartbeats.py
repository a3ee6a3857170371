"""Workers you can see: real `nuvom runworker` processes heartbeat into each persistent
backend, `nuvom status --json` lists them under "workers", and a worker killed with
SIGKILL drops out of the list within three heartbeats; a clean stop removes it at once."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import Worker
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.worker.heartbeat import MISSED_HEARTBEATS
from tests.helpers import (
    PERSISTENT_BACKENDS,
    run_nuvom,
    start_worker,
    stop_worker,
    wait_until,
    write_module,
)

TASKS = """
import threading
from nuvom_kernel import task

gate = threading.Event()

@task
def hold():
    gate.wait(30)
    return 1
"""

BEAT = 0.4  # heartbeat_secs in these tests


@pytest.fixture(params=PERSISTENT_BACKENDS)
def env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    yield {"NUVOM_QUEUE_BACKEND": request.param, "NUVOM_RESULT_BACKEND": request.param,
           "NUVOM_HEARTBEAT_SECS": str(BEAT), "NUVOM_LOG_LEVEL": "INFO"}


def status_workers(project: Path, environ: dict[str, str]) -> list[dict[str, object]]:
    done = run_nuvom(["status", "--json"], project, **environ)
    assert done.returncode == 0, done.stderr
    workers = json.loads(done.stdout)["workers"]
    assert isinstance(workers, list)
    return workers


@pytest.mark.slow
def test_two_workers_listed_and_a_killed_one_drops_out_within_three_heartbeats(
        env: dict[str, str], project: Path) -> None:
    kernel = Kernel(root=project, environ=env)
    procs = [start_worker(project, env, "--workers", "3", "--queue", "default"),
             start_worker(project, env, "--workers", "2", "--pool", "process")]
    try:
        wait_until(lambda: len(kernel.results.live_workers()) == 2, timeout=30,
                   what="both workers' first heartbeat")
        listed = {w["pid"]: w for w in status_workers(project, env)}
        assert set(listed) == {p.pid for p in procs}
        first = listed[procs[0].pid]
        assert (first["slots"], first["queues"], first["pool"]) == (3, ["default"], "thread")
        assert first["busy_slots"] == 0 and first["heartbeat_secs"] == BEAT
        assert first["reports"]["abandoned_threads"] == 0
        assert listed[procs[1].pid]["pool"] == "process"
        assert {"id", "host", "started_at", "version", "heartbeat_at"} <= set(first)

        victim = procs[0]
        last_beat = max(w.heartbeat_at for w in kernel.results.live_workers()
                        if w.pid == victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_until(lambda: [w.pid for w in kernel.results.live_workers()] == [procs[1].pid],
                   timeout=30, what="the killed worker to drop out")
        gone_after = time.time() - last_beat
        # Three missed heartbeats after its last one, measured on this host's clock (the
        # poll adds a little): not at once (it was not removed by anyone) and not much later.
        assert gone_after <= MISSED_HEARTBEATS * BEAT + 1.0, gone_after
        assert [w["pid"] for w in status_workers(project, env)] == [procs[1].pid]

        out = stop_worker(procs[1])
        assert procs[1].returncode == 0, out
        assert kernel.results.live_workers() == [], "a clean stop removes the worker at once"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        kernel.close()


def test_heartbeat_reports_busy_slots(make_kernel, project: Path) -> None:
    write_module(project, "hb_tasks", TASKS)
    kernel = make_kernel("memory", NUVOM_HEARTBEAT_SECS="0.05")
    with use_kernel(kernel):
        import hb_tasks

        worker = Worker(kernel, workers=2)
        worker.start()
        try:
            hb_tasks.hold.delay()
            wait_until(lambda: [w.busy_slots for w in kernel.results.live_workers()] == [1],
                       what="a heartbeat saying one slot is busy")
            (info,) = kernel.results.live_workers()
            assert (info.slots, info.id) == (2, worker.heartbeat.id)
            assert info.reports["heartbeat_lag_secs"] >= 0
        finally:
            hb_tasks.gate.set()
            worker.stop()
            worker.join()
    assert kernel.results.live_workers() == []


HOLDS = """
import os
import time
from nuvom_kernel import task

@task(retries=1, retry_delay_secs=0)
def hold(flag):
    if not os.path.exists(flag + ".failed"):
        open(flag + ".failed", "w").close()
        raise RuntimeError("the first attempt fails, so the job has a record")
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 1
"""


def test_list_and_inspect_name_the_worker_running_a_job(project: Path) -> None:
    """Which worker holds a RUNNING job was not shown (a lease does not say), and `inspect
    job` showed the worker of the record's earlier attempt as if it ran this one."""
    write_module(project, "hold_tasks", HOLDS)
    env = {"NUVOM_HEARTBEAT_SECS": str(BEAT)}
    flag = project / "release"
    with use_kernel(Kernel(root=project, environ=env)):
        from hold_tasks import hold  # type: ignore[import-not-found]

        job = hold.delay(str(flag))
    worker = start_worker(project, env, "--workers", "2")
    try:
        def named() -> object:
            jobs = json.loads(run_nuvom(["list", "jobs", "--json"], project, **env).stdout)
            return jobs["jobs"] and jobs["jobs"][0]["worker"]

        holder = wait_until(named, timeout=30, what="`list jobs` to name the job's worker")
        (info,) = status_workers(project, env)
        assert holder == info["id"] and list(info["running"]) == [job.id], info
        done = run_nuvom(["inspect", "job", job.id, "--format", "json"], project, **env)
        shown = json.loads(done.stdout)
        assert (shown["status"], shown["worker"]) == ("RUNNING", info["id"]), shown
        assert shown["attempts"] == 1 and shown["started_at"] == info["running"][job.id]
        assert info["id"] in run_nuvom(["list", "jobs"], project, **env).stdout
    finally:
        flag.touch()
        out = stop_worker(worker)
    assert worker.returncode == 0, out


def test_status_says_when_the_result_backend_keeps_no_heartbeats(project: Path) -> None:
    (project / "nohb.py").write_text(
        "from nuvom_kernel import hookimpl\n"
        "from nuvom_kernel.testing.stubs import StubResults\n"
        "class NoBeats(StubResults):\n"
        "    name = 'nobeats'\n"
        "    from nuvom_kernel.backends import Capabilities\n"
        "    capabilities = Capabilities()\n"
        "@hookimpl\n"
        "def nuvom_register_result_backends():\n"
        "    return [NoBeats]\n")
    (project / ".nuvom_plugins.toml").write_text('[plugins]\nresult_backend = ["nohb"]\n')
    done = run_nuvom(["status"], project, NUVOM_QUEUE_BACKEND="memory",
                     NUVOM_RESULT_BACKEND="nobeats")
    assert done.returncode == 0, done.stderr
    assert "workers: unknown (result backend 'nobeats' keeps no heartbeats)" in done.stdout
    done = run_nuvom(["status", "--json"], project, NUVOM_QUEUE_BACKEND="memory",
                     NUVOM_RESULT_BACKEND="nobeats")
    assert json.loads(done.stdout)["workers"] == []


def test_a_store_that_fails_never_stops_the_heartbeat(make_kernel, project: Path,
                                                      caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    kernel = make_kernel("memory", NUVOM_HEARTBEAT_SECS="0.05")
    results = kernel.results
    real = results.heartbeat
    calls: list[int] = []
    lock = threading.Lock()

    def flaky(info, ttl_secs):  # type: ignore[no-untyped-def]
        with lock:
            calls.append(1)
            if len(calls) <= 2:
                raise ConnectionError("store down")
        real(info, ttl_secs)

    results.heartbeat = flaky  # type: ignore[method-assign]
    worker = Worker(kernel, workers=1)
    worker.start()
    try:
        wait_until(lambda: results.live_workers(), what="a heartbeat after two failures")
    finally:
        worker.stop()
        worker.join()
    assert "could not record its heartbeat" in caplog.text


def test_a_heartbeat_from_a_clock_ahead_reads_just_now_not_a_negative_age() -> None:
    """A worker 180 s ahead of the reader was listed "LAST BEAT -177.0 s ago"; one 120 s
    behind, which the store (Redis, PostgreSQL: the server's clock) still kept as live,
    "123.6 s ago", as if it were dead."""
    from nuvom_kernel.cli.jobs import _beat

    assert _beat(2.04, 5.0) == "2.0 s ago"
    assert _beat(-0.3, 5.0) == "0.0 s ago"  # within a second: the clocks' usual jitter
    assert _beat(-177.0, 5.0) == "just now (its clock is 177 s ahead of this one)"
    assert _beat(15.9, 5.0) == "15.9 s ago"  # three beats missed: not the clock's fault
    assert _beat(123.6, 5.0) == "within 15 s (its clock is at least 109 s behind this one)"


def test_status_shows_the_tasks_stuck_past_their_timeout(project: Path) -> None:
    """A worker whose every slot a stuck task held ran nothing and read ``0/2``, as an
    idle, healthy worker does; only ``--json``'s reports said otherwise."""
    from nuvom_kernel.views import WorkerInfo

    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    kernel = Kernel(root=project, environ=environ)
    now = time.time()
    for wid, stuck in (("host:1:stuck", 4), ("host:2:fine", 0), ("host:3:odd", "many")):
        kernel.results.heartbeat(WorkerInfo(
            id=wid, host="host", pid=1, pool="thread", slots=2, busy_slots=0, queues=[],
            started_at=now, heartbeat_at=now, version="t", heartbeat_secs=5.0,
            reports={"abandoned_threads": stuck}), 60)
    kernel.close()
    done = run_nuvom(["status"], project, **environ)
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if "host:" in line}
    assert "0/2 (4 stuck)" in rows["host:1:stuck"], done.stdout
    assert "0/2" in rows["host:2:fine"] and "stuck" not in rows["host:2:fine"]
    assert "stuck" not in rows["host:3:odd"], "a report it cannot read is left out"


def test_of_two_workers_listing_a_job_the_later_start_holds_it() -> None:
    """A lease that expired under a stuck attempt: its old worker still lists the job, and
    so does its new holder; whichever heartbeat came last was named."""
    from nuvom_kernel.views import WorkerInfo, holders

    old = WorkerInfo(id="a:1:x", host="a", pid=1, running={"j": 100.0, "k": 5.0})
    new = WorkerInfo(id="b:2:y", host="b", pid=2, running={"j": 200.0})
    for order in ([old, new], [new, old]):
        found = holders(order)
        assert (found["j"].id, found["k"].id) == ("b:2:y", "a:1:x")
