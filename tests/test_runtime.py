"""End to end: @task → .delay()/.map() → a real Worker's threads → results, on every backend."""

from __future__ import annotations

import datetime as dt
import decimal
import inspect
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import attrs
import pytest

from nuvom_kernel import (
    JobFailedError,
    JobStatus,
    Worker,
    chain,
    current_job,
    get_job,
    hookimpl,
    task,
)
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import Message
from nuvom_kernel.views import WorkerInfo
from tests.helpers import (
    E2E_BACKENDS,
    drain,
    run_nuvom,
    run_worker_until,
    user_env,
    wait_until,
    write_module,
)


@pytest.fixture
def worker(kernel: Kernel):
    started: list[Worker] = []

    def start(**kwargs: object) -> Worker:
        w = Worker(kernel, poll_timeout_secs=0.2, **kwargs)  # type: ignore[arg-type]
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
        w.join()


def test_delay_get_roundtrip_with_typed_arguments(kernel: Kernel, worker, project: Path):
    write_module(project, "t_echo", (
        "from nuvom_kernel import task\n"
        "@task\n"
        "def echo(*args, **kwargs):\n"
        "    return [args, kwargs]\n"))
    from t_echo import echo

    worker(workers=2)
    when = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.timezone.utc)
    value = [when, dt.date(2026, 1, 2), uuid.UUID(int=7), decimal.Decimal("1.10"), b"\x00\xff",
             (1, 2), {1: "int key"}, {"__nuvom__": "user key"}, None, 1.5, "x"]
    job = echo.delay(*value, flag=True)
    assert isinstance(job.id, str) and job.task == "echo"
    args, kwargs = job.get(timeout=15)
    assert args == tuple(value)
    assert kwargs == {"flag": True}
    assert get_job(job.id).status is JobStatus.SUCCEEDED
    assert get_job(job.id).attempts == 1


def test_refresh_after_the_record_was_purged_keeps_no_old_outcome(kernel: Kernel, worker,
                                                                 project: Path):
    """The record's TTL passed: `refresh()` read UNKNOWN and kept the old `result`."""
    write_module(project, "t_purged", "from nuvom_kernel import task\n\n\n"
                 "@task\ndef two():\n    return 2\n\n\n"
                 "@task\ndef boom():\n    raise ValueError('no')\n")
    from t_purged import boom, two  # type: ignore[import-not-found]

    worker()
    done, failed = two.delay(), boom.delay()
    assert done.get(timeout=15) == 2
    with pytest.raises(JobFailedError):
        failed.get(timeout=15)
    assert failed.error_type is not None
    assert kernel.results.purge(time.time() + 60) == 2
    for job in (done.refresh(), failed.refresh()):
        assert job.status is JobStatus.UNKNOWN
        assert (job.result, job.error_type, job.error, job.traceback) == (None,) * 4, job


def test_plain_call_runs_inline_and_keeps_metadata(project: Path):
    @task(retries=2)
    def mul(x: int, y: int = 2) -> int:
        """Multiply two numbers."""
        return x * y

    assert mul(3) == 6
    assert mul.__name__ == "mul"
    assert mul.__doc__ == "Multiply two numbers."
    assert inspect.signature(mul) == inspect.signature(mul.fn)
    assert list(inspect.signature(mul).parameters) == ["x", "y"]
    assert mul.options.description == "Multiply two numbers."
    assert mul.options.retries == 2


def test_non_serializable_argument_names_argument_and_enqueues_nothing(kernel: Kernel,
                                                                       project: Path):
    @task
    def store(key: str, value: object) -> None: ...

    before = kernel.queue.qsize()
    with pytest.raises(SerializationError) as info:
        store.delay("k", threading.Lock())
    text = str(info.value)
    assert "argument 'value'" in text and "lock" in text.lower()
    with pytest.raises(SerializationError, match="argument 'value'"):
        store.map([("a", 1), ("b", object())])
    assert kernel.queue.qsize() == before


def test_map_of_10000_jobs_enqueues_one_batch_and_all_run(kernel: Kernel, worker,
                                                          project: Path):
    write_module(project, "t_sq", (
        "from nuvom_kernel import task\n"
        "@task\n"
        "def sq(x):\n"
        "    return x * x\n"))
    from t_sq import sq

    calls: list[int] = []
    original = kernel.queue.enqueue_many

    def counting(messages):
        calls.append(len(messages))
        return original(messages)

    kernel.queue.enqueue_many = counting  # type: ignore[method-assign]
    jobs = sq.map(range(10_000))
    assert calls == [10_000]
    assert kernel.queue.qsize() == 10_000
    worker(workers=4, batch_size=64)
    assert jobs[-1].get(timeout=120) == 9999 * 9999
    wait_until(lambda: kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0,
               timeout=120, what="queue drained")
    sample = [jobs[0], jobs[4999], jobs[9998]]
    assert [j.get(timeout=5) for j in sample] == [0, 4999 ** 2, 9998 ** 2]
    assert kernel.results.counts().get("SUCCEEDED") == 10_000


def test_retry_with_delay_does_not_block_other_jobs(kernel: Kernel, worker, project: Path):
    write_module(project, "t_flaky", (
        "from nuvom_kernel import task\n"
        "import time\n"
        "@task(retries=2, retry_delay_secs=2.0)\n"
        "def flaky(marker):\n"
        "    import pathlib\n"
        "    p = pathlib.Path(marker)\n"
        "    n = int(p.read_text()) if p.exists() else 0\n"
        "    p.write_text(str(n + 1))\n"
        "    if n < 2:\n"
        "        raise RuntimeError(f'attempt {n + 1} fails')\n"
        "    return n + 1\n"
        "@task\n"
        "def quick(i):\n"
        "    return time.time()\n"))
    from t_flaky import flaky, quick

    worker(workers=1)  # one thread: a blocking retry would stall everything behind it
    job = flaky.delay(str(project / "marker"))
    wait_until(lambda: get_job(job.id).status is JobStatus.RETRYING, what="first failure")
    failed_at = time.time()
    quick_jobs = quick.map(range(20))
    finished = [j.get(timeout=10) for j in quick_jobs]
    assert max(finished) - failed_at < 2.0, "quick jobs waited behind the retry delay"
    assert job.get(timeout=20) == 3
    record = kernel.results.get(job.id)
    assert record is not None and record.attempts == 3
    assert [h["attempt"] for h in record.history] == [1, 2]
    assert record.history[0]["error_message"] == "attempt 1 fails"


