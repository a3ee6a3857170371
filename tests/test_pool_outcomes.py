"""Outcomes every pool must record once, with real ``nuvom runworker`` processes.

Each test is a fault a real worker showed:

* an exception whose ``str()`` raises (a buggy ``__str__``, ``ValueError(10**5000)``) was
  never recorded by the thread pool (the job ran again at every visibility timeout until the
  delivery limit called it a crash), and killed the process pool's child (recorded as
  ``ChildKilledError``, retried);
* a task's own ``details`` attribute (a method, as gRPC errors have) was merged into its
  history entry, which raised: that attempt was never recorded either;
* in the process pool, a result JSON cannot carry (an int of 5,000 digits, a list nested
  5,000 deep) killed the child or came back as a plain error, and the task ran again per
  its ``retries``; the thread pool fails it once with ``SerializationError``;
* in the process pool, a child killed while idle failed the next job without running it;
* in the process pool, the soft timeout never reached an ``async def`` task that was
  awaiting: it was SIGKILLed ``kill_grace_secs`` later and its ``finally`` never ran.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobFailedError, JobStatus, get_job
from nuvom_kernel.errors import error_text
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import alive, wait_until, write_module
from tests.test_pools import Worker, _in_manifest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

TASKS = """
import asyncio, os, pathlib
from nuvom_kernel import task


def _ran(name):
    with open("runs.log", "a") as log:
        log.write(name + "\\n")


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("str() exploded")


class RpcError(Exception):
    def details(self):  # as grpc.RpcError has
        return "unavailable"


class Detailed(Exception):
    details = {"kind": "mine", "attempt": 99}


@task
def pid():
    return os.getpid()


@task(retries=1, retry_delay_secs=0)
def bad_str():
    _ran("bad_str")
    raise BadStr("x")


@task(retries=1, retry_delay_secs=0)
def big_int_error():
    _ran("big_int_error")
    raise ValueError(10 ** 5000)


@task(retries=1, retry_delay_secs=0)
def rpc_error():
    _ran("rpc_error")
    raise RpcError("no")


@task(retries=1, retry_delay_secs=0)
def detailed():
    _ran("detailed")
    raise Detailed("no")


class OwnTraceback(Exception):
    remote_traceback = 123  # an attribute of the task's own, not a str


@task
def own_traceback():
    _ran("own_traceback")
    raise OwnTraceback("mine")


@task
def waited():
    from nuvom_kernel import JobFailedError
    _ran("waited")
    raise JobFailedError("other-job", "KeyError", "'k'", "the other job's traceback")


@task(retries=2, retry_delay_secs=0)
def big_int():
    _ran("big_int")
    return 10 ** 5000


@task(retries=2, retry_delay_secs=0)
def deep():
    _ran("deep")
    top = inner = []
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    return top


@task(timeout_secs=1)
async def awaits_past_timeout():
    try:
        await asyncio.sleep(30)
    finally:
        pathlib.Path("finally.ran").write_text(str(os.getpid()))
