"""``expires_secs`` with a worker whose wall clock is minutes ahead of the queue's server.

The wait was this worker's clock at the start against the producer's at the enqueue, so a
worker 5 minutes ahead failed every ``expires_secs=60`` job it claimed, unrun, as "not
started in time". Both ends are the server's clock now (Redis ``TIME``, PostgreSQL
``clock_timestamp()``): the enqueue as the push stored it, the claim as its lease says. A
real ``nuvom runworker`` under a shim that shifts only its ``time.time`` (its monotonic
clock untouched, as an NTP step leaves it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import SERVER_BACKENDS, stop_worker, write_module

SKEWED = '''\
import sys, time

_real, _skew = time.time, float(sys.argv[1])
time.time = lambda: _real() + _skew
time.time_ns = lambda: int(time.time() * 1e9)
sys.argv = ["nuvom", *sys.argv[2:]]
from nuvom_kernel.cli import main
sys.exit(main())
'''

TASKS = '''
from nuvom_kernel import task


@task(expires_secs=60)
def skew_fresh(tag):
    return tag
'''


@pytest.mark.parametrize("backend", sorted(SERVER_BACKENDS))
@pytest.mark.parametrize("skew", [300, -300])
def test_a_worker_with_a_skewed_clock_runs_fresh_jobs(project: Path, backend: str,
                                                      skew: int) -> None:
    write_module(project, "t_skew", TASKS)
    (project / "skewed.py").write_text(SKEWED)
    from t_skew import skew_fresh  # type: ignore[import-not-found]

    env = {"NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend}
    kernel = Kernel(root=project, environ=env)
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    worker = subprocess.Popen([sys.executable, "skewed.py", str(skew), "runworker",
                               "--workers", "1", "--no-scheduler"], cwd=project,
                              env={**worker_env, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        with use_kernel(kernel):
            job = skew_fresh.delay("fresh")
            assert job.get(timeout=20) == "fresh", "expired by the worker's clock"
    finally:
        out = stop_worker(worker)
        kernel.close()
    assert "JobExpiredError" not in out, out