def test_final_failure_keeps_traceback_and_history(kernel: Kernel, worker, project: Path):
    write_module(project, "t_bad", (
        "from nuvom_kernel import task\n"
        "@task(retries=1, retry_delay_secs=0)\n"
        "def bad(x):\n"
        "    raise KeyError(x)\n"))
    from t_bad import bad

    worker(workers=2)
    job = bad.delay("missing")
    with pytest.raises(JobFailedError) as info:
        job.get(timeout=15)
    err = info.value
    assert err.error_type == "KeyError" and "missing" in (err.error_message or "")
    assert "raise KeyError(x)" in (err.remote_traceback or "")
    fetched = get_job(job.id)
    assert fetched.status is JobStatus.FAILED and fetched.attempts == 2
    assert [h["attempt"] for h in fetched.history] == [1, 2]
    assert fetched.failures == job.failures == 2, "a handle read 0 failures, however many"


def test_timeout_is_recorded_and_slot_is_replaced(kernel: Kernel, worker, project: Path):
    write_module(project, "t_slow", (
        "import threading\n"
        "from nuvom_kernel import task, current_job\n"
        "release = threading.Event()\n"
        "seen = {}\n"
        "@task(timeout_secs=0.3)\n"
        "def stuck():\n"
        "    seen['remaining'] = current_job().time_remaining()\n"
        "    release.wait(30)\n"
        "@task\n"
        "def ok():\n"
        "    return 'ok'\n"))
    import t_slow

    w = worker(workers=1)
    try:
        job = t_slow.stuck.delay()
        with pytest.raises(JobFailedError) as info:
            job.get(timeout=10)
        assert info.value.error_type.endswith("JobTimeoutError")
        assert 0 < t_slow.seen["remaining"] <= 0.3
        # The only executor is still stuck in the task, yet new jobs run: its slot was replaced.
        assert t_slow.ok.delay().get(timeout=10) == "ok"
        assert sum(t.name == "nuvom-executor" and t.is_alive() for t in w._threads) == 2
    finally:
        t_slow.release.set()
    assert current_job() is None


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def nuvom_before_enqueue(self, job):
        self.events.append(("before_enqueue", job.task))

    @hookimpl
    def nuvom_after_enqueue(self, job):
        self.events.append(("after_enqueue", job.task))

    @hookimpl
    def nuvom_before_execute(self, job):
        self.events.append(("before_execute", job.task))

    @hookimpl
    def nuvom_after_execute(self, job, result):
        self.events.append(("after_execute", repr(result)))

    @hookimpl
    def nuvom_on_execute_error(self, job, error):
        self.events.append(("on_execute_error", type(error).__name__))

    @hookimpl
    def nuvom_on_retry(self, job, error, delay_secs):
        self.events.append(("on_retry", job.task))

    @hookimpl
    def nuvom_worker_startup(self, worker):
        self.events.append(("worker_startup", ""))

    @hookimpl
    def nuvom_worker_shutdown(self, worker):
        self.events.append(("worker_shutdown", ""))


class Exploding:
    @hookimpl
    def nuvom_before_execute(self, job):
        raise RuntimeError("observer bug")

    @hookimpl
    def nuvom_after_enqueue(self, job):
        raise RuntimeError("observer bug")


@pytest.mark.parametrize("backend", E2E_BACKENDS)
def test_lifecycle_hooks_fire_in_order_and_raising_observers_never_fail_jobs(
        backend: str, make_kernel, project: Path):
    write_module(project, "t_hooks", (
        "from nuvom_kernel import task\n"
        "@task(retries=1, retry_delay_secs=0)\n"
        "def once_bad(path):\n"
        "    import pathlib\n"
        "    p = pathlib.Path(path)\n"
        "    if not p.exists():\n"
        "        p.write_text('x')\n"
        "        raise ValueError('first')\n"
        "    return 'second'\n"))
    from nuvom_kernel.kernel import use_kernel

    kernel = make_kernel(backend)
    recorder = Recorder()
    kernel.pm.register(recorder, name="recorder")
    kernel.pm.register(Exploding(), name="exploding")
    with use_kernel(kernel):
        from t_hooks import once_bad

        w = Worker(kernel, workers=1)
        w.start()
        assert once_bad.delay(str(project / "m")).get(timeout=10) == "second"
        w.stop()
        assert w.join() == 0
    # after_enqueue runs in the producer while a worker may already be executing the job,
    # so the two sides are ordered separately; before_enqueue precedes everything else.
    enqueue_side = [e for e in recorder.events if e[0].endswith("_enqueue")]
    worker_side = [e for e in recorder.events if not e[0].endswith("_enqueue")]
    assert enqueue_side == [("before_enqueue", "once_bad"), ("after_enqueue", "once_bad")]
    assert worker_side == [
        ("worker_startup", ""),
        ("before_execute", "once_bad"), ("on_execute_error", "ValueError"),
        ("on_retry", "once_bad"),
        ("before_execute", "once_bad"), ("after_execute", "'second'"),
        ("worker_shutdown", ""),
    ]
    assert recorder.events.index(("before_enqueue", "once_bad")) < recorder.events.index(
        ("before_execute", "once_bad"))


class Exiting:
    """Observers that end their thread: ``sys.exit()`` and a ``KeyboardInterrupt`` raised
    by code (on a worker thread, not a user's Ctrl-C)."""

    @hookimpl
    def nuvom_on_execute_error(self, job, error):
        raise SystemExit("observer called sys.exit")

    @hookimpl
    def nuvom_after_settle(self, outcome):
        raise KeyboardInterrupt("observer raised KeyboardInterrupt")