"""


@pytest.fixture
def start(project: Path) -> Iterator[Callable[..., Worker]]:
    environ = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
               "NUVOM_VISIBILITY_TIMEOUT_SECS": "30", "NUVOM_LOG_LEVEL": "INFO",
               "NUVOM_KILL_GRACE_SECS": "1"}
    write_module(project, "outcome_tasks", TASKS)
    kernel = Kernel(root=project, environ=environ)
    workers: list[Worker] = []

    def start_worker(*args: str, **extra: str) -> Worker:
        worker = Worker(project, {**environ, **extra}, *args)
        workers.append(worker)
        wait_until(lambda: " started: " in worker.output(), timeout=30, what="worker start")
        return worker

    with use_kernel(kernel):
        yield start_worker
    for worker in workers:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGINT, signal.SIGINT)
        worker.assert_no_orphans()
    kernel.close()


def _failed(job: Job[object], timeout: float = 20) -> JobFailedError:
    """The job's failure, within ``timeout`` (a job whose outcome is never recorded ends
    the wait with ``TimeoutError``, failing the test)."""
    with pytest.raises(JobFailedError) as info:
        job.get(timeout=timeout)
    return info.value


def _runs(project: Path) -> list[str]:
    log = project / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def test_error_text_names_the_type_when_str_raises() -> None:
    class Worse(Exception):
        def __str__(self) -> str:
            raise Worse  # the error str() raised has no text either

    assert error_text(ValueError("plain")) == "plain"
    assert error_text(ValueError(10 ** 5000)).startswith(
        "<ValueError: str() raised ValueError: Exceeds the limit (4300 digits)")
    assert error_text(Worse()) == "<Worse: str() raised Worse>"


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_an_exception_whose_str_raises_is_recorded_by_its_type(start, project: Path,
                                                               pool: str) -> None:
    from outcome_tasks import bad_str, big_int_error, pid  # type: ignore[import-not-found]

    start("--pool", pool, "--workers", "1")
    first = pid.delay().get(timeout=60)
    for job, error_type, message in [
        (bad_str.delay(), "outcome_tasks.BadStr",
         "<BadStr: str() raised RuntimeError: str() exploded>"),
        (big_int_error.delay(), "ValueError",
         "<ValueError: str() raised ValueError: Exceeds the limit (4300 digits)"),
    ]:
        error = _failed(job)
        assert (error.error_type, (error.error_message or "")[:len(message)]) == (
            error_type, message)
        record = get_job(job.id)
        assert record.status is JobStatus.FAILED and record.attempts == 2  # retries=1
        assert [(e["kind"], e["error_type"]) for e in record.history] == [
            ("error", error_type)] * 2
        assert all(e["error_message"].startswith(message) for e in record.history)
    assert sorted(_runs(project)) == ["bad_str"] * 2 + ["big_int_error"] * 2
    assert pid.delay().get(timeout=60) == first, "the error cost the process pool its child"


def test_a_tasks_own_details_attribute_stays_out_of_its_history(start, project: Path) -> None:
    from outcome_tasks import detailed, rpc_error  # type: ignore[import-not-found]

    start("--pool", "thread", "--workers", "1")
    for job, error_type in [(rpc_error.delay(), "outcome_tasks.RpcError"),
                            (detailed.delay(), "outcome_tasks.Detailed")]:
        assert _failed(job).error_type == error_type
        history = get_job(job.id).history
        assert [(e["attempt"], e["kind"], e["error_message"]) for e in history] == [
            (1, "error", "no"), (2, "error", "no")]
    assert sorted(_runs(project)) == ["detailed"] * 2 + ["rpc_error"] * 2


def test_a_tasks_traceback_is_where_it_raised(start, project: Path) -> None:
    """The worker took any exception's ``remote_traceback`` (meant for the process pool's
    rebuilt errors) as the job's traceback: a non-str one left the attempt unrecorded, to
    run again at every visibility timeout, and a JobFailedError of a job the task waited
    for recorded that job's traceback as this one's."""
    from outcome_tasks import own_traceback, waited  # type: ignore[import-not-found]

    start("--pool", "thread", "--workers", "1")
    mine, other = own_traceback.delay(), waited.delay()
    assert _failed(mine).error_type == "outcome_tasks.OwnTraceback"
    assert _failed(other).error_type == "nuvom_kernel.errors.JobFailedError"
    for job, frame in [(mine, "in own_traceback"), (other, "in waited")]:
        traceback = get_job(job.id).traceback or ""
        assert frame in traceback, traceback
    assert sorted(_runs(project)) == ["own_traceback", "waited"]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_result_that_cannot_be_encoded_fails_once_and_the_child_lives(start, project: Path,
                                                                        pool: str) -> None:
    from outcome_tasks import big_int, deep, pid  # type: ignore[import-not-found]

    start("--pool", pool, "--workers", "1")
    first = pid.delay().get(timeout=60)
    for job in (big_int.delay(), deep.delay()):
        assert _failed(job).error_type == "nuvom_kernel.errors.SerializationError"
        record = get_job(job.id)
        assert record.status is JobStatus.FAILED and record.attempts == 1, "it was retried"
        assert len(record.history) == 1
    error = get_job(job.id).error or ""
    assert "return value is nested too deeply to encode" in error, error
    assert sorted(_runs(project)) == ["big_int", "deep"], "a task that succeeded ran again"
    assert pid.delay().get(timeout=60) == first, "the result cost the process pool its child"



def _exited(pid: int) -> bool:
    """Every thread of ``pid`` has exited, so its pipes are closed. ``alive`` reads only
    the main thread, which turns zombie while the child's other threads (its watch on the
    parent) still hold the pipes open: a job sent then was taken in, and charged."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return threads == [str(pid)] and not alive(pid)

