"""A forward step of the host's clock past a visibility timeout (NTP correcting a drifted
VM, a resumed laptop) made every live lease look expired, and an idle worker took them all
over while their worker still ran them: every running job ran twice. Real ``nuvom
runworker`` processes on one SQLite file, or one file backend folder; each runs under a shim
that shifts ``time.time`` by the seconds in a file every process reads (``time.monotonic``
untouched), as an NTP step shifts the wall clock of every process on the host at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus
from tests.helpers import stop_worker, user_env, wait_until

SHIM = '''\
import os, sys, time

_real, _real_ns, _mono = time.time, time.time_ns, time.monotonic
_file, _cache = os.environ["CLOCK_FILE"], [0.0, -1.0]


def _offset():
    if _mono() - _cache[1] > 0.05:
        with open(_file) as f:
            _cache[0] = float(f.read().strip() or 0)
        _cache[1] = _mono()
    return _cache[0]


time.time = lambda: _real() + _offset()
time.time_ns = lambda: _real_ns() + int(_offset() * 1e9)
sys.argv = ["nuvom", *sys.argv[1:]]
from nuvom_kernel.cli import main
sys.exit(main())
'''

TASKS = '''\
import os, time
from pathlib import Path

from nuvom_kernel import task


@task
def stepped_clock_job(i):
    Path(os.environ["RUNS_DIR"], f"{i}.{os.getpid()}.{time.monotonic_ns()}").touch()
    time.sleep(float(os.environ["JOB_SECS"]))
'''


def _worker(project: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "shim.py", "runworker", "--workers", "2",
                             "--no-scheduler"], cwd=project, env=user_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_a_forward_step_of_the_clock_does_not_run_live_jobs_twice(tmp_path: Path,
                                                                  backend: str) -> None:
    project, runs, clock = tmp_path / "proj", tmp_path / "runs", tmp_path / "clock"
    project.mkdir()
    runs.mkdir()
    clock.write_text("0")
    (project / "shim.py").write_text(SHIM)
    (project / "step_tasks.py").write_text(TASKS)
    env = {"CLOCK_FILE": str(clock), "RUNS_DIR": str(runs), "JOB_SECS": "7",
           "NUVOM_VISIBILITY_TIMEOUT_SECS": "6", "PYTHONPATH": str(project),
           "NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend}
    subprocess.run([sys.executable, "-c", "from step_tasks import stepped_clock_job as j; "
                    "j.delay(0); j.delay(1)"], cwd=project, env=user_env(**env), check=True,
                   timeout=60)
    kernel = Kernel(root=project, environ={k: v for k, v in env.items()
                                           if k.startswith("NUVOM_")})
    first = _worker(project, env)
    second = None
    try:
        wait_until(lambda: len(list(runs.iterdir())) == 2, 60,
                   "the first worker to run both jobs")
        second = _worker(project, env)  # idle: both jobs are leased to the first one
        wait_until(lambda: len(kernel.results.live_workers()) == 2, 60,
                   "the second worker to start")
        clock.write_text("30")  # every process's wall clock, five timeouts forward
        wait_until(lambda: len(kernel.results.query(status=JobStatus.SUCCEEDED)) == 2, 60,
                   "both jobs to finish")
    finally:
        outputs = [stop_worker(w) for w in (first, second) if w is not None]
        kernel.close()
    names = sorted(p.name.split(".")[0] for p in runs.iterdir())
    assert names == ["0", "1"], (names, outputs)