@pytest.mark.parametrize("pool", ["thread", "asyncio"])
def test_an_observer_raising_systemexit_costs_no_thread(make_kernel, project: Path,
                                                         pool: str,
                                                         caplog: pytest.LogCaptureFixture):
    """Observers were isolated from ``Exception`` only: one calling ``sys.exit()`` ended the
    executor thread (the event loop, the settler) that called it, silently, and with every
    executor gone the worker looked healthy and ran nothing."""
    from nuvom_kernel.kernel import use_kernel

    write_module(project, "t_exit", "from nuvom_kernel import task\n"
                 "@task\ndef fails():\n    raise ValueError('task failed')\n"
                 "@task\ndef fine():\n    return 'fine'\n")
    kernel = make_kernel("memory")
    kernel.pm.register(Exiting(), name="exiting")
    with use_kernel(kernel), caplog.at_level(logging.CRITICAL, logger="nuvom.events"):
        from t_exit import fails, fine

        w = Worker(kernel, workers=2, pool=pool, poll_timeout_secs=0.2)
        w.start()
        try:
            failed = [fails.delay() for _ in range(4)]
            assert fine.delay().get(timeout=10) == "fine"
            for job in failed:
                wait_until(lambda j=job: j.refresh().status is JobStatus.FAILED,
                           what="each failure settled")
        finally:
            w.stop()
        assert w.join() == 0
    text = caplog.text
    assert "plugin 'exiting' raised in nuvom_on_execute_error; ignored" in text
    assert "plugin 'exiting' raised in nuvom_after_settle; ignored" in text


def test_bad_payload_unknown_task_and_import_error_fail_only_that_job(
        kernel: Kernel, worker, project: Path):
    write_module(project, "t_good", (
        "from nuvom_kernel import task\n"
        "@task\n"
        "def good():\n"
        "    return 1\n"))
    write_module(project, "t_broken", "raise ImportError('broken module')\n")
    from t_good import good

    kernel.queue.enqueue(Message(id="garbage1", body=b"\x80not json"))
    kernel.queue.enqueue(Message(id="garbage2", body=b'{"v": 1, "id": "garbage2"}'))
    from nuvom_kernel.envelope import Envelope

    env = Envelope.for_call("no_such_task", "t_good", good.options, (), {})
    env2 = Envelope.for_call("whatever", "t_broken", good.options, (), {})
    kernel.queue.enqueue_many([env.to_message(kernel.serializer),
                               env2.to_message(kernel.serializer)])
    worker(workers=2)
    assert good.delay().get(timeout=10) == 1
    for job_id in ("garbage1", "garbage2", env.id, env2.id):
        wait_until(lambda j=job_id: get_job(j).status is JobStatus.FAILED, what=job_id)
    assert "not valid JSON" in (get_job("garbage1").error or "")
    assert "malformed envelope" in (get_job("garbage2").error or "")
    # the bytes as stored are kept aside, not dropped with the failure's ack
    kept = "the message as stored is kept in the queue backend's quarantine"
    quarantined = kernel.queue.stats().quarantined
    for job_id in ("garbage1", "garbage2"):
        assert kept in (get_job(job_id).error or ""), get_job(job_id).error
        assert [line for line in quarantined if job_id in line], quarantined
    if kernel.queue.name == "postgres":
        import psycopg

        from nuvom_plugins_postgres import PostgresQueue

        assert isinstance(kernel.queue, PostgresQueue)
        schema = kernel.queue.schema
        [line] = [line for line in quarantined if "garbage1" in line]
        seq = int(line.rsplit(f"{schema}.quarantine.seq=", 1)[1])
        with psycopg.connect(kernel.queue.settings.dsn) as conn:
            [(body,)] = conn.execute(psycopg.sql.SQL(
                "SELECT body FROM {}.quarantine WHERE seq = %s").format(
                psycopg.sql.Identifier(schema)), (seq,)).fetchall()
        assert bytes(body) == b"\x80not json"
    if kernel.queue.name == "sqlite":
        [(body,)] = sqlite3.connect(kernel.data_dir / "nuvom.db").execute(
            "SELECT body FROM nuvom_quarantine WHERE id = 'garbage1'").fetchall()
        assert body == b"\x80not json"
    unknown = get_job(env.id)
    assert unknown.error_type.endswith("UnknownTaskError")
    assert "no_such_task" in unknown.error and "nuvom discover tasks" in unknown.error
    assert "broken module" in (get_job(env2.id).error or "")
    assert good.delay().get(timeout=10) == 1  # the worker is still serving


def test_a_copy_to_quarantine_that_fails_is_said_and_the_job_still_fails(
        make_kernel, monkeypatch: pytest.MonkeyPatch):
    """A store that cannot take the copy (a full disk) left the lease to expire, and the
    job came back until the delivery limit failed it as one whose workers crashed."""
    kernel = make_kernel("sqlite")

    def full_disk(lease: object, reason: str) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kernel.queue, "copy_to_quarantine", full_disk)
    with use_kernel(kernel):
        kernel.queue.enqueue(Message(id="garbage3", body=b"\x80not json"))
        w = Worker(kernel, workers=1, poll_timeout_secs=0.2)
        w.start()
        try:
            wait_until(lambda: get_job("garbage3").status is JobStatus.FAILED,
                       what="garbage3")
        finally:
            w.stop()
            w.join()
        record = get_job("garbage3")
    assert record.attempts == 1, "settled at its first delivery"
    assert "not valid JSON" in (record.error or "")
    assert "copying the message as stored to the queue backend's quarantine failed too " \
           "(OSError(28, 'No space left on device')): it is not kept" in (record.error or "")


def test_an_undecodable_message_whose_lease_was_lost_is_left_to_its_new_holder(
        make_kernel, monkeypatch: pytest.MonkeyPatch, project: Path):
    """The copy finds the lease gone (it expired, another worker claimed the message):
    this worker must neither record the job FAILED nor ack it, or it would settle a job
    another worker now holds."""
    kernel = make_kernel("sqlite")
    write_module(project, "t_after", (
        "from nuvom_kernel import task\n"
        "@task\n"
        "def after():\n"
        "    return 2\n"))
    from t_after import after

    real_copy = kernel.queue.copy_to_quarantine
    taken: list[object] = []

    def lose_then_copy(lease, reason: str) -> bool:
        assert kernel.queue.extend(lease, 0) is True  # expired, as a stalled worker's
        taken.extend(kernel.queue.claim(1))  # and claimed by another worker
        return real_copy(lease, reason)

    monkeypatch.setattr(kernel.queue, "copy_to_quarantine", lose_then_copy)
    with use_kernel(kernel):
        kernel.queue.enqueue(Message(id="garbage4", body=b"\x80not json"))
        later = after.delay()  # run, and settled, after whatever garbage4 led to
        drain(kernel, later)
        assert taken, "the copy was attempted"
        assert get_job("garbage4").status is JobStatus.RUNNING, "no record: its holder's"
        [lease] = taken
        assert kernel.queue.ack(lease) is True, "the new holder's lease still holds it"
    assert kernel.queue.stats().quarantined == [], "nothing copied with the lost lease"


