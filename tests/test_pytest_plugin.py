"""The opt-in user pytest plugin: isolated kernels, eager mode, a real worker thread."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nuvom_kernel import JobFailedError, JobStatus, current_job, get_kernel, hookimpl, task
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.registry import REGISTRY
from nuvom_kernel.testing.stubs import StubQueue, StubResults

if TYPE_CHECKING:  # imported by pytest_plugins below; importing it first defeats rewriting
    from nuvom_kernel.testing.pytest_plugin import EagerMode, WorkerHarness

pytest_plugins = ["nuvom_kernel.testing.pytest_plugin", "pytester"]

_attempts: dict[str, int] = {}
_lock = threading.Lock()


@task(name="pp_tests.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="pp_tests.flaky", retries=2)
def flaky(key: str, failures: int) -> str:
    """Fails ``failures`` times for ``key``, then succeeds."""
    with _lock:
        _attempts[key] = _attempts.get(key, 0) + 1
        n = _attempts[key]
    if n <= failures:
        raise ValueError(f"attempt {n} fails")
    return f"ok after {n}"


@task(name="pp_tests.parent")
def parent(n: int) -> dict[str, Any]:
    child = add.delay(n, n)
    job = current_job()
    return {"child": child.get(timeout=5), "me": job.id if job else None}


@task(name="pp_tests.total")
def total(values: list[int]) -> int:
    return sum(values)


@task(name="pp_tests.double")
async def double(n: int) -> int:
    await asyncio.sleep(0)
    job = current_job()
    return n * 2 if job is not None and job.task == "pp_tests.double" else -1


@task(name="pp_tests.async_parent")
async def async_parent(n: int) -> int:
    return int(double.delay(n).get(timeout=5)) + 1


@task(name="pp_tests.slow_retry", retries=1, retry_delay_secs=30)
def slow_retry() -> None:
    raise ValueError("fails once, then waits its own 30 s")


@pytest.fixture(autouse=True)
def _register_tasks() -> Iterator[None]:
    """tests/conftest.py empties the registry before each test; put this module's back."""
    for fn in (add, flaky, parent, total, double, async_parent, slow_retry):
        REGISTRY.register(fn.name, fn, force=True)
    yield


def test_test_kernel_is_isolated_and_current(nuvom_test_kernel: Kernel) -> None:
    assert get_kernel() is nuvom_test_kernel
    assert isinstance(nuvom_test_kernel.queue, StubQueue)
    assert isinstance(nuvom_test_kernel.results, StubResults)
    assert nuvom_test_kernel.config.path is None, "the project's toml is never read"
    assert not [i for i in nuvom_test_kernel.pm.plugin_infos() if i.source == "entry point"]


def test_delay_enqueues_on_the_test_queue(nuvom_queue: Any) -> None:
    job = add.delay(2, 3)
    assert nuvom_queue.qsize() == 1
    assert nuvom_queue.peek_state(job.id) is JobStatus.QUEUED


def test_eager_runs_inline_and_records(nuvom_eager: EagerMode) -> None:
    job = add.delay(2, 3)
    assert job.status is JobStatus.SUCCEEDED and job.result == 5
    assert job.get() == 5
    jobs = add.map([(1, 1), (2, 2)])
    assert [j.result for j in jobs] == [2, 4]
    assert [j.id for j in nuvom_eager.jobs] == [job.id] + [j.id for j in jobs]
    assert nuvom_eager.calls("pp_tests.add") == nuvom_eager.jobs
    assert nuvom_eager.kernel is not None and nuvom_eager.kernel.queue.qsize() == 0


def test_eager_calls_takes_the_task_and_refuses_an_unknown_name(nuvom_eager: EagerMode) -> None:
    """``calls("add")`` for a task registered as ``pp_tests.add`` was an empty list, so the
    user's assertion failed as "0 == 1" saying nothing of the names recorded."""
    job = add.delay(1, 2)
    assert [j.id for j in nuvom_eager.calls(add)] == [job.id]
    assert nuvom_eager.calls(total) == []  # registered, not called: no error
    with pytest.raises(ValueError, match=r"no task is registered as 'add'.*recorded: "
                                         r"pp_tests\.add\. Pass the task itself"):
        nuvom_eager.calls("add")


