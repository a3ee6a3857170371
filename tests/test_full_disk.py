"""A full disk under the SQLite database, met by a real `nuvom runworker`: a job whose outcome
cannot be stored is not run again (the worker holds its lease and tries until the disk has
room, claiming nothing new), and a worker stopped meanwhile says which outcomes it could not
record and exits with status 1. Before, each such job ran again at every visibility timeout
until the delivery limit recorded it FAILED "as if its worker had crashed", and a stop
dropped the outcomes silently with status 0. A real tmpfs gives the real ENOSPC (root only).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobStatus
from tests.helpers import wait_until, write_module

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0, reason="mounts a small tmpfs to fill it (needs root)")]

TASKS = '''
import os
from nuvom_kernel import task

@task
def report(i):
    with open(os.environ["RUNS_LOG"], "a") as f:  # a side effect: an email, a payment
        f.write(f"{i}\\n")
    return "x" * 300_000
'''

VISIBILITY = 2.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int = 1_000_000) -> Path:
    filler = mount / "filler"
    stat = os.statvfs(mount)
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def _env(project: Path, mount: Path) -> dict[str, str]:
    return {"NUVOM_PLUGINS__SQLITE__PATH": str(mount / "nuvom.db"),
            "NUVOM_VISIBILITY_TIMEOUT_SECS": str(VISIBILITY), "NUVOM_MAX_DELIVERIES": "3",
            "RUNS_LOG": str(project / "runs.log")}


def _start(project: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker",
                             "--workers", "2"], cwd=project, env=full,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _runs(project: Path) -> collections.Counter[str]:
    log = project / "runs.log"
    return collections.Counter(log.read_text().split() if log.exists() else [])


def _worker_on_a_full_disk(project: Path, disk: Path, jobs: int,
                          monkeypatch: pytest.MonkeyPatch
                          ) -> tuple[Kernel, dict[str, str], list[str], Path, Path,
                                     subprocess.Popen[bytes]]:
    """``jobs`` queued, the disk filled, a worker started and refusing to store their
    outcomes: the kernel, the environment, the job ids, the filler, the log, the worker."""
    write_module(project, "t_full", TASKS)
    env = _env(project, disk)
    monkeypatch.setenv("RUNS_LOG", env["RUNS_LOG"])
    kernel = Kernel(root=project, environ=env)
    with use_kernel(kernel):
        from t_full import report  # type: ignore[import-not-found]

        ids = [job.id for job in report.map([(i,) for i in range(jobs)])]
    filler = _fill(disk)
    log = project / "worker.log"
    worker = _start(project, env, log)
    wait_until(lambda: "trying again while this worker holds their leases"
               in log.read_text(), timeout=60, what="the store to refuse outcomes")
    return kernel, env, ids, filler, log, worker


def test_outcomes_wait_for_room_and_no_job_runs_twice(
        project: Path, disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, _, ids, filler, _, worker = _worker_on_a_full_disk(project, disk, 10, monkeypatch)
    try:
        full_since = time.time()
        # the point is time passing: three leases' worth, enough for the delivery limit
        wait_until(lambda: time.time() > full_since + 3 * VISIBILITY + 1.0, timeout=30,
                   what="three visibility timeouts with the disk full")
        filler.unlink()
        wait_until(lambda: all(kernel.results.get(i) is not None for i in ids), timeout=90,
                   what="every outcome to be stored once there is room")
        records = [kernel.results.get(i) for i in ids]
        assert {r.status for r in records if r} == {JobStatus.SUCCEEDED}, [
            (r.status, r.error_message) for r in records if r]
        runs = _runs(project)
        assert sorted(runs) == sorted(str(i) for i in range(10))
        assert set(runs.values()) == {1}, f"jobs ran again: {runs}"
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(60)


def test_a_stop_while_the_disk_is_full_names_the_lost_outcomes_and_exits_1(
        project: Path, disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, env, ids, filler, log, worker = _worker_on_a_full_disk(project, disk, 4,
                                                                  monkeypatch)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(90) == 1, log.read_text()[-3000:]
    out = log.read_text()
    assert "could not be recorded" in out and "outcomes not recorded" in out, out[-3000:]
    unrecorded = [i for i in ids if f"job={i}" in out.split("could not be recorded", 1)[1]]
    assert unrecorded, "the log names no job whose outcome was lost"
    filler.unlink()
    again = _start(project, env, project / "worker2.log")
    try:
        wait_until(lambda: all((r := kernel.results.get(i)) is not None
                               and r.status is JobStatus.SUCCEEDED for i in ids),
                   timeout=90, what="the unrecorded jobs to run again and succeed")
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(60)