def _job_of(kernel: Kernel, task_name: str, module: str, *args: object) -> str:
    """Enqueue a job as a producer that imported ``module`` would (not imported here)."""
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import TaskOptions

    env = Envelope.for_call(task_name, module, TaskOptions(), args, {})
    kernel.queue.enqueue(env.to_message(kernel.serializer))
    return env.id


def test_a_job_never_runs_another_modules_task_of_the_same_name(
        kernel: Kernel, worker, project: Path):
    """Two modules each define ``send``, each imported by its own producer. A worker that
    had run one module's job ran that module's ``send`` for the other's jobs too; the job
    now fails, naming the clash and the fix, and the first module's jobs still run."""
    for pkg in ("alerts", "billing"):
        sys.modules.pop(pkg, None)
        sys.modules.pop(f"{pkg}.tasks", None)
        (project / pkg).mkdir()
        (project / pkg / "__init__.py").write_text("")
        (project / pkg / "tasks.py").write_text(
            f"from nuvom_kernel import task\n@task\ndef send(x):\n    return ['{pkg}', x]\n")
    worker(workers=1)
    alerts = _job_of(kernel, "send", "alerts.tasks", 1)
    wait_until(lambda: get_job(alerts).status is JobStatus.SUCCEEDED, what="alerts' job")
    billing = _job_of(kernel, "send", "billing.tasks", 42)
    wait_until(lambda: get_job(billing).status is JobStatus.FAILED, what="billing's job")
    error = get_job(billing).error or ""
    assert "billing.tasks" in error and "alerts.tasks.send" in error, error
    assert "@task(name=...)" in error, error
    again = _job_of(kernel, "send", "alerts.tasks", 2)
    wait_until(lambda: get_job(again).status is JobStatus.SUCCEEDED, what="alerts again")
    assert get_job(again).result == ["alerts", 2]


def test_tasks_of_a_module_that_failed_half_way_through_its_import_never_run(
        kernel: Kernel, worker, project: Path):
    """``@task`` registers as the module runs: a module raising after its first task left
    that task registered, and its later jobs ran against globals never set."""
    write_module(project, "t_half", "from nuvom_kernel import task\n"
                 "@task\ndef charge(x):\n    return RATE * x\n"
                 "RATE = load_rate_from_config()\n")
    worker(workers=1)
    jobs = [_job_of(kernel, "charge", "t_half", n) for n in (1, 2, 3)]
    for job_id in jobs:
        wait_until(lambda j=job_id: get_job(j).status is JobStatus.FAILED, what=job_id)
        assert "load_rate_from_config" in (get_job(job_id).error or "")
    assert kernel.registry.get("charge") is None


def test_unknown_job_id_says_unknown(kernel: Kernel):
    assert get_job("never-seen").status is JobStatus.UNKNOWN


def test_store_result_false_records_the_state_but_not_the_value(kernel: Kernel, worker,
                                                                 project: Path):
    write_module(project, "t_nostore", (
        "from nuvom_kernel import task\n"
        "@task(store_result=False)\n"
        "def fire(path):\n"
        "    open(path, 'w').write('done')\n"))
    from t_nostore import fire

    worker(workers=1)
    job = fire.delay(str(project / "out"))
    wait_until(lambda: (project / "out").exists(), what="task ran")
    wait_until(lambda: kernel.queue.stats().in_flight == 0 and kernel.queue.qsize() == 0,
               what="job acked")
    record = kernel.results.get(job.id)
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result is None, "store_result=False keeps the state, not the value"
    assert job.get(timeout=5) is None


def test_exponential_backoff_grows_and_is_capped(make_kernel, project: Path):
    kernel = make_kernel("memory")
    from nuvom_kernel.job import Job
    from nuvom_kernel.models import Backoff, TaskOptions

    w = Worker(kernel, workers=1)
    opts = TaskOptions(retries=10, retry_delay_secs=1, backoff=Backoff.EXPONENTIAL,
                       backoff_max_secs=5, jitter=False)
    delays = [w.settler.retry_delay(Job(id="x", task="f", options=opts, failures=n))
              for n in range(1, 6)]
    assert delays == [1, 2, 4, 5, 5]
    jittered = TaskOptions(retries=10, retry_delay_secs=4, backoff=Backoff.EXPONENTIAL)
    values = {w.settler.retry_delay(Job(id="x", task="f", options=jittered, failures=1))
              for _ in range(50)}
    assert all(2 <= v <= 4 for v in values) and len(values) > 1


def test_registry_duplicate_semantics(project: Path):
    from nuvom_kernel.errors import TaskRegistrationError
    from nuvom_kernel.registry import TaskRegistry

    reg = TaskRegistry()

    def a() -> None: ...

    def b() -> None: ...

    reg.register("x", a)
    reg.register("x", a)  # same function again: fine
    with pytest.raises(TaskRegistrationError, match="already registered"):
        reg.register("x", b)
    reg.register("x", b, silent=True)
    assert reg.get("x") is a
    reg.register("x", b, force=True)
    assert reg.get("x") is b


def test_a_task_wrapped_in_another_module_or_reached_by_two_names_resolves(project: Path):
    """The module check refused tasks it had just found: a function of ``helpers`` made a
    task by ``apptasks`` (the manifest's module; the job records ``helpers``), and a file
    a producer imported as ``src.app.tasks`` while the worker had it as ``app.tasks``
    (importing it again raised, and every such job failed)."""
    from nuvom_kernel.registry import REGISTRY

    write_module(project, "helpers_mod", "def ping():\n    return 'pong'\n")
    write_module(project, "apptasks_mod", "from nuvom_kernel import task\n"
                 "import helpers_mod\nping = task(name='ping')(helpers_mod.ping)\n")
    REGISTRY._modules["ping"] = "apptasks_mod"  # what the manifest says
    assert REGISTRY.resolve("ping", "helpers_mod").fn() == "pong"

    (project / "src" / "dualapp").mkdir(parents=True)
    for init in (project / "src" / "__init__.py", project / "src" / "dualapp" / "__init__.py"):
        init.write_text("")
    (project / "src" / "dualapp" / "tasks.py").write_text(
        "from nuvom_kernel import task\n@task\ndef send():\n    return 'sent'\n")
    for name in ("src", "src.dualapp", "src.dualapp.tasks", "dualapp", "dualapp.tasks"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(project / "src"))
    try:
        import dualapp.tasks  # type: ignore[import-not-found]  # the worker's name for it

        fn = REGISTRY.resolve("send", "src.dualapp.tasks")  # the producer's
        assert fn is dualapp.tasks.send and "src.dualapp.tasks" not in sys.modules
    finally:
        sys.path.remove(str(project / "src"))
        for name in ("src", "src.dualapp", "dualapp", "dualapp.tasks"):
            sys.modules.pop(name, None)


