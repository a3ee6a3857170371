"""Real `nuvom runworker` processes on SQLite and file: schedules fire once per tick across
workers, catch-up after downtime; and concurrency limits across executors, on Redis and
PostgreSQL too."""

from __future__ import annotations

import calendar
import itertools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import (
    E2E_BACKENDS,
    run_nuvom,
    start_worker,
    stop_worker,
    wait_until,
    write_module,
)

BACKENDS = [b for b in ("sqlite", "file") if b in E2E_BACKENDS]
LIMIT_BACKENDS = [b for b in ("sqlite", "file", "redis", "postgres") if b in E2E_BACKENDS]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not BACKENDS, reason="no backend")]

TASKS = """
import os, time
from nuvom_kernel import task, every, current_job

def stamp(name, text):
    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (text + "\\n").encode())
    os.close(fd)

@task(schedule=every(seconds=1), catch_up="all")
def beat():
    stamp("beats.log", current_job().scheduled_for.isoformat())

@task(concurrency=1)
def limited(i):
    stamp("limited.log", f"start {time.time()} {i}")
    deadline = time.monotonic() + 60  # the first one runs until the test says "go"
    while i == 0 and not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    stamp("limited.log", f"end {time.time()} {i}")

@task
def quick(i):
    stamp("quick.log", f"{time.time()} {i}")
"""


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    environ = {"NUVOM_QUEUE_BACKEND": request.param, "NUVOM_RESULT_BACKEND": request.param,
               "NUVOM_LOG_LEVEL": "INFO"}
    write_module(project, "sched_tasks", TASKS)
    result = run_nuvom(["discover", "tasks"], project)  # workers learn schedules from it
    assert result.returncode == 0, result.stderr
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        yield environ
    kernel.close()


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_workers_fire_each_tick_once_and_survive_a_kill(env, project: Path):
    log = project / "beats.log"
    workers = [start_worker(project, env, "--workers", "2") for _ in range(2)]
    try:
        wait_until(lambda: len(lines(log)) >= 1, timeout=30, what="the first tick")
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started >= 5, timeout=10, what="5 s")
        workers[0].send_signal(signal.SIGKILL)  # mid-run: no cleanup at all
        workers[0].wait(10)
        wait_until(lambda: time.monotonic() - started >= 10, timeout=10, what="10 s")
        stop_worker(workers[1])
    finally:
        for w in workers:
            w.kill()
    ticks = lines(log)
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    assert 9 <= len(ticks) <= 13, ticks  # about ten in ten seconds, not twenty
    stamps = sorted(time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in ticks)
    # A killed worker's leased tick runs again after its lease expires: none is lost, and
    # the ticks are consecutive seconds.
    assert stamps[-1] - stamps[0] == len(stamps) - 1


def test_restarted_worker_catches_up_every_missed_tick(env, project: Path):
    log = project / "beats.log"
    worker = start_worker(project, env, "--workers", "1")
    try:
        wait_until(lambda: len(lines(log)) >= 2, timeout=30, what="two ticks")
        stop_worker(worker)
        stopped = time.monotonic()
        before = len(lines(log))
        wait_until(lambda: time.monotonic() - stopped >= 5.5, timeout=10, what="5 ticks")
        assert len(lines(log)) == before  # nobody fires while no worker runs
        worker = start_worker(project, env, "--workers", "1")
        wait_until(lambda: len(lines(log)) >= before + 7, timeout=30, what="catch-up")
        stop_worker(worker)
    finally:
        worker.kill()
    ticks = lines(log)
    assert len(ticks) == len(set(ticks))
    stamps = sorted(time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in ticks)
    assert stamps[-1] - stamps[0] == len(stamps) - 1, "a missed tick was not caught up"
    listed = run_nuvom(["schedule", "list", "--json"], project,
                       NUVOM_QUEUE_BACKEND=env["NUVOM_QUEUE_BACKEND"],
                       NUVOM_RESULT_BACKEND=env["NUVOM_RESULT_BACKEND"])
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert set(row) == {"name", "task", "schedule", "tz", "next_run", "last_run",
                        "last_status", "missed", "skipped", "error"}
    assert (row["name"], row["schedule"], row["tz"], row["missed"], row["error"]) == (
        "beat", "every(1s)", "UTC", 0, None)
    assert row["last_status"] in ("SUCCEEDED", "QUEUED", "RUNNING")


