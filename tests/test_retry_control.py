"""A task decides about its own retries: ``raise Retry(delay_secs=...)`` runs it again after
that delay (counted against ``retries``), ``raise NoRetry(...)`` fails it now whatever
retries remain. Real ``nuvom runworker`` processes, one per pool: the process pool carries
both back from its child as data, and must rebuild them for the settler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobFailedError, NoRetry, Retry
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import wait_until, write_module

pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]

TASKS = '''
from nuvom_kernel import NoRetry, Retry, current_job, task


@task(retries=3, retry_delay_secs=600)
def snoozes(times):
    """Asks to run again ``times`` times, 0.2 s later each, not the task's 600 s."""
    if current_job().attempts <= times:
        raise Retry("not yet", delay_secs=0.2)
    return current_job().attempts


@task(retries=5, retry_delay_secs=0)
def refuses(user_id):
    try:
        {}[user_id]
    except KeyError as exc:
        raise NoRetry(f"no user {user_id}") from exc


@task(retry_delay_secs=0)
def asks_without_retries():
    raise Retry("again please", delay_secs=0)


class BadInput(NoRetry):
    """A task's own kind of NoRetry, with details of its own (not the pool's)."""

    details = {"attempt": 99, "kind": "http"}


class Later(Retry):
    pass


@task(retries=3, retry_delay_secs=0)
def refuses_its_way():
    raise BadInput("bad input")


@task(retries=3, retry_delay_secs=600)
def snoozes_its_way(times):
    if current_job().attempts <= times:
        raise Later("later", delay_secs=0.2)
    return current_job().attempts


@task(retries=3, retry_delay_secs=600)
async def snoozes_async(times):
    if current_job().attempts <= times:
        raise Retry("not yet", delay_secs=0.2)
    return current_job().attempts


@task(retries=5, retry_delay_secs=0)
async def refuses_async(user_id):
    raise NoRetry(f"no user {user_id}")
'''


@pytest.fixture
def env(project: Path) -> Iterator[dict[str, str]]:
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    write_module(project, "retry_tasks", TASKS)
    kernel = Kernel(root=project, environ=environ)
    with use_kernel(kernel):
        yield environ
    kernel.close()


@pytest.fixture(params=["thread", "process", "asyncio"])
def pool(request: pytest.FixtureRequest, project: Path, env: dict[str, str]) -> Iterator[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(env)
    log = project / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker", "--pool",
                                 request.param, "--workers", "2"], cwd=project, env=full,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: " started: " in log.read_text(errors="replace"), timeout=30,
                       what="worker start")
            yield request.param
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            finally:
                proc.kill()


def test_a_task_asks_for_its_own_retry_and_delay(pool: str) -> None:
    from retry_tasks import snoozes, snoozes_async  # type: ignore[import-not-found]

    job = (snoozes_async if pool == "asyncio" else snoozes).delay(2)
    assert job.get(timeout=30) == 3  # with the task's own 600 s delay, it would not be
    [first, second] = job.history  # the failed attempts
    assert (first["error_type"], second["error_type"]) == ("nuvom_kernel.errors.Retry",) * 2
    assert first["error_message"] == "not yet"
    assert second["started_at"] - first["finished_at"] >= 0.2, job.history


def test_a_task_fails_its_job_now_whatever_retries_remain(pool: str) -> None:
    from retry_tasks import refuses, refuses_async  # type: ignore[import-not-found]

    job = (refuses_async if pool == "asyncio" else refuses).delay(7)
    with pytest.raises(JobFailedError) as failed:
        job.get(timeout=30)
    assert job.attempts == 1, job.history  # not 6: retries=5 did not apply
    assert failed.value.error_type == "nuvom_kernel.errors.NoRetry"
    assert "no user 7" in str(failed.value)
    if pool != "asyncio":  # the cause, chained, is in the recorded traceback
        assert "KeyError: 7" in (job.traceback or ""), job.traceback


def test_retry_counts_against_retries(pool: str) -> None:
    if pool == "asyncio":
        pytest.skip("the same settler; the thread and process pools cover it")
    from retry_tasks import asks_without_retries  # type: ignore[import-not-found]

    job = asks_without_retries.delay()
    with pytest.raises(JobFailedError, match="again please"):
        job.get(timeout=30)
    assert job.attempts == 1


def test_eager_mode_follows_them_too(nuvom_eager: object) -> None:
    """The testing kit runs retries at once, inside ``.delay()``; the same decisions."""
    from nuvom_kernel import current_job, task

    @task(retries=2, name="eager_snoozes")
    def eager_snoozes() -> int:
        if current_job().attempts < 3:
            raise Retry(delay_secs=5)
        return current_job().attempts

    @task(retries=4, name="eager_refuses")
    def eager_refuses() -> None:
        raise NoRetry("bad input")

    assert eager_snoozes.delay().get() == 3
    refused = eager_refuses.delay()
    with pytest.raises(JobFailedError, match="bad input"):
        refused.get()
    assert refused.attempts == 1


@pytest.mark.parametrize("delay", [-1, float("inf"), float("nan"), "5", True, 1e9])
def test_a_retry_delay_no_queue_can_keep_is_refused_where_it_is_raised(delay: object) -> None:
    with pytest.raises(ValueError, match=r"Retry\(delay_secs=\.\.\.\) takes a number of seconds"):
        Retry(delay_secs=delay)  # type: ignore[arg-type]


def test_subclasses_count_as_theirs_and_keep_their_names(pool: str) -> None:
    """The process pool sent back the exact class name and rebuilt only ``Retry`` and
    ``NoRetry``: a task's ``class BadInput(NoRetry)`` was retried every time, and its
    ``Later(Retry)`` waited the task's own 600 s. And a subclass's own ``details`` dict
    overwrote the attempt's history entry (``attempt``, ``kind``)."""
    if pool == "asyncio":
        pytest.skip("sync tasks: the thread and process pools")
    from retry_tasks import refuses_its_way, snoozes_its_way  # type: ignore[import-not-found]

    refused = refuses_its_way.delay()
    with pytest.raises(JobFailedError, match="bad input"):
        refused.get(timeout=30)
    assert refused.attempts == 1
    [entry] = refused.history
    assert (entry["error_type"], entry["attempt"], entry["kind"]) == (
        "retry_tasks.BadInput", 1, "error"), entry
    snoozed = snoozes_its_way.delay(1)
    assert snoozed.get(timeout=30) == 2
    assert snoozed.history[0]["error_type"] == "retry_tasks.Later"