def test_worker_imports_task_module_lazily_from_manifest(kernel: Kernel, worker,
                                                         project: Path):
    import json
    import sys

    pkg = project / "app"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text(
        "from nuvom_kernel import task\n@task(name='app.hello')\ndef hello(n):\n"
        "    return f'hi {n}'\n")
    data_dir = kernel.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "manifest.json").write_text(json.dumps({"version": 1, "tasks": [
        {"name": "app.hello", "module": "app.jobs", "file": "app/jobs.py", "line": 2}]}))
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import TaskOptions

    env = Envelope.for_call("app.hello", None, TaskOptions(), (5,), {})  # no module hint
    kernel.queue.enqueue(env.to_message(kernel.serializer))
    sys.modules.pop("app.jobs", None)
    worker(workers=1)
    wait_until(lambda: get_job(env.id).status is JobStatus.SUCCEEDED, what="lazy import")
    assert get_job(env.id).result == "hi 5"


def test_cancel_a_queued_job(make_kernel, project: Path):
    from nuvom_kernel.kernel import use_kernel

    kernel = make_kernel("memory")
    with use_kernel(kernel):
        @task
        def later() -> str:
            return "ran"

        job = later.delay()
        assert get_job(job.id).status is JobStatus.QUEUED
        assert job.cancel() is True
        assert get_job(job.id).status is JobStatus.CANCELLED
        assert kernel.queue.qsize() == 0
        assert job.cancel() is False
        with pytest.raises(JobFailedError):
            job.get(timeout=1)


def test_get_of_a_job_cancelled_while_retrying_says_it_ran(make_kernel, project: Path):
    """It was said to have been "cancelled before it ran", though its record held an
    attempt and that attempt's error (found by a walk through the docs)."""
    from nuvom_kernel.errors import JobCancelledError

    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        @task(retries=3, retry_delay_secs=30)
        def fails() -> None:
            raise RuntimeError("nope")

        job = fails.delay()
        run_worker_until(kernel, lambda: get_job(job.id).status is JobStatus.RETRYING,
                         "the first attempt to fail")
        assert job.cancel() is True
        with pytest.raises(JobCancelledError) as info:
            job.get(timeout=5)
    assert "cancelled after 1 attempt (the last failed: RuntimeError: nope)" in \
        str(info.value), str(info.value)
    assert info.value.error_type == "RuntimeError"
    # the command to run it again names it (it said `nuvom retry job ID`)
    assert f"`nuvom retry job {job.id}`" in str(info.value), str(info.value)


SQLITE = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}


def _described_elsewhere(project: Path, job_id: str) -> list[str]:
    """``get_job(job_id)`` in another process (which knows only the id): what it says."""
    code = (f"from nuvom_kernel import get_job; j = get_job({job_id!r}); "
            "print(j.status.value, j.task, j.module, j.args, j.kwargs, j.options.retries, "
            "j.options.timeout_secs, repr(j.created_at), j.trace_id, j.run, sep='|')")
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=user_env(**SQLITE),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split("|")


def test_a_job_known_only_by_id_is_described_cancelled_and_run_again(make_kernel,
                                                                     project: Path):
    """From a process that knows only the id, ``get_job()`` says what a waiting or finished
    job is (task, arguments, options, creation, trace), and ``nuvom cancel job`` records
    it whole, so ``nuvom retry job`` starts its next run (before, the cancelled record had
    no task, arguments or options, and the retry was refused)."""
    write_module(project, "t_again", "from nuvom_kernel import task\n\n\n"
                 "@task(retries=2, timeout_secs=5)\ndef again(x, y=0):\n    return x + y\n")
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from t_again import again  # type: ignore[import-not-found]

        job = again.delay(2, y=3)
        assert _described_elsewhere(project, job.id) == [
            "QUEUED", "again", "t_again", "(2,)", "{'y': 3}", "2", "5", repr(job.created_at),
            job.trace_id, "1"]
        cancelled = run_nuvom(["cancel", "job", job.id], project, **SQLITE)
        assert cancelled.returncode == 0, cancelled.stderr
        record = kernel.results.get(job.id)
        assert record is not None and record.status is JobStatus.CANCELLED
        assert (record.task, record.module, record.args, record.kwargs, record.options["retries"],
                record.created_at) == ("again", "t_again", [2], {"y": 3}, 2, job.created_at)
        rerun = run_nuvom(["retry", "job", job.id], project, **SQLITE)
        assert rerun.returncode == 0, rerun.stderr
        [lease] = kernel.queue.claim(1)
        assert Worker(kernel).run_one(lease)
        assert job.get(timeout=10) == 5 and job.run == 2
        finished = kernel.results.get(job.id)
        assert finished is not None
        assert _described_elsewhere(project, job.id) == [
            "SUCCEEDED", "again", "t_again", "(2,)", "{'y': 3}", "2", "5",
            repr(finished.created_at), finished.trace_id, "2"]
        # the table says which run its attempts and created_at are (only JSON said it)
        shown = run_nuvom(["inspect", "job", job.id], project, **SQLITE)
        assert "           run: 2\n" in shown.stdout, shown.stdout
        first = again.delay(1)
        [lease] = kernel.queue.claim(1)
        assert Worker(kernel).run_one(lease) and first.get(timeout=10) == 1
        assert " run: " not in run_nuvom(["inspect", "job", first.id], project,
                                         **SQLITE).stdout


