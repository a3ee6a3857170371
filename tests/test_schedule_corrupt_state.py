"""A damaged schedule state (a hand edit, a disk fault, a partial restore) stops nothing.

Before, one schedule's undecodable entry made ``schedule_states()`` raise: no schedule fired
on any worker (each pass failed, "scheduler pass failed; retrying") and ``nuvom schedule
list`` died with a traceback. Now the entry reads as a placeholder, logged once with its
text: the healthy schedules fire as before, the damaged one fires as a new schedule would,
its next write replaces the entry (once, across schedulers), and ``nuvom schedule list``
lists it with a note. The backends' own tests damage each store; here the scheduler, the
command and real ``nuvom runworker`` processes.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import every, task
from nuvom_kernel.backends import decode_schedule_state
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import ScheduleState
from nuvom_kernel.scheduler import Scheduler, schedule_rows
from tests.helpers import (
    E2E_BACKENDS,
    run_nuvom,
    start_worker,
    stop_worker,
    wait_until,
    write_module,
)
from tests.test_scheduling import at, fired

IN_PROCESS_BACKENDS = [b for b in ("memory", "sqlite", "file") if b in E2E_BACKENDS]
PROCESS_BACKENDS = [b for b in ("sqlite", "file") if b in E2E_BACKENDS]


def damage(kernel: Kernel, name: str) -> None:
    """Make schedule ``name``'s stored state undecodable, as a hand edit would."""
    results: Any = kernel.results
    if results.name == "memory":
        results._schedules[name] = [1]
    elif results.name == "sqlite":
        db = sqlite3.connect(results.path)
        with db:
            db.execute("UPDATE nuvom_schedules SET state = '{not json' WHERE name = ?",
                       (name,))
        db.close()
    else:
        path = results.path / "schedules.json"
        data = json.loads(path.read_text())
        data[name] = [1]
        path.write_text(json.dumps(data))