def test_eager_retries_inline_and_reports_failure(nuvom_eager: EagerMode) -> None:
    ok = flaky.delay("eager-ok", 2)
    assert ok.status is JobStatus.SUCCEEDED and ok.result == "ok after 3"
    assert ok.attempts == 3
    bad = flaky.delay("eager-bad", 5)
    assert bad.status is JobStatus.FAILED
    with pytest.raises(JobFailedError, match="attempt 3 fails"):
        bad.get()


def test_eager_nested_delay_runs_child_first(nuvom_eager: EagerMode) -> None:
    job = parent.delay(4)
    assert job.result == {"child": 8, "me": job.id}, "current_job() survives a nested run"
    assert [j.task for j in nuvom_eager.jobs] == ["pp_tests.parent", "pp_tests.add"]


def test_eager_runs_an_async_task_delayed_from_inside_a_running_loop(
        nuvom_eager: EagerMode) -> None:
    """An async handler (or an async task) calling ``.delay()`` of an async task: the
    child ran with ``run_until_complete`` on the thread's running loop, which raised, and
    it was recorded FAILED where a real worker runs it."""
    async def handler() -> int:
        return int(double.delay(5).get(timeout=5))

    assert asyncio.run(handler()) == 10
    assert async_parent.delay(7).get(timeout=5) == 15


def test_eager_drops_start_delay(nuvom_eager: EagerMode) -> None:
    job = add.apply_async((1, 2), delay_secs=60)
    assert job.result == 3


def test_worker_drains_real_jobs(nuvom_worker: WorkerHarness) -> None:
    jobs = [*add.map([(i, i) for i in range(20)]), flaky.delay("worker", 1)]
    nuvom_worker.drain(timeout=10)
    assert [j.get(timeout=1) for j in jobs[:20]] == [2 * i for i in range(20)]
    assert jobs[-1].get(timeout=1) == "ok after 2"
    assert nuvom_worker.worker.processed == 21


class _HeldSettle(StubQueue):
    """The reference queue, except that a settled batch's caller waits for ``go`` after the
    ack committed: the moment a worker has acked a job but not counted it yet."""

    name = "held-settle"
    acked = threading.Event()
    go = threading.Event()

    def settle_many(self, settlements: Any, results: Any) -> list[bool] | None:
        landed = super().settle_many(settlements, results)
        self.acked.set()
        self.go.wait(10)
        return landed


class _HeldSettlePlugin:
    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type[StubQueue]]:
        return [_HeldSettle]


def test_drain_waits_until_the_worker_counted_each_job(tmp_path: Path) -> None:
    """The queue reads empty once the ack commits; drain() must still wait for the worker
    to count the job, or ``processed`` read right after it can be one short."""
    from nuvom_kernel.kernel import use_kernel
    from nuvom_kernel.testing.pytest_plugin import WorkerHarness, build_test_kernel

    kernel = build_test_kernel(tmp_path, {"NUVOM_QUEUE_BACKEND": "held-settle"},
                               {"held-settle": _HeldSettlePlugin()})
    harness = WorkerHarness(kernel)
    drained = threading.Event()
    try:
        with use_kernel(kernel):
            add.delay(1, 2)
        assert _HeldSettle.acked.wait(10), "the worker never settled the job"
        assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0
        waiter = threading.Thread(target=lambda: (harness.drain(), drained.set()))
        waiter.start()
        assert not drained.wait(0.3), "drain() returned before the worker counted the job"
        _HeldSettle.go.set()
        waiter.join(10)
        assert drained.is_set() and harness.worker.processed == 1
    finally:
        _HeldSettle.go.set()
        harness.stop()
        kernel.close()