def test_cancel_of_a_job_whose_worker_died_cancels_it(make_kernel, project: Path):
    """A job whose worker died reads QUEUED once its lease expired, and no worker holds it:
    cancel removes it (it was refused, "it was leased to a worker", so a job that killed
    every worker it ran on could not be stopped), and the dead worker's lease can no longer
    ack it."""
    write_module(project, "t_orphan", "from nuvom_kernel import task\n\n\n"
                 "@task\ndef orphan():\n    return 1\n")
    kernel = make_kernel("sqlite", NUVOM_VISIBILITY_TIMEOUT_SECS="0.2")
    with use_kernel(kernel):
        from t_orphan import orphan  # type: ignore[import-not-found]

        job = orphan.delay()
        [lease] = kernel.queue.claim(1)  # a worker that takes it and is never heard of again
        deadline = time.monotonic() + 10
        while kernel.queue.peek_state(job.id) is not JobStatus.QUEUED:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.02)
        done = run_nuvom(["cancel", "job", job.id], project, **SQLITE)
        assert done.returncode == 0, done.stderr
        assert kernel.queue.peek_state(job.id) is None, "still in the queue"
        assert get_job(job.id).status is JobStatus.CANCELLED
        assert kernel.queue.ack(lease) is False, "the dead worker's lease acked it"


def test_cancel_of_a_held_or_cancelled_job_says_which(make_kernel, project: Path):
    """A job a worker claimed ahead of its busy threads has not started but reads RUNNING,
    and cancel refuses it: the message said "only a job that has not started can be
    cancelled", which it had not; it names the prefetch and when cancel works. A second
    cancel said the same of a CANCELLED job. And ``get(timeout=)`` on a RUNNING job asked
    whether a worker was running, which one plainly was."""
    write_module(project, "t_held", "from nuvom_kernel import task\n\n\n"
                 "@task\ndef held():\n    return 1\n")
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from t_held import held  # type: ignore[import-not-found]

        job, other = held.delay(), held.delay()
        [_] = kernel.queue.claim(1)  # a worker holds it (prefetched, or running)
        refused = run_nuvom(["cancel", "job", job.id], project, **SQLITE)
        assert refused.returncode == 1
        assert f"job {job.id} is RUNNING: a worker holds it" in refused.stderr, refused.stderr
        assert "NUVOM_PREFETCH=0" in refused.stderr and "given back" in refused.stderr
        with pytest.raises(TimeoutError) as waited:
            job.get(timeout=0.05)
        assert "is still RUNNING after 0.05 s" in str(waited.value)
        assert "is a worker running" not in str(waited.value)
        store = project / ".nuvom" / "nuvom.db"
        with pytest.raises(TimeoutError) as waited:
            other.get(timeout=0.05)  # QUEUED: the hint is for it, naming the store
        assert f"is still QUEUED after 0.05 s; no live worker runs on this store ({store}): " \
            "start one with `nuvom runworker` where it uses the same store" \
            in str(waited.value)
        # a live worker on the store (its heartbeat): it asked "is a worker running?"
        beat = WorkerInfo(id="h:1:a", host="h", pid=1, queues=["emails"],
                          heartbeat_at=time.time())
        kernel.results.heartbeat(beat, 60)
        with pytest.raises(TimeoutError) as waited:
            other.get(timeout=0.05)
        assert f"the live workers on this store ({store}) serve queue(s) emails, not " \
            "'default': start one with `nuvom runworker --queue default`" \
            in str(waited.value)
        kernel.results.heartbeat(attrs.evolve(beat, queues=[]), 60)
        with pytest.raises(TimeoutError) as waited:
            other.get(timeout=0.05)
        assert f"1 live worker(s) on this store ({store}) serve queue 'default': busy " \
            "with other jobs" in str(waited.value)
        kernel.results.forget_worker(beat.id)
        assert run_nuvom(["cancel", "job", other.id], project, **SQLITE).returncode == 0
        again = run_nuvom(["cancel", "job", other.id], project, **SQLITE)
        assert again.returncode == 1
        assert again.stderr.strip() == f"Error: job {other.id} is already CANCELLED", again


def test_a_workflow_that_times_out_names_its_waiting_step_and_the_workers(
        make_kernel, project: Path):
    """`wf.get(timeout=)` asked "is a worker running?" beside a worker serving other
    queues, where `Job.get()` named the queue to start one for."""
    write_module(project, "t_wf_hint", "from nuvom_kernel import task\n\n\n"
                 "@task\ndef first():\n    return 1\n\n\n"
                 "@task(queue='emails')\ndef send(x):\n    return x\n")
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from t_wf_hint import first, send  # type: ignore[import-not-found]

        wf = chain(first.s(), send.s()).delay()
        kernel.results.heartbeat(WorkerInfo(id="h:1:a", host="h", pid=1, queues=["default"],
                                            heartbeat_at=time.time()), 60)
        with pytest.raises(TimeoutError) as waited:
            wf.get(timeout=0.05)
        text = str(waited.value)
        step = wf.nodes[0].id
        assert f"step {step} (first) waits in queue 'default'; 1 live worker(s)" in text, text
        run_worker_until(kernel, lambda: get_job(step).status is JobStatus.SUCCEEDED,
                         "the first step", queues=["default"])
        with pytest.raises(TimeoutError) as waited:
            wf.get(timeout=0.05)
        text = str(waited.value)
        assert "(send) waits in queue 'emails'; the live workers on this store" in text, text
        assert "start one with `nuvom runworker --queue emails`" in text
        assert "is a worker running" not in text


def test_a_queued_job_whose_body_does_not_decode_is_still_looked_up_and_cancelled(
        make_kernel, project: Path):
    """``get_job`` and cancel read a queued job's message to say what it is; one whose body
    does not decode (its worker would fail it, saying why) leaves them the message's
    routing fields: the id, task, queue and enqueue time, and the state."""
    kernel = make_kernel("memory")
    with use_kernel(kernel):
        kernel.queue.enqueue(Message(id="garbled", body=b"not json", task="t.garbled",
                                     queue="mail", created_at=1234.5))
        job = get_job("garbled")
        assert (job.status, job.task, job.queue, job.created_at) == (
            JobStatus.QUEUED, "t.garbled", "mail", 1234.5)
        assert kernel.cancel(job) is True
        record = kernel.results.get("garbled")
        assert record is not None and record.status is JobStatus.CANCELLED
        assert (record.task, record.queue, record.created_at) == ("t.garbled", "mail", 1234.5)