@pytest.mark.parametrize(("stored", "problem"), [
    ("{", "not JSON"),
    ("  ", "empty"),
    ("null", "a JSON object was expected, found null"),
    ('{"name": "s", "last_tick": true, "updated_at": 1}', "its last_tick is true"),
    ('{"name": "s", "last_run": "1", "updated_at": 1}', 'its last_run is a string ("1")'),
    ('{"name": "s", "skipped": [], "updated_at": 1}', "its skipped is an array ([])"),
    ('{"name": "s", "updated_at": "1"}', 'its updated_at is a string ("1")'),
    ('{"name": "t", "updated_at": 1}', "it is stored under 's' but names schedule 't'"),
])
def test_a_state_the_scheduler_would_choke_on_is_refused_saying_why(stored: str,
                                                                    problem: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        decode_schedule_state("s", stored)


def test_a_good_state_decodes_with_its_version_kept_beside_it() -> None:
    state = ScheduleState("s", last_tick=5.0, last_job_id="j", last_run=5.0, fired=2,
                          missed=1, skipped=3, updated_at=7.0)
    text = json.dumps({**state.to_dict(), "future_field": 1})
    assert decode_schedule_state("s", text) == state
    assert decode_schedule_state("s", text.encode(), version=9.5).updated_at == 9.5
    assert "unreadable" not in state.to_dict()


@pytest.mark.parametrize("backend", IN_PROCESS_BACKENDS)
def test_the_others_fire_and_the_damaged_one_fires_again_once_per_tick(
        make_kernel, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    kernel = make_kernel(backend)

    @task(schedule=every(seconds=1))
    def good() -> None: ...

    @task(schedule=every(seconds=1))
    def other() -> None: ...

    t0 = at("2026-06-01T12:00:00+00:00")
    first, second = Scheduler(kernel), Scheduler(kernel)  # two workers' schedulers
    first.run_pending(t0)
    assert len(fired(kernel)) == 2
    damage(kernel, "other")

    (good_row, other_row) = schedule_rows(kernel)  # what `nuvom schedule list` shows
    assert good_row["last_run"] is not None and good_row["error"] is None
    assert other_row["name"] == "other" and other_row["last_run"] is None
    assert "stored state is unreadable" in other_row["error"]

    with caplog.at_level(logging.INFO, logger="nuvom.scheduler"):
        for i in range(1, 6):  # both schedulers pass at every second: each tick once
            first.run_pending(t0 + i)
            second.run_pending(t0 + i)
    stamps = [datetime.fromtimestamp(t0 + i, timezone.utc).isoformat() for i in range(1, 6)]
    assert fired(kernel) == sorted(stamps * 2), "both schedules, each tick once"
    states = kernel.results.schedule_states()
    assert states["other"].unreadable is None and states["other"].fired == 5
    assert states["good"].fired == 6
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    errors = [m for level, m in messages if level >= logging.ERROR]
    assert len(errors) == 1 and "'other'" in errors[0], errors  # once, not once a pass
    assert sum("was replaced" in m for _, m in messages) == 1
    assert [row["error"] for row in schedule_rows(kernel)] == [None, None]


TASKS = """
import os
from nuvom_kernel import task, every, current_job

def stamp(name):
    fd = os.open(name + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (current_job().scheduled_for.isoformat() + "\\n").encode())
    os.close(fd)

@task(schedule=every(seconds=1))
def good():
    stamp("good")

@task(schedule=every(seconds=1))
def other():
    stamp("other")
"""


@pytest.fixture(params=PROCESS_BACKENDS)
def env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    environ = {"NUVOM_QUEUE_BACKEND": request.param, "NUVOM_RESULT_BACKEND": request.param,
               "NUVOM_LOG_LEVEL": "INFO"}
    write_module(project, "corrupt_sched_tasks", TASKS)
    result = run_nuvom(["discover", "tasks"], project)  # workers learn schedules from it
    assert result.returncode == 0, result.stderr
    yield environ


def ticks(project: Path, name: str) -> list[str]:
    path = project / f"{name}.log"
    return path.read_text().split() if path.exists() else []


def listed(project: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``nuvom schedule list --json`` by name; the command must succeed."""
    result = run_nuvom(["schedule", "list", "--json"], project, **env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.mark.slow
def test_real_workers_fire_every_schedule_after_one_state_is_damaged(
        env: dict[str, str], project: Path) -> None:
    worker = start_worker(project, env, "--workers", "1")
    try:
        wait_until(lambda: ticks(project, "good") and ticks(project, "other"), timeout=30,
                   what="a tick of each schedule")
        stop_worker(worker)
    finally:
        worker.kill()
    kernel = Kernel(root=project, environ=env)
    with use_kernel(kernel):
        damage(kernel, "other")
    kernel.close()

    rows = listed(project, env)  # the damage present, no worker to replace it
    assert set(rows) == {"good", "other"}
    assert rows["good"]["last_run"] is not None and rows["good"]["error"] is None
    assert rows["other"]["last_run"] is None
    assert "stored state is unreadable" in rows["other"]["error"]
    table = run_nuvom(["schedule", "list"], project, **env)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr and "other" in table.stdout

    before = {name: len(ticks(project, name)) for name in ("good", "other")}
    workers = [start_worker(project, env, "--workers", "1") for _ in range(2)]
    outputs: list[str] = []
    try:
        wait_until(lambda: all(len(ticks(project, name)) >= before[name] + 3
                               for name in before), timeout=60,
                   what="three more ticks of each schedule")
        outputs = [stop_worker(w) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for name in before:
        assert len(ticks(project, name)) == len(set(ticks(project, name))), \
            f"a tick of {name} ran twice"
    output = "\n".join(outputs)
    assert "scheduler pass failed" not in output, output
    assert "'other'" in output and "is unreadable" in output, output
    assert output.count("was replaced") == 1, output  # one worker's write replaced it
    rows = listed(project, env)
    assert rows["other"]["last_run"] is not None and rows["other"]["error"] is None