def test_drain_times_out_with_a_reason(nuvom_worker: WorkerHarness) -> None:
    """The message names the job and why it waits: a start delay, which the worker keeps,
    and the eager fixture that skips it."""
    job = add.apply_async((1, 1), delay_secs=30)
    with pytest.raises(TimeoutError, match=r"1 job\(s\) waiting") as raised:
        nuvom_worker.drain(timeout=0.2)
    message = str(raised.value)
    assert f"job {job.id} (pp_tests.add): starting in " in message
    assert "start delay" in message and "nuvom_eager" in message
    assert "retry_delay_secs" not in message


def test_drain_timeout_says_a_task_s_own_retry_delay_overrides_the_setting(
        nuvom_worker: WorkerHarness) -> None:
    """The fixtures set NUVOM_RETRY_DELAY_SECS=0, which a task's own retry_delay_secs
    overrides: the message used to send the user to that setting all the same."""
    job = slow_retry.delay()
    deadline = time.monotonic() + 10
    while nuvom_worker.kernel.queue.peek_state(job.id) is not JobStatus.RETRYING:
        assert time.monotonic() < deadline, "the first attempt never failed"
        time.sleep(0.01)
    with pytest.raises(TimeoutError) as raised:
        nuvom_worker.drain(timeout=0.2)
    message = str(raised.value)
    assert f"job {job.id} (pp_tests.slow_retry): retrying in 2" in message  # 29.x s
    assert "its task's retry_delay_secs" in message and "nuvom_eager" in message


class _Observer:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def nuvom_after_execute(self, job: Any, result: Any) -> None:
        self.seen.append(job.task)


_observer = _Observer()


@pytest.fixture
def nuvom_extra_plugins() -> dict[str, Any]:
    return {"test-observer": _observer}


@pytest.fixture
def nuvom_environ() -> dict[str, str]:
    return {"NUVOM_MAX_DELIVERIES": "7"}


def test_overrides_reach_the_kernel(nuvom_eager: EagerMode) -> None:
    assert nuvom_eager.kernel is not None
    assert nuvom_eager.kernel.settings.max_deliveries == 7
    _observer.seen.clear()
    add.delay(1, 1)
    assert _observer.seen == ["pp_tests.add"]


def test_documented_example_runs(pytester: pytest.Pytester) -> None:
    """The example of docs/testing.md, as a user would write it."""
    pytester.makeconftest('pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]\n')
    pytester.makepyfile(tasks=textwrap.dedent("""
        from nuvom_kernel import task

        @task(name="docs_example.send_welcome", retries=1)
        def send_welcome(user_id):
            return f"sent to {user_id}"
        """))
    pytester.makepyfile(test_tasks=textwrap.dedent("""
        from nuvom_kernel import JobStatus
        from tasks import send_welcome

        def test_send_welcome_eagerly(nuvom_eager):
            job = send_welcome.delay(42)
            assert job.status is JobStatus.SUCCEEDED
            assert job.result == "sent to 42"
            assert len(nuvom_eager.calls("docs_example.send_welcome")) == 1

        def test_send_welcome_on_a_worker(nuvom_worker):
            job = send_welcome.delay(7)
            nuvom_worker.drain()
            assert job.get(timeout=1) == "sent to 7"
        """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_misspelt_nuvom_environ_key_fails_the_test(pytester: pytest.Pytester) -> None:
    """``NUVOM_RETRY_DELAY`` (for ``NUVOM_RETRY_DELAY_SECS``) was only a warning in the
    captured log: the test passed on the default it meant to change."""
    pytester.makeconftest(textwrap.dedent("""
        import pytest
        pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]

        @pytest.fixture
        def nuvom_environ():
            return {"NUVOM_RETRY_DELAY": "0", "NUVOM_JOB_TIMEOUT_SECS": "2"}
        """))
    pytester.makepyfile(test_it="def test_it(nuvom_test_kernel):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*nuvom_environ returns NUVOM_RETRY_DELAY (did you mean "
                                 "NUVOM_RETRY_DELAY_SECS?), which is not a Nuvom setting*"])


def test_eager_runs_a_workflow_to_its_end(nuvom_eager: EagerMode) -> None:
    """Steps are pushed by the graph, not enqueue_many: eager mode ran none of them, and
    wf.get() asked whether a worker was running. A long chain must not nest a call per step
    either (it would overflow the stack)."""
    from nuvom_kernel import chain, group

    wf = chain(add.s(1, 2), add.s(10), add.s(100)).delay()
    assert wf.get(timeout=0.5) == 113
    fan = group(add.s(i, i) for i in range(3)).then(total.s()).delay()
    assert fan.get(timeout=0.5) == 6
    long = chain(add.s(0, 1), *[add.s(1) for _ in range(300)]).delay()
    assert long.get(timeout=0.5) == 301
    add.delay(1, 1)
    assert [job.task for job in nuvom_eager.jobs] == ["pp_tests.add"], (
        "only the .delay(): a workflow's steps are read from wf.nodes (the docs)")


def test_eager_and_the_backend_fixtures_share_one_kernel(nuvom_results: Any,
                                                         nuvom_eager: EagerMode,
                                                         nuvom_queue: Any) -> None:
    """Eager mode had a kernel of its own: beside nuvom_results, whichever was set up last
    was current, so .delay() ran nothing or nuvom_results read another store."""
    job = add.delay(2, 3)
    assert job.status is JobStatus.SUCCEEDED
    assert nuvom_results.get(job.id).result == 5
    assert nuvom_eager.kernel is get_kernel() and nuvom_queue is get_kernel().queue


def test_eager_beside_a_worker_is_refused_saying_why(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]\n')
    pytester.makepyfile(test_both="def test_both(nuvom_eager, nuvom_worker):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*nuvom_eager and nuvom_worker cannot serve one test*"])


