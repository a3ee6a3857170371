"""A real ``nuvom runworker`` process serves /metrics: after N jobs the counters and
histograms say N, failures are counted by kind, queue depth and oldest age come from the
queue backend's stats(); a port in use or a bad setting stops the worker with an error
naming the setting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prom_helpers import TASKS, sample, scrape, served_port, start_worker, wait_until
from prom_helpers import project as project  # the fixture

from nuvom_kernel import JobStatus, get_job
from nuvom_kernel.kernel import Kernel, use_kernel

N = 7
ENV = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
       "NUVOM_RETRY_DELAY_SECS": "0", "NUVOM_LOG_LEVEL": "INFO",
       "NUVOM_PLUGINS__PROMETHEUS__PORT": "0",
       "NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS": "0.1"}


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["thread", "process", "asyncio"])
def test_metrics_after_n_jobs(project: Path, pool: str) -> None:
    """With the process pool the parent settles every attempt its children ran, so its
    own counters are the one endpoint for all of them."""
    (project / "m_tasks.py").write_text(TASKS)
    kernel = Kernel(root=project, environ=ENV)
    proc, log = start_worker(project, ENV, "--workers", "2", "--queue", "default",
                             "--pool", pool)
    try:
        port = served_port(log)
        with use_kernel(kernel):
            import m_tasks

            adds = m_tasks.add.map([(i, i) for i in range(N)])
            flaky, sleepy = m_tasks.flaky.delay(), m_tasks.sleepy.delay()
            m_tasks.add.apply_async((0, 0), delay_secs=300)  # delayed on the served queue
            m_tasks.add.apply_async((0, 0), queue="other")  # a queue nobody serves
            m_tasks.add.apply_async((0, 0), queue="other")
            wait_until(lambda: all(get_job(j.id).status is JobStatus.SUCCEEDED for j in adds)
                       and get_job(flaky.id).status is JobStatus.FAILED
                       and get_job(sleepy.id).status is JobStatus.FAILED, 60, "the jobs")
        add = {"task": adds[0].task, "queue": "default"}

        def settled() -> dict | None:
            s = scrape(port)
            ok = (sample(s, "nuvom_jobs_total", **add, status="succeeded") == N
                  and sample(s, "nuvom_jobs_total", task=sleepy.task, queue="default",
                             status="timed_out") == 1
                  and sample(s, "nuvom_jobs_total", task=flaky.task, queue="default",
                             status="failed") == 1
                  and sample(s, "nuvom_queue_depth", queue="other", state="ready") == 2)
            return s if ok else None

        s = wait_until(settled, 30, "metrics of every settled attempt")
        assert isinstance(s, dict)
        assert sample(s, "nuvom_job_run_seconds_count", **add) == N
        assert sample(s, "nuvom_job_wait_seconds_count", **add) == N
        assert sample(s, "nuvom_job_run_seconds_bucket", **add, le="+Inf") == N
        assert sample(s, "nuvom_jobs_total", task=flaky.task, queue="default",
                      status="retried") == 1, "the first of flaky's two attempts"
        assert sample(s, "nuvom_jobs_total", **add, status="failed") is None
        assert sample(s, "nuvom_queue_depth", queue="default", state="delayed") == 1
        assert sample(s, "nuvom_queue_depth", queue="default", state="ready") == 0
        assert (sample(s, "nuvom_oldest_job_age_seconds", queue="other") or 0) > 0
        assert sample(s, "nuvom_oldest_job_age_seconds", queue="default") == 0
        assert sample(s, "nuvom_worker_slots") == 2
        assert sample(s, "nuvom_leases_lost_total") == 0
        assert sample(s, "nuvom_queue_stats_errors_total") == 0
        assert abs((sample(s, "nuvom_queue_stats_last_success_timestamp_seconds") or 0)
                   - time.time()) < 30, "a fresh snapshot"
        # The abandoned thread of the timed-out job is not a busy slot once it is decided.
        wait_until(lambda: sample(scrape(port), "nuvom_worker_busy_slots") == 0, 30,
                   "no busy slot")
    finally:
        proc.terminate()
        proc.wait(30)
        kernel.close()
    assert proc.returncode == 0, log.read_text()


def _runworker(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "nuvom_kernel", "runworker"], cwd=project,
                          env=full, capture_output=True, text=True, timeout=60, check=False)


def test_a_port_in_use_is_a_startup_error_naming_the_setting(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _runworker(project, {**ENV, "NUVOM_PLUGINS__PROMETHEUS__PORT": str(port)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"[plugins.prometheus] port={port} (NUVOM_PLUGINS__PROMETHEUS__PORT)" in done.stderr
    assert "in use" in done.stderr
    assert "started" not in done.stdout + done.stderr, "nothing may start before the bind"


def test_a_host_this_machine_does_not_have_is_an_error_naming_the_host(project: Path
                                                                       ) -> None:
    done = _runworker(project, {**ENV, "NUVOM_PLUGINS__PROMETHEUS__HOST": "192.0.2.1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[plugins.prometheus] host='192.0.2.1' (NUVOM_PLUGINS__PROMETHEUS__HOST)" \
        in done.stderr
    assert "not an address of this machine" in done.stderr
    assert "holds that port" not in done.stderr


@pytest.mark.parametrize(("value", "status", "says"), [
    ("abc", 2, "NUVOM_PLUGINS__PROMETHEUS__PORT"),
    ("70000", 2, "port='70000' is invalid: it must be a TCP port 1-65535"),
])
def test_a_bad_port_is_refused_by_name(project: Path, value: str, status: int, says: str
                                       ) -> None:
    done = _runworker(project, {**ENV, "NUVOM_PLUGINS__PROMETHEUS__PORT": value})
    assert done.returncode == status, done.stdout + done.stderr
    assert says in done.stderr


@pytest.mark.parametrize("value", ["inf", "1e10"])
def test_a_refresh_interval_too_long_to_wait_stops_the_worker_naming_it(
        project: Path, value: str) -> None:
    """It was accepted, and the refresh thread then died with an ``OverflowError`` that
    named neither the setting nor its variable; now nothing starts: the kernel refuses it
    at load, as every duration it declares (``values.Seconds``, exit status 2)."""
    done = _runworker(project, {**ENV, "NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS": value})
    assert done.returncode == 2, done.stdout + done.stderr
    assert (f"env NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS: refresh_secs={value!r} is invalid: "
            "it must be a finite number of seconds > 0 and at most 31622400 seconds "
            "(366 days)") in done.stderr
    assert "OverflowError" not in done.stdout + done.stderr
    assert "started" not in done.stdout + done.stderr, "nothing may start"
