"""A job not started within its ``expires_secs`` of being enqueued is failed without running
(``JobExpiredError``, history kind ``expired``, never retried), as Celery's ``expires`` and
RQ's ``ttl`` drop a job that waited too long. Real ``nuvom runworker`` processes on SQLite,
per pool: the check happens before the job is handed to a thread, a child or the loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nuvom_kernel import JobFailedError, task
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobStatus
from tests.helpers import run_nuvom, start_worker, stop_worker, wait_until, write_module

TASKS = '''
import pathlib
from nuvom_kernel import task


@task(expires_secs=1, retries=3)
def stale(tag):
    pathlib.Path("ran-" + tag).touch()
    return tag


@task
def plain(tag):
    pathlib.Path("ran-" + tag).touch()
    return tag
'''

EXPIRES = 1.0


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["thread", "process", "asyncio"])
def test_a_job_that_waited_past_expires_secs_fails_without_running(project: Path,
                                                                  pool: str) -> None:
    write_module(project, "t_expires", TASKS)
    from t_expires import plain, stale  # type: ignore[import-not-found]

    kernel = Kernel(root=project, environ={})
    with use_kernel(kernel):
        late = stale.delay("late")
        longer = stale.apply_async(("longer",), expires_secs=120)
        untimed = plain.delay("untimed")
        enqueued = time.time()
        # the point of the test is time passing with no worker: wait for the clock
        wait_until(lambda: time.time() > enqueued + EXPIRES + 0.2, timeout=10,
                   what="the first job's expires_secs to pass")
        worker = start_worker(project, {}, "--pool", pool, "--workers", "2")
        try:
            assert longer.get(timeout=60) == "longer"
            assert untimed.get(timeout=60) == "untimed"
            with pytest.raises(JobFailedError) as failed:
                late.get(timeout=60)
            assert "expires_secs of 1 s" in str(failed.value), failed.value
            record = kernel.results.get(late.id)
            assert record is not None and record.status is JobStatus.FAILED
            assert record.error_type == "nuvom_kernel.errors.JobExpiredError"
            assert [h["kind"] for h in record.history] == ["expired"], "it was retried"
            assert not (project / "ran-late").exists(), "an expired job ran"

            done = run_nuvom(["retry", "job", late.id], project)
            assert done.returncode == 0, done.stderr
            wait_until(lambda: kernel.results.get(late.id).status  # type: ignore[union-attr]
                       is JobStatus.SUCCEEDED, timeout=60,
                       what="the re-enqueued job to run: its expiry counts from the retry")
            assert (project / "ran-late").exists()
        finally:
            stop_worker(worker)


def test_expires_secs_is_checked_where_it_is_given(project: Path) -> None:
    write_module(project, "t_expires", TASKS)
    from t_expires import stale  # type: ignore[import-not-found]

    with pytest.raises(ValueError, match="expires_secs"):
        task(expires_secs="60")(lambda: None)
    # one range in both messages: -1 was told "from 0", then 0 "must be > 0"
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"@task\(expires_secs=...\) takes a number of "
                                             r"seconds above 0 and at most"):
            task(name="zero", expires_secs=bad)(len)
    with use_kernel(Kernel(root=project, environ={})):
        with pytest.raises(ValueError, match="would expire before it may start"):
            stale.apply_async(("x",), delay_secs=5)
        with pytest.raises(ValueError, match="would expire before it may start"):
            stale.apply_async(("x",), delay_secs=30, expires_secs=10)
        with pytest.raises(ValueError, match=r"^apply_async\(expires_secs=...\) takes"):
            stale.apply_async(("x",), expires_secs=-3)
        job = stale.apply_async(("x",), delay_secs=5, expires_secs=10)
        assert job.options.expires_secs == 10