def test_a_child_killed_while_idle_costs_the_next_job_nothing(start) -> None:
    from outcome_tasks import pid  # type: ignore[import-not-found]

    worker = start("--pool", "process", "--workers", "1")
    first = pid.delay().get(timeout=60)
    os.kill(first, signal.SIGKILL)  # the OOM killer, between two jobs
    wait_until(lambda: _exited(first), timeout=10, what="the idle child to die")
    job = pid.delay()
    assert job.get(timeout=60) not in (first, None), "it did not run in a fresh child"
    record = get_job(job.id)
    assert (record.status, record.attempts, record.history) == (JobStatus.SUCCEEDED, 1, [])
    assert f"pool child pid {first} was gone before the job reached it" in worker.output()


def test_children_that_keep_dying_before_a_job_reaches_them_fail_it(start, project: Path
                                                                     ) -> None:
    # Every child closes its end of the request pipe, says it is ready, and exits: a job
    # can never reach one. It must fail saying why, not loop over fresh children.
    write_module(project, "vanishing", "import os, sys\nfrom nuvom_kernel.worker import child\n"
                 "if child.PARENT_PID:\n"
                 "    write = child.write_frame\n\n"
                 "    def ready_then_exit(fd, data):\n"
                 "        os.close(int(sys.argv[1]))  # the requests pipe\n"
                 "        write(fd, data)\n"
                 "        os._exit(7)\n\n"
                 "    child.write_frame = ready_then_exit\n")
    _in_manifest(project, "vanish", "vanishing")
    from outcome_tasks import pid  # type: ignore[import-not-found]

    worker = start("--pool", "process", "--workers", "1")
    job = pid.delay()
    error = _failed(job)
    assert error.error_type == "nuvom_kernel.errors.ChildKilledError"
    assert ("exited with code 7: 3 pool children in a row were gone before the "
            "job reached them") in (error.error_message or ""), error.error_message
    assert get_job(job.id).attempts == 1
    assert worker.output().count("was gone before the job reached it") == 2


def test_the_soft_timeout_cancels_an_awaiting_async_task_at_once(start, project: Path) -> None:
    from outcome_tasks import awaits_past_timeout, pid  # type: ignore[import-not-found]

    start("--pool", "process", "--workers", "1", NUVOM_KILL_GRACE_SECS="10")
    first = pid.delay().get(timeout=60)
    job = awaits_past_timeout.delay()
    assert _failed(job).error_type == "nuvom_kernel.errors.JobTimeoutError"
    entry = get_job(job.id).history[-1]
    assert (entry["kind"], entry.get("signal")) == ("timeout", None), "the child was killed"
    assert entry["finished_at"] - entry["started_at"] < 1 + 5  # timeout, not the 10 s grace
    assert (project / "finally.ran").read_text() == str(first), "finally did not run"
    assert pid.delay().get(timeout=60) == first, "a soft timeout should not cost the child"