def test_named_queues_priorities_and_async_tasks(kernel: Kernel, worker, project: Path):
    write_module(project, "t_route", (
        "import asyncio\n"
        "from nuvom_kernel import task\n"
        "order = []\n"
        "@task(queue='emails')\n"
        "def send(n):\n"
        "    order.append(('send', n))\n"
        "    return n\n"
        "@task\n"
        "def log(n):\n"
        "    order.append(('log', n))\n"
        "    return n\n"
        "@task\n"
        "async def fetch(n):\n"
        "    await asyncio.sleep(0)\n"
        "    return n * 10\n"))
    import t_route

    low = t_route.log.apply_async((1,), priority=0)
    high = t_route.log.apply_async((2,), priority=5)
    mail = t_route.send.delay(3)
    w = worker(workers=1, queues=["default"])
    assert [low.get(timeout=10), high.get(timeout=10)] == [1, 2]
    assert t_route.order == [("log", 2), ("log", 1)]  # higher priority first
    assert t_route.fetch.delay(4).get(timeout=10) == 40
    assert get_job(mail.id).status is JobStatus.QUEUED  # not served by a default-only worker
    w.stop()
    w.join()
    worker(workers=1, queues=["emails"])
    assert mail.get(timeout=10) == 3


def test_delay_secs_hides_job_until_due(kernel: Kernel, worker, project: Path):
    write_module(project, "t_later", (
        "import time\n"
        "from nuvom_kernel import task\n"
        "@task\n"
        "def stamp():\n"
        "    return time.time()\n"))
    from t_later import stamp

    worker(workers=1)
    t0 = time.time()
    job = stamp.apply_async(delay_secs=0.8)
    status = get_job(job.id).status
    assert status in (JobStatus.RETRYING, JobStatus.QUEUED) or time.time() - t0 >= 0.8
    assert job.get(timeout=10) - t0 >= 0.8


def test_cancel_racing_a_settled_retry_records_cancelled(kernel, monkeypatch):
    """A worker can store a job's next attempt between cancel's read of the record and its
    delete of the message: the CANCELLED built from the earlier attempt was fenced out, so
    the job was gone from the queue yet read RETRYING for ever (on every backend)."""
    from nuvom_kernel.envelope import Envelope

    @task(retries=5)
    def flaky() -> None:
        raise RuntimeError("never runs here")

    job = flaky.delay()

    def attempt(n: int) -> None:  # what a worker's settle of a failed attempt does
        (lease,) = kernel.queue.claim(1)
        envelope = Envelope.from_message(lease.message, kernel.serializer)
        record = envelope.record(JobStatus.RETRYING, attempts=n, token=lease.token,
                                 updated_at=time.time())
        assert kernel.results.put(record)
        assert kernel.queue.retry(lease, delay_secs=0)

    attempt(1)
    real_get, reads = kernel.results.get, []

    def get_then_a_worker_settles(job_id: str):
        found = real_get(job_id)
        reads.append(found)
        if len(reads) == 1:
            attempt(2)  # after cancel's read, before its delete
        return found

    handle = get_job(job.id)
    monkeypatch.setattr(kernel.results, "get", get_then_a_worker_settles)
    assert kernel.cancel(handle) is True
    monkeypatch.undo()
    assert reads[0] is not None and reads[0].attempts == 1
    assert kernel.queue.peek_state(job.id) is None
    assert get_job(job.id).status is JobStatus.CANCELLED


def test_a_settle_whose_reply_was_lost_counts_as_landed(make_kernel, project: Path,
                                                        caplog: pytest.LogCaptureFixture):
    """The store ran a settle and its reply was lost (a Redis that froze, then woke): the
    next try was refused for the lease the first had acked, and the worker logged "lost its
    lease before its outcome (SUCCEEDED) was recorded" for a job it had finished, counted
    as a lease lost (`nuvom_leases_lost_total`), not as done."""
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import Settlement

    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        @task
        def done() -> str:
            return "ok"

        job = done.delay()
        (lease,) = kernel.queue.claim(1)
        record = Envelope.from_message(lease.message, kernel.serializer).record(
            JobStatus.SUCCEEDED, attempts=lease.deliveries, token=lease.token, result="ok",
            finished_at=time.time(), updated_at=time.time())
        real = kernel.queue.settle_many
        calls: list[int] = []

        def reply_lost(batch, results):  # type: ignore[no-untyped-def]
            calls.append(1)
            landed = real(batch, results)
            if len(calls) == 1:
                raise TimeoutError("Timeout reading from the store")  # after it ran
            return landed

        kernel.queue.settle_many = reply_lost  # type: ignore[method-assign]
        worker = Worker(kernel, workers=1)
        assert worker.settler.settle([Settlement(lease, record)], patiently=True) == [True]
        assert len(calls) == 2
        assert "lost its lease" not in caplog.text
        assert get_job(job.id).result == "ok"


@pytest.mark.skipif(not {"sqlite", "file"} <= set(E2E_BACKENDS), reason="needs sqlite and file")
def test_a_lapsed_lease_stores_no_outcome_when_the_records_live_apart(tmp_path: Path):
    """Queue and results in different stores (no settle_many): a worker cut off past its
    lease stored its older attempt as the job's outcome while the worker that took the job
    over was still running it, so get() could return a result the job then replaced."""
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import Settlement

    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "file",
        "NUVOM_VISIBILITY_TIMEOUT_SECS": "0.3"})
    with use_kernel(kernel):
        @task
        def where() -> str:
            return "here"

        job = where.delay()
        (stale,) = kernel.queue.claim(1)  # the worker that will be cut off
        taken = wait_until(lambda: kernel.queue.claim(1), timeout=10,
                           what="the lease to lapse and another worker to claim the job")
        envelope = Envelope.from_message(stale.message, kernel.serializer)
        record = envelope.record(JobStatus.SUCCEEDED, attempts=stale.deliveries,
                                 token=stale.token, result="from the cut-off worker",
                                 finished_at=time.time(), updated_at=time.time())
        worker = Worker(kernel, workers=1)
        assert worker.settler.settle([Settlement(stale, record)]) == [False]
        assert kernel.results.get(job.id) is None, "the stale attempt became the outcome"
        assert kernel.queue.extend(taken[0], 30), "the new holder's lease was disturbed"
    kernel.close()


def test_process_pool_limits_set_for_another_pool_are_warned_about(
        make_kernel, caplog: pytest.LogCaptureFixture):
    """``--max-tasks-per-child 100`` (a Celery user's leak bound) on the default thread
    pool was accepted and bounded nothing, without a word."""
    kernel = make_kernel("memory", NUVOM_MAX_TASKS_PER_CHILD="100")
    with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        Worker(kernel, pool="thread")
        Worker(kernel, pool="process")
    warned = [r.getMessage() for r in caplog.records if "process pool only" in r.getMessage()]
    assert warned == ["max_tasks_per_child applies to the process pool only; this worker runs "
                      "the thread pool, which ignores it (run it with --pool process)"]