def test_each_test_kernel_has_a_namespace_of_its_own(tmp_path: Path) -> None:
    """On a server backend (Redis, PostgreSQL) the jobs of one test were the next test's."""
    from nuvom_kernel.testing.pytest_plugin import build_test_kernel

    one, two = build_test_kernel(tmp_path / "a"), build_test_kernel(tmp_path / "b")
    try:
        assert one.settings.namespace.startswith("nuvom-test-")
        assert one.settings.namespace != two.settings.namespace
        chosen = build_test_kernel(tmp_path / "c", {"NUVOM_NAMESPACE": "mine"})
        assert chosen.settings.namespace == "mine"
        chosen.close()
    finally:
        one.close()
        two.close()


def test_the_worker_fixture_fires_no_schedule_unless_asked(pytester: pytest.Pytester) -> None:
    """Every imported scheduled task fired during unrelated tests, and `processed` counted
    jobs the test never enqueued."""
    pytester.makeconftest('pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]\n')
    pytester.makepyfile(test_sched=textwrap.dedent("""
        import time
        from nuvom_kernel import every, task

        @task(name="pp_sched.beat", schedule=every(seconds=0.2))
        def beat():
            return "beat"

        def test_quiet_then_fired_by_hand(nuvom_worker):
            deadline = time.monotonic() + 1.0  # five ticks' worth
            while time.monotonic() < deadline:
                nuvom_worker.drain()
            assert nuvom_worker.worker.processed == 0
            job = nuvom_worker.worker.scheduler.fire_now("pp_sched.beat")
            nuvom_worker.drain()
            assert job.get(timeout=1) == "beat" and nuvom_worker.worker.processed == 1
        """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_eager_asked_for_too_late_says_how_to_ask(pytester: pytest.Pytester) -> None:
    """One kernel per test is eager when the test names nuvom_eager; one fetched with
    request.getfixturevalue() after that kernel was built failed on a bare assert."""
    pytester.makeconftest('pytest_plugins = ["nuvom_kernel.testing.pytest_plugin"]\n')
    pytester.makepyfile(test_late=textwrap.dedent("""
        def test_late(nuvom_test_kernel, request):
            request.getfixturevalue("nuvom_eager")
        """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*nuvom_eager was requested after the test's kernel was "
                                 "built*usefixtures*"])