@pytest.mark.parametrize("env", LIMIT_BACKENDS, indirect=True)
def test_concurrency_one_never_overlaps_and_other_tasks_flow(env, project: Path):
    from sched_tasks import limited, quick

    from nuvom_kernel.kernel import get_kernel

    held = limited.map(range(6))
    # two worker processes (two hosts, to the store) of two executors each
    workers = [start_worker(project, env, "--workers", "2", "--no-scheduler")
               for _ in range(2)]
    try:
        wait_until(lambda: len(lines(project / "limited.log")) >= 3, timeout=30,
                   what="the first limited job")  # held until "go": status must show it
        statuses: list[str] = []

        def limited_in_status() -> bool:  # a limited job may be between two claims
            statuses.append(run_nuvom(
                ["status"], project, NUVOM_QUEUE_BACKEND=env["NUVOM_QUEUE_BACKEND"],
                NUVOM_RESULT_BACKEND=env["NUVOM_RESULT_BACKEND"]).stdout)
            return "concurrency limited: running 1/1" in statuses[-1]

        wait_until(limited_in_status, timeout=30, what="the limit in `nuvom status`")
        others = quick.map(range(40))
        wait_until(lambda: len(lines(project / "quick.log")) == 80, timeout=30,
                   what="the other task's jobs")
        limited_done = sum("end" in line for line in
                           (project / "limited.log").read_text().splitlines())
        (project / "go").touch()
        wait_until(lambda: all(get_kernel().refresh_job(j).status is JobStatus.SUCCEEDED
                               for j in held), timeout=60, what="the limited jobs")
        for worker in workers:
            stop_worker(worker)
    finally:
        for worker in workers:
            worker.kill()
    assert limited_done < 6, "other jobs waited for the limited ones"
    assert all(get_kernel().refresh_job(j).status is JobStatus.SUCCEEDED for j in others)
    events = [line.split() for line in (project / "limited.log").read_text().splitlines()]
    spans = {}
    for kind, when, i in events:
        spans.setdefault(i, {})[kind] = float(when)
    ordered = sorted((s["start"], s["end"]) for s in spans.values())
    assert len(ordered) == 6
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(ordered)), \
        "two limited jobs ran at once"
    assert all(get_kernel().refresh_job(j).attempts == 1 for j in held), \
        "a job held back by its limit consumed an attempt"


def test_a_draining_worker_fires_no_more_ticks(env, project: Path):
    from sched_tasks import limited

    log, busy = project / "beats.log", project / "limited.log"
    worker = start_worker(project, env, "--workers", "1")
    try:
        wait_until(lambda: len(lines(log)) >= 1, timeout=30, what="the first tick")
        limited.delay(0)  # holds the one slot until "go": the drain lasts as long as we say
        wait_until(lambda: "start" in lines(busy), timeout=30, what="the long job")
        worker.send_signal(signal.SIGINT)  # drain
        signalled = time.time()
        wait_until(lambda: time.time() - signalled >= 4, timeout=10, what="4 s of drain")
        (project / "go").touch()
        worker.communicate(timeout=30)
    finally:
        worker.kill()
    listed = run_nuvom(["schedule", "list", "--json"], project,
                       NUVOM_QUEUE_BACKEND=env["NUVOM_QUEUE_BACKEND"],
                       NUVOM_RESULT_BACKEND=env["NUVOM_RESULT_BACKEND"])
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    last = calendar.timegm(time.strptime(row["last_run"][:19], "%Y-%m-%dT%H:%M:%S"))
    # Before the fix the scheduler went on firing every second of the 4 s drain.
    assert last <= signalled + 1.5, (row["last_run"], signalled)