def test_a_job_a_newer_release_enqueued_waits_for_a_newer_worker(
        make_kernel, project: Path, caplog: pytest.LogCaptureFixture):
    """A producer upgraded before its workers: a worker failed such a job as undecodable,
    and its record held none of its arguments (the worker cannot read them): the job was
    lost for good. It is put back for a newer worker now, and the worker says why."""
    from nuvom_kernel.models import Message

    write_module(project, "t_newer", "from nuvom_kernel import task\n"
                 "@task\ndef fine():\n    return 'fine'\n")
    kernel = make_kernel("sqlite")
    body = b'{"v":2,"id":"from-the-future","task":"fine","args":{"new":"shape"}}'
    kernel.queue.push([Message(id="from-the-future", body=body, task="fine")])
    from nuvom_kernel.kernel import use_kernel

    with use_kernel(kernel), caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        from t_newer import fine

        w = Worker(kernel, workers=1, poll_timeout_secs=0.2)
        w.start()
        try:
            wait_until(lambda: "for a worker of a newer release" in caplog.text,
                       what="the worker to leave the job")
            assert fine.delay().get(timeout=10) == "fine"
        finally:
            w.stop()
        assert w.join() == 0
    assert kernel.results.get("from-the-future") is None, "failed, its arguments lost"
    message = kernel.queue.peek("from-the-future")
    assert message is not None and message.body == body
    assert "envelope version 2 is not supported by this worker (expects 1)" in caplog.text


@pytest.mark.parametrize("version", [0, None, "1"])
def test_an_older_or_no_envelope_version_is_not_told_to_upgrade_the_worker(version: object):
    """"upgrade nuvom on the worker" was said of a message an older release (or none)
    wrote: the worker is the newer side, and upgrading it cannot help."""
    import json

    from nuvom_kernel.envelope import Envelope, EnvelopeVersionError
    from nuvom_kernel.errors import SerializationError
    from nuvom_kernel.models import Message
    from nuvom_kernel.serialization import JsonSerializer

    body = json.dumps({"v": version, "id": "old", "task": "t", "args": [], "kwargs": {},
                       "opts": {}}).encode()
    with pytest.raises(SerializationError) as info:
        Envelope.from_message(Message(id="old", body=body), JsonSerializer())
    assert not isinstance(info.value, EnvelopeVersionError), "left for a newer worker"
    assert "upgrade nuvom" not in str(info.value), info.value
    assert "enqueue the job again from a producer of this release" in str(info.value)


def test_a_timed_out_jobs_thread_is_not_kept_once_it_returns(make_kernel, project: Path):
    """Each timed-out job's executor is given up and replaced; the pool kept every
    replaced Thread in its list for good, so a worker with steady timeouts grew by ~2 KB
    per timeout (13-16 MB an hour in a soak). Only live threads are kept now."""
    write_module(project, "t_stuck", "import time\nfrom nuvom_kernel import task\n\n\n"
                 "@task(timeout_secs=0.05)\ndef stuck():\n    time.sleep(0.2)\n")
    kernel = make_kernel("memory")
    with use_kernel(kernel):
        from t_stuck import stuck  # type: ignore[import-not-found]

        worker = Worker(kernel, workers=2, scheduler=False, poll_timeout_secs=0.05)
        worker.start()
        try:
            for _ in range(3):  # rounds: each round's replacements prune the last round's
                jobs = [stuck.delay() for _ in range(8)]
                wait_until(lambda jobs=jobs: all(
                    j.refresh().status is JobStatus.FAILED for j in jobs),
                    30, "the jobs to time out")  # every one: see the test below
                wait_until(lambda: worker.abandoned_threads == 0, 30,
                           "the given-up threads to return")
            kept = list(worker._threads)  # type: ignore[attr-defined]
            assert len(kept) <= 2 + 1 + 2 * 2, f"{len(kept)} threads kept after 24 timeouts"
            assert sum(not t.is_alive() for t in kept) <= 2 * 2, kept
        finally:
            worker.stop()
            worker.join()


@pytest.mark.parametrize("pool", ["thread", "asyncio"])
def test_a_job_that_returns_past_its_deadline_is_timed_out(make_kernel, project: Path,
                                                          pool: str):
    """The monitor times a thread-pool job out at its deadline; a task that returns first
    because the monitor could not run (a C call holding the GIL: ``sum`` over a range)
    was recorded SUCCEEDED with its result, 0.5 s past a 0.1 s timeout (5 jobs in 10 in
    the soak's repro). docs/workers.md: an attempt past ``timeout_secs`` is timed out."""
    write_module(project, "t_gil", "from nuvom_kernel import task\n\n\n"
                 "@task(timeout_secs=0.1)\ndef hog():\n    return sum(range(40_000_000))\n")
    kernel = make_kernel("memory")
    with use_kernel(kernel):
        from t_gil import hog  # type: ignore[import-not-found]

        jobs = [hog.delay() for _ in range(6)]  # the asyncio pool runs a sync task on a
        worker = Worker(kernel, workers=2, pool=pool, scheduler=False,  # thread of its own
                        poll_timeout_secs=0.05)
        worker.start()
        try:
            wait_until(lambda: all(j.refresh().status in (JobStatus.SUCCEEDED,
                                                          JobStatus.FAILED) for j in jobs),
                       60, "the jobs to end")
        finally:
            worker.stop()
            worker.join()
        outcomes = [(j.status, j.error_type) for j in jobs]
        assert outcomes == [(JobStatus.FAILED, "nuvom_kernel.errors.JobTimeoutError")] * 6, \
            outcomes


def test_the_started_line_names_both_stores_where_they_differ(
        project: Path, caplog: pytest.LogCaptureFixture):
    """A path in a setting creates its store on first use, silently: the worker says where
    its queue is and, where they differ, where its results go."""
    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "file"})
    with caplog.at_level(logging.INFO, logger="nuvom.worker"):
        w = Worker(kernel, workers=1, scheduler=False)
        w.start()
        w.stop()
        assert w.join() == 0
    [line] = [r.getMessage() for r in caplog.records if " started: " in r.getMessage()]
    assert line.endswith(f"backend=sqlite ({kernel.queue.location}; results=file "
                         f"({kernel.results.location}))"), line
    assert str(project) in str(kernel.queue.location) and kernel.results.location
