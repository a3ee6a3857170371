"""What a producer call is given and what it hands back, on every backend: a handle for an
id that exists describes that job (not the call that found it), ``apply_async``'s
arguments are checked before anything is stored, ``nuvom retry job`` on a job that has not
finished says its state, and a task module that calls ``sys.exit()`` at import fails its job
naming the module.
"""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nuvom_kernel import JobStatus, every, get_job, task
from nuvom_kernel.cli import make_cli
from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import NuvomError, SerializationError, UnknownTaskError
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import TaskOptions
from nuvom_kernel.registry import TaskRegistry
from nuvom_kernel.values import MAX_SECONDS
from tests.helpers import drain, user_env, wait_until, write_module


def _tasks(project: Path) -> tuple[Any, Any]:
    """Two tasks in an importable module, so a worker finds them by module."""
    write_module(project, "t_input", (
        "from nuvom_kernel import task\n\n\n"
        "@task(retries=2)\n"
        "def echo(*args, **kwargs):\n"
        "    return [list(args), kwargs]\n\n\n"
        "@task\n"
        "def other(*args, **kwargs):\n"
        "    return None\n"))
    from t_input import echo, other  # type: ignore[import-not-found]

    return echo, other




def _same_job(handle: Job, first: Job, status: JobStatus) -> None:
    """``handle`` describes ``first``'s job: its task, arguments, options, creation."""
    assert handle.id == first.id
    assert (handle.task, handle.module) == (first.task, first.module)
    assert (handle.args, handle.kwargs) == (("original",), {"n": 1})
    assert (handle.queue, handle.options.retries) == ("default", 2)
    assert handle.created_at == pytest.approx(first.created_at, abs=1e-3)
    assert handle.status is status
    assert handle.refresh().args == ("original",)  # bound, and stays what it is


# --- 1. a handle for an existing id describes the existing job ---------------------------

def test_a_queued_job_id_enqueued_again_gives_the_queued_jobs_handle(kernel: Kernel,
                                                                    project: Path):
    echo, other = _tasks(project)
    first = echo.apply_async(["original"], {"n": 1}, job_id="same-id")
    again = echo.apply_async(["different"], {"m": 2}, job_id="same-id", queue="elsewhere")
    _same_job(again, first, JobStatus.QUEUED)
    assert get_job("same-id").args == ("original",)
    # another task's call with the id: the handle is the job that holds it
    _same_job(other.apply_async(job_id="same-id"), first, JobStatus.QUEUED)
    mapped = echo.map([("x",), ("y",), ("z",)], job_ids=["same-id", "new-id", "new-id"])
    _same_job(mapped[0], first, JobStatus.QUEUED)
    # an id twice in one batch: stored for its first item, which both handles describe
    assert [m.args for m in mapped[1:]] == [("y",), ("y",)]
    assert mapped[2].created_at == pytest.approx(mapped[1].created_at, abs=1e-3)
    assert kernel.queue.qsize() == 2


def test_a_lookup_or_a_wait_it_cannot_read_is_refused_naming_it(kernel: Kernel,
                                                                 project: Path):
    """``get_job(None)`` failed deep in a backend's lookup; ``get(timeout=nan)`` waited
    as long as the job took, ``"1"`` failed adding it to the clock, and ``-1`` said the job
    was "still QUEUED after -1 s"."""
    echo, _ = _tasks(project)
    for bad in (None, 5, b"id"):
        with pytest.raises(TypeError, match=r"get_job\(\) takes a job id, a string"):
            get_job(bad)  # type: ignore[arg-type]
    job = echo.delay()
    for timeout, error in ((math.nan, ValueError), ("1", TypeError), (-1, ValueError),
                           (True, TypeError)):
        with pytest.raises(error, match=r"get\(timeout=\.\.\.\) takes a number of "
                                        r"seconds >= 0, or None"):
            job.get(timeout=timeout)
    with pytest.raises(ValueError, match=r"get\(poll_secs=\.\.\.\) takes a number of "
                                         r"seconds > 0 .*got 0"):
        job.get(timeout=1, poll_secs=0)
    for poll in ("0.1", None):  # not a number at all: a TypeError, not a ValueError
        with pytest.raises(TypeError, match=r"get\(poll_secs=\.\.\.\) takes a number of "
                                            r"seconds > 0 .*got " + repr(poll)):
            job.get(timeout=1, poll_secs=poll)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="still QUEUED after 0 s"):  # 0 is allowed
        job.get(timeout=0)


def test_a_map_item_given_as_a_list_is_said_to_be_one_argument(kernel: Kernel,
                                                                project: Path) -> None:
    """``map([[1, 2]])`` said only "missing a required argument: 'y'", and a bad item of
    many was not named."""
    write_module(project, "t_maplist", "from nuvom_kernel import task\n\n\n@task\n"
                                       "def add(x, y):\n    return x + y\n")
    from t_maplist import add  # type: ignore[import-not-found]

    with pytest.raises(TypeError, match=r"missing a required argument: 'y'.*\(map\(\) "
                                        r"passes a list as one argument, so item #1 is one "
                                        r"call with the list \[3, 4\]; write each call's "
                                        r"arguments as a tuple: \(3, 4\)\)"):
        add.map([(1, 2), [3, 4]])
    with pytest.raises(TypeError, match=r"\(map\(\) passes a list as one argument, so item "
                                        r"#0 is one call with the list \[3, 4\]"):
        add.map([[3, 4]])  # a batch of one too
    with pytest.raises(TypeError) as plain:  # a tuple's mistake gets no list advice
        add.map([(1, 2, 3)])
    assert "passes a list" not in str(plain.value)
    # which of many items is wrong: it was not said, for a mistake or a value not data
    with pytest.raises(TypeError, match=r"^item #998 of 1000: task 'add' cannot take these "
                                        r"arguments: missing a required argument: 'y'"):
        add.map([(1, 2)] * 998 + [(3,), (1, 2)])
    with pytest.raises(SerializationError, match=r"^item #536 of 1000: add\(\): argument "
                                                 r"'x' has type builtins.object"):
        add.map([(1, 2)] * 536 + [(object(), 2)] + [(1, 2)] * 463)
    assert kernel.queue.qsize() == 0


def test_a_running_job_id_enqueued_again_gives_the_running_jobs_handle(kernel: Kernel,
                                                                      project: Path):
    echo, _ = _tasks(project)
    first = echo.apply_async(["original"], {"n": 1}, job_id="same-id")
    [lease] = kernel.queue.claim(1)  # leased, no record yet: only the queue knows it
    assert lease.id == "same-id" and kernel.results.get("same-id") is None
    again = echo.apply_async(["different"], job_id="same-id")
    _same_job(again, first, JobStatus.RUNNING)
    [mapped] = echo.map([("different",)], job_ids=["same-id"])
    _same_job(mapped, first, JobStatus.RUNNING)


def test_a_finished_job_id_enqueued_again_gives_the_finished_jobs_handle(kernel: Kernel,
                                                                        project: Path):
    echo, _ = _tasks(project)
    first = echo.apply_async(["original"], {"n": 1}, job_id="same-id")
    drain(kernel, first)
    again = echo.apply_async(["different"], {"m": 2}, job_id="same-id")
    _same_job(again, first, JobStatus.SUCCEEDED)
    assert again.result == [["original"], {"n": 1}]
    [mapped, new] = echo.map([("different",), ("new",)], job_ids=["same-id", "new-id"])
    _same_job(mapped, first, JobStatus.SUCCEEDED)
    assert new.args == ("new",) and new.status is JobStatus.QUEUED
    assert kernel.queue.qsize() == 1


def test_a_unique_call_that_finds_the_queued_job_gives_its_options(kernel: Kernel):
    """The single-job path (``enqueue_one``): a unique call routed elsewhere that finds the
    equal queued job gets that job's queue and creation time, not its own."""
    @task(unique=True)
    def sync(account: int) -> int:
        return account

    first = sync.delay(7)
    again = sync.apply_async((7,), queue="elsewhere")
    assert again.id == first.id and again.queue == "default"
    assert again.created_at == pytest.approx(first.created_at, abs=1e-3)
    assert kernel.queue.qsize() == 1


# --- 2. apply_async's arguments are checked before anything is stored ----------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, "5", True, None,
                                 MAX_SECONDS + 1, 1e300])
def test_a_bad_delay_is_refused_naming_it(kernel: Kernel, bad: Any):
    @task
    def later() -> None: ...

    with pytest.raises(ValueError, match=r"delay_secs must be a number of seconds from 0 to "
                                         rf"{MAX_SECONDS} \(366 days\), got .*eta="):
        later.apply_async(delay_secs=bad)
    assert kernel.queue.qsize() == 0


@pytest.mark.parametrize("bad", ["high", 1.5, 2.0, True, None, 2**31, -2**31 - 1, 10**20])
def test_a_bad_priority_is_refused_naming_it(kernel: Kernel, bad: Any):
    @task
    def ranked() -> None: ...

    message = r"priority must be a whole number from -2147483648 to 2147483647 .*got "
    if bad is not None:  # None means "the task's own priority"
        with pytest.raises(ValueError, match=message):
            ranked.apply_async(priority=bad)
    with pytest.raises(ValueError, match=message):
        task(priority=bad)(lambda: None)
    assert kernel.queue.qsize() == 0


def test_the_bounds_themselves_are_stored_on_every_backend(kernel: Kernel):
    @task
    def bounded() -> None: ...

    low = bounded.apply_async(priority=-2**31)
    high = bounded.apply_async(priority=2**31 - 1)
    latest = bounded.apply_async(delay_secs=MAX_SECONDS)
    far = bounded.apply_async(eta=datetime(2100, 1, 1, tzinfo=timezone.utc))  # past 366 days
    assert [j.priority for j in (low, high)] == [-2**31, 2**31 - 1]
    assert [lease.id for lease in kernel.queue.claim(5)] == [high.id, low.id]
    assert latest.refresh().status is far.refresh().status is JobStatus.QUEUED
    assert kernel.queue.claim(5) == []


def test_an_eta_past_year_9999_is_refused_and_not_with_a_delay(kernel: Kernel):
    @task
    def later() -> None: ...

    west = timezone(timedelta(hours=-5))
    with pytest.raises(ValueError, match="eta must be at most 9999-12-31 23:59:59 UTC"):
        later.apply_async(eta=datetime(9999, 12, 31, 23, tzinfo=west))
    with pytest.raises(ValueError, match="not both"):
        later.apply_async(eta=datetime.now(timezone.utc), delay_secs=5)
    with pytest.raises(ValueError, match="delay_secs must be"):
        later.apply_async(eta=datetime.now(timezone.utc), delay_secs=math.nan)
    assert kernel.queue.qsize() == 0


# --- 3. `nuvom retry job` on a job that has not finished -----------------------------------

def test_retry_of_a_queued_or_running_job_without_a_record_says_its_state(kernel: Kernel):
    @task
    def pending() -> None: ...

    job = pending.delay()
    assert kernel.results.get(job.id) is None
    with pytest.raises(NuvomError, match=f"job {job.id} is QUEUED .*only FAILED or CANCELLED"):
        rerun(kernel, job.id)
    result = CliRunner().invoke(make_cli(kernel), ["retry", "job", job.id], obj=kernel)
    assert result.exit_code != 0
    assert f"job {job.id} is QUEUED" in result.output and "unknown" not in result.output
    kernel.queue.claim(1)
    with pytest.raises(NuvomError, match=f"job {job.id} is RUNNING .*only FAILED or CANCELLED"):
        rerun(kernel, job.id)
    with pytest.raises(NuvomError, match="unknown job id 'never-seen'"):
        rerun(kernel, "never-seen")


# --- 4. a task module that calls sys.exit() at import ---------------------------------------

def test_a_module_calling_sys_exit_at_import_is_an_unknown_task_naming_it(project: Path):
    write_module(project, "t_exits", "import sys\nsys.exit(2)\n")
    with pytest.raises(UnknownTaskError, match=r"importing 't_exits' called sys.exit\(2\)") \
            as caught:
        TaskRegistry().resolve("whatever", "t_exits")
    assert caught.value.import_failed


@pytest.mark.parametrize("source", [
    "def broken(:\n",  # a syntax error: the cwd was right
    "import no_such_dependency_xyz\n",  # the module's own import fails
])
def test_a_module_that_raises_at_import_is_blamed_not_the_cwd(project: Path,
                                                              source: str) -> None:
    """A typo in a task module said "Run the worker from the project directory", where it
    ran; the fix was in the module."""
    write_module(project, "t_raises", source)
    with pytest.raises(UnknownTaskError) as caught:
        TaskRegistry().resolve("whatever", "t_raises")
    text = str(caught.value)
    assert "Fix the error module 't_raises' raises as it is imported" in text, text
    assert "project directory" not in text


def test_a_module_that_is_not_there_still_points_at_the_cwd(project: Path) -> None:
    with pytest.raises(UnknownTaskError) as caught:
        TaskRegistry().resolve("whatever", "pkg_absent.tasks")
    assert "Run the worker from the project directory" in str(caught.value)


def test_a_job_whose_module_calls_sys_exit_fails_naming_the_module(kernel: Kernel,
                                                                  project: Path):
    write_module(project, "t_exits", "import sys\nsys.exit(2)\n")
    envelope = Envelope.for_call("whatever", "t_exits", TaskOptions(), (), {})
    kernel.queue.enqueue(envelope.to_message(kernel.serializer))

    @task
    def fine() -> int:
        return 1

    job = fine.delay()
    drain(kernel, job)  # the worker is still serving after the broken module
    wait_until(lambda: get_job(envelope.id).status is JobStatus.FAILED, timeout=20,
               what="the job of the exiting module to fail")
    failed = get_job(envelope.id)
    assert (failed.error_type or "").endswith("UnknownTaskError")
    assert "importing 't_exits' called sys.exit(2)" in (failed.error or "")


# --- equal arguments, equal values --------------------------------------------------------

UNIQUE_ID_OF_A_SET = """
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.models import TaskOptions
from nuvom_kernel.unique import unique_id
env = Envelope.for_call("sync", None, TaskOptions(), ({f"tag-{i}" for i in range(40)},
                        {3: "c", 1: "a", 2: "b"}), {})
print(unique_id(env, ["tags", "names"]))
"""


def test_unique_ids_of_equal_sets_and_dicts_do_not_depend_on_their_order() -> None:
    """The id hashed the wire form, which lists a set's items and a non-string-keyed dict's
    pairs in iteration order: equal arguments got different ids (a set of strings in every
    producer process, whose hash seeds differ), so a unique task ran once per producer."""
    import os
    import subprocess
    import sys

    from nuvom_kernel.unique import unique_id

    ids = {subprocess.run([sys.executable, "-c", UNIQUE_ID_OF_A_SET], capture_output=True,
                          text=True, check=True, timeout=60,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout
           for seed in ("1", "2", "3", "4")}
    assert len(ids) == 1, ids

    def call(value: object) -> str:
        return unique_id(Envelope.for_call("t", None, TaskOptions(), (value,), {}), ["x"])

    assert call({1: "a", 2: "b"}) == call({2: "b", 1: "a"})
    assert call({1: "a", 2: "b"}) != call({1: "a", 2: "c"})
    assert call(frozenset({"x", "y"})) == call(frozenset({"y", "x"}))
    assert call("plain") == ("unique.t." + __import__("hashlib").sha256(
        b'["t",{"x":"plain"},[]]').hexdigest()[:32]), "plain arguments keep their ids"


def test_a_frozenset_round_trips_as_one_even_inside_a_set_or_as_a_key() -> None:
    """Frozensets were tagged as sets: one came back a set, and a set of them (or a dict
    keyed by one) could not be decoded at all (``unhashable type: 'set'``), the job failing
    without running, or its readers all breaking on its stored result."""
    from nuvom_kernel.serialization import JsonSerializer, from_wire, to_wire

    value = {"inner": {frozenset({1, 2}), frozenset()}, "plain": frozenset({"a"}),
             frozenset({3}): (frozenset({4}),), "set": {5, 6}}
    codec = JsonSerializer()
    back = from_wire(codec.loads(codec.dumps({"v": to_wire(value)}))["v"])
    assert back == value
    assert type(back["plain"]) is frozenset and type(back["set"]) is set
    assert all(type(item) is frozenset for item in back["inner"])


#: A dict keyed by a set: wire data no release writes, and that no decoder can rebuild.
UNDECODABLE = {"__nuvom__": ["dict", [[{"__nuvom__": ["set", [1]]}, "a"]]]}


def test_a_stored_result_that_does_not_decode_is_a_serialization_error(kernel: Kernel
                                                                       ) -> None:
    """Every reader of such a record (``get()``, ``get_job``, ``nuvom inspect``, the
    dashboard) raised a bare ``TypeError: unhashable type: 'set'``."""
    from nuvom_kernel.errors import SerializationError
    from nuvom_kernel.models import JobRecord

    kernel.results.put(JobRecord(job_id="odd-result", task="t", status=JobStatus.SUCCEEDED,
                                 result=UNDECODABLE, attempts=1))
    with pytest.raises(SerializationError, match=r"odd-result.*cannot be decoded"):
        get_job("odd-result")


def test_a_workflow_input_that_does_not_decode_fails_the_step_once() -> None:
    """The step's input is its parent's stored result: a ``TypeError`` decoding it escaped
    as an unexpected worker error at every delivery, until the delivery limit failed the
    step as a crash (10 minutes with the defaults)."""
    from nuvom_kernel.errors import SerializationError
    from nuvom_kernel.models import JobRecord
    from nuvom_kernel.workflow.handle import _value

    parent = JobRecord(job_id="parent", task="t", status=JobStatus.SUCCEEDED,
                       result=UNDECODABLE)
    with pytest.raises(SerializationError, match=r"step parent .* cannot be decoded"):
        _value(parent, "parent")


def test_arguments_too_deep_or_too_large_to_encode_say_so(kernel: Kernel, project: Path
                                                          ) -> None:
    """A list nested 600 deep was a bare ``RecursionError`` naming nothing; an integer of
    5,000 digits blamed the headers of enqueue observers."""
    from nuvom_kernel.errors import SerializationError

    echo, _ = _tasks(project)
    deep: list[Any] = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(SerializationError, match="nested too deeply"):
        echo.delay(deep)
    with pytest.raises(SerializationError, match="more than 4,300 digits"):
        echo.delay(10 ** 5000)
    assert kernel.queue.qsize() == 0


@pytest.mark.parametrize(("args", "kwargs", "said"), [
    ("abc", None, "args must be a tuple or list"),
    ({"a": 1}, None, "args must be a tuple or list"),
    ((1,), [("a", 1)], "kwargs must be a dict"),
])
def test_apply_async_refuses_args_that_are_not_a_sequence_of_arguments(
        kernel: Kernel, project: Path, args: Any, kwargs: Any, said: str) -> None:
    """``args="abc"`` ran ``task('a', 'b', 'c')`` and ``args={'a': 1}`` ran ``task('a')``
    (Celery raises ``TypeError`` for both)."""
    echo, _ = _tasks(project)
    with pytest.raises(TypeError, match=said):
        echo.apply_async(args, kwargs)
    assert kernel.queue.qsize() == 0


@pytest.mark.parametrize(("queue", "said"), [
    ("", "a queue name is a non-empty string"),
    (123, "a queue name is a non-empty string"),
    ("a,b", "holds a comma"),
    ("caf\udce9", "holds a NUL or a lone surrogate"),
])
def test_apply_async_checks_the_queue_as_task_does(kernel: Kernel, project: Path,
                                                   queue: Any, said: str) -> None:
    """``queue=""`` silently meant the task's own queue, ``queue=123`` was stored as a
    number on some backends and failed on others as if their storage were at fault."""
    echo, _ = _tasks(project)
    with pytest.raises(ValueError, match=said):
        echo.apply_async((1,), queue=queue)
    assert kernel.queue.qsize() == 0


def test_an_eta_counts_from_when_the_job_is_stored_and_may_be_the_last_second(
        kernel: Kernel, project: Path) -> None:
    """The eta was turned into a delay before the first call loaded the plugins (and
    connected), so the job started late by that much; and the last second the docs
    promise, 9999-12-31 23:59:59 UTC, came back a fraction past it, which PostgreSQL
    refused."""
    echo, _ = _tasks(project)
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    job = echo.apply_async((1,), eta=last)
    message = kernel.queue.peek(job.id)
    assert message is not None and message.available_at <= last.timestamp()


def test_get_async_times_out_with_get_s_words(kernel: Kernel, project: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_async`` said only "had no outcome within 0.2 s", without the job's state and
    the hint that ``get()`` gives."""
    import asyncio

    echo, _ = _tasks(project)
    job = echo.delay(1)
    with pytest.raises(TimeoutError) as waited:
        job.get(timeout=0.2)
    said = str(waited.value)
    in_process = type(kernel.queue).capabilities.in_process  # (memory: not another's)
    assert f"is still QUEUED after 0.2 s; no {'' if in_process else 'live '}worker runs on " \
           f"this store ({kernel.queue.location}" in said, said
    assert ("start one in this process" in said) is in_process, said
    beats = kernel.results.location  # the store the heartbeats were read from, named
    assert (f", its heartbeats read from {beats})" in said) is (beats != kernel.queue.location)
    # the hint reads the live workers once, at the end: not at each of the polls
    reads = []
    live_workers = kernel.results.live_workers
    monkeypatch.setattr(kernel.results, "live_workers",
                        lambda: reads.append(1) or live_workers())
    with pytest.raises(TimeoutError) as waited:
        asyncio.run(job.get_async(timeout=0.2, poll_secs=0.01))
    assert str(waited.value) == said
    assert len(reads) == 1, f"{len(reads)} reads of the live workers in one wait"


def test_a_task_in_a_symlinked_script_is_recorded_under_the_scripts_name(tmp_path: Path):
    """``python app.py`` where ``app.py`` in the project is a symlink to a shared checkout:
    its tasks were recorded with no module (the resolved file is outside the project), and
    the worker in the project, which imports ``app`` through the link, failed every job."""
    import subprocess
    import sys

    shared, project = tmp_path / "shared", tmp_path / "project"
    shared.mkdir()
    project.mkdir()
    (shared / "app.py").write_text(
        "from nuvom_kernel.dispatcher import importable_module\n"
        "def mul(x, y):\n    return x * y\n"
        "print(importable_module(mul))\n")
    (project / "app.py").symlink_to(shared / "app.py")
    (project / "jobs").mkdir()
    (project / "jobs" / "run.py").symlink_to(shared / "app.py")
    for script, module in (("app.py", "app"), ("jobs/run.py", "jobs.run")):
        out = subprocess.run([sys.executable, script], cwd=project, capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
        assert out == module, script
    # a script outside the project has no importable name, linked or not
    out = subprocess.run([sys.executable, str(shared / "app.py")], cwd=project,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "None"


def test_a_positional_only_argument_and_a_keyword_of_its_name_are_two_unique_calls() -> None:
    """``def tag(a, /, **kw)``: ``tag(1)`` and ``tag(1, a=2)`` hashed to one id (the
    positional value replaced the keyword), so the second call never ran."""
    from nuvom_kernel.unique import unique_id

    def uid(args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        return unique_id(Envelope.for_call("tag", None, TaskOptions(), args, kwargs), ["a"])

    assert uid((1,), {}) != uid((1,), {"a": 2})
    assert uid((1,), {"b": 2}) == uid((1,), {"b": 2})
    assert uid((1,), {}) == uid((), {"a": 1}), "f(1) and f(a=1) stay one call"


def test_a_lambda_needs_a_name_of_its_own(project: Path) -> None:
    """Every lambda's task was named ``<lambda>``: ``triple = task(lambda ...)`` replaced
    ``double``'s, and the worker ran it for ``double``'s jobs (``double.delay(5)`` gave 15)."""
    with pytest.raises(TypeError, match=r"a lambda has no name of its own: .*task\(name="):
        task(lambda x: x * 2)
    named = task(name="lambdas.triple")(lambda x: x * 3)
    assert named.name == "lambdas.triple" and named(2) == 6


def test_tasks_a_factory_makes_under_one_name_are_warned_about(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``make(10)`` and ``make(100)`` both define ``scale``: the last one made runs every
    job of that name. That is also what a test defining a task in its body does when run
    twice, so it is said, not refused."""
    write_module(project, "factory_tasks", (
        "from nuvom_kernel import task\n\n"
        "def make(n):\n    @task\n    def scale(x):\n        return x * n\n    return scale\n\n"
        "by10 = make(10)\nby100 = make(100)\n"))
    with caplog.at_level("WARNING", logger="nuvom.registry"):
        __import__("factory_tasks")
    assert "task 'scale' is defined again by factory_tasks.make.<locals>.scale" in caplog.text
    assert "need a name each" in caplog.text


def test_the_same_module_defined_again_is_still_one_task(project: Path) -> None:
    """A module's source run again (reloaded after an edit that moved the task, a notebook
    cell re-run) defines its tasks again: no clash, and no warning."""
    import importlib

    write_module(project, "defined_twice", "from nuvom_kernel import task\n\n"
                                           "@task\ndef once(x):\n    return x\n")
    first = importlib.import_module("defined_twice")
    (project / "defined_twice.py").write_text(
        "from nuvom_kernel import task\n\n# moved down\n\n@task\ndef once(x):\n"
        "    return x + 1\n")
    importlib.invalidate_caches()
    second = importlib.reload(first)
    assert second.once.name == "once" and second.once(1) == 2


def test_a_functions_own_attributes_cannot_replace_the_tasks(project: Path) -> None:
    """``functools.update_wrapper`` copied the function's ``__dict__`` over the task: a
    ``name`` another decorator set became every job's task name (each job failed as an
    unknown task), an ``options`` dict broke ``.delay()``. Other attributes still show."""
    def labelled(fn):
        fn.name, fn.options, fn.label = "Nightly work", {"x": 1}, "nightly"
        return fn

    @task
    @labelled
    def work(x: int) -> int:
        return x

    assert work.name == "work" and work.options.retries == 0
    assert work.label == "nightly"  # type: ignore[attr-defined]


def test_a_partial_or_a_callable_object_records_the_module_that_made_it_a_task(
        project: Path) -> None:
    """A ``functools.partial`` recorded module ``functools`` (a fresh worker could not find
    it) and ``repr`` of the task raised; a callable without ``__name__`` gave a bare
    ``AttributeError``."""
    import functools

    write_module(project, "partial_tasks", (
        "import functools\nfrom nuvom_kernel import task\n\n"
        "def base(x, y):\n    return x + y\n\n"
        "class Scale:\n    def __call__(self, x):\n        return x * 3\n\n"
        "add7 = task(name='add7')(functools.partial(base, 7))\n"
        "scale = task(name='scale')(Scale())\n"
        "length = task(name='length')(len)\n"))
    from partial_tasks import add7, length, scale  # type: ignore[import-not-found]

    assert (add7.module, scale.module, length.module) == ("partial_tasks",) * 3
    assert "add7" in repr(add7) and "scale" in repr(scale)
    with pytest.raises(TypeError, match=r"no __name__ .*task\(name=\.\.\.\)"):
        task(functools.partial(len))
    with pytest.raises(TypeError, match="@task takes a function, got 42"):
        task(42)  # type: ignore[call-overload]


def test_a_pickled_handle_arrives_unbound_and_says_how_to_bind_it(kernel: Kernel,
                                                                  project: Path) -> None:
    """Pickling a handle pickled its kernel, and failed naming a closure deep inside it
    (``Can't pickle local object 'optional.<locals>.parse'``)."""
    import copy
    import pickle

    echo, _ = _tasks(project)
    job = echo.delay("x")
    arrived = pickle.loads(pickle.dumps(job))
    assert (arrived.id, arrived.task, arrived.args) == (job.id, "echo", ("x",))
    with pytest.raises(NuvomError, match=r"send its id and call get_job\(id\) there"):
        arrived.refresh()
    assert get_job(arrived.id).status is JobStatus.QUEUED
    assert copy.copy(job).refresh().id == job.id, "a copy in this process stays bound"
    assert copy.deepcopy(job).refresh().id == job.id


def test_task_on_a_method_in_a_class_body_is_refused_at_decoration() -> None:
    """``Svc().method.delay(1)`` enqueued ``method(1)`` with no instance: every job failed
    on the worker. A ``@staticmethod`` (no instance needed) stays a task."""
    with pytest.raises(TypeError, match=r"@task on the method .*Svc\.method.*'self'"):
        class Svc:
            @task
            def method(self, x: int) -> int:
                return x

    class Tools:
        @task(name="tools.double")
        @staticmethod
        def double(x: int) -> int:
            return x * 2

    assert Tools.double(2) == 4


def test_arguments_that_do_not_fit_the_function_are_refused_and_nothing_is_stored(
        kernel: Kernel) -> None:
    """``add.delay(1)`` for ``add(x, y)`` was stored, and the job failed on a worker with a
    ``TypeError`` (retried) long after the caller's line: Celery checks a call when it is
    sent, and so does every producer call now. A ``.map()`` with one bad item stores none."""
    @task
    def sig_add(x: int, y: int = 2, *, scale: int = 1) -> int:
        return (x + y) * scale

    @task
    def sig_any(*args: Any, **kwargs: Any) -> None: ...

    signature = r"Its signature is sig_add\(x, y=2, \*, scale=1\)"
    for call, problem in [
            (lambda: sig_add.delay(), "missing a required argument: 'x'"),
            (lambda: sig_add.delay(1, 2, 3), "too many positional arguments"),
            (lambda: sig_add.delay(1, x=1), "multiple values for argument 'x'"),
            (lambda: sig_add.delay(1, scal=2), "got an unexpected keyword argument 'scal'"),
            # bind() says its first problem only: the misspelt name was never mentioned
            (lambda: sig_add.delay(z=1), "missing a required argument: 'x'; and it has no "
                                         "parameter 'z'"),
            (lambda: sig_add.apply_async((1, 2, 3), delay_secs=5),
             "too many positional arguments"),
            (lambda: sig_add.map([(1,), (1, 2), (1, 2, 3)]), "too many positional arguments"),
            (lambda: sig_add.map([{"y": 1}]), "missing a required argument: 'x'")]:
        with pytest.raises(TypeError, match=rf"task 'sig_add' cannot take these arguments: "
                                            rf"{problem}\. {signature}; nothing was enqueued"):
            call()
    assert kernel.queue.qsize() == 0

    jobs = [sig_add.delay(1), sig_add.delay(1, 2), sig_add.delay(x=1, scale=3),
            sig_add.apply_async((1,), {"y": 5}), *sig_add.map([(1,), {"x": 2}, 3]),
            sig_any.delay(), sig_any.delay(1, 2, 3, a=4)]
    assert kernel.queue.qsize() == len(jobs) == 9
    assert [job.args for job in jobs[:3]] == [(1,), (1, 2), ()]


def test_a_schedule_whose_arguments_do_not_fit_is_refused_at_decoration() -> None:
    """Each of its ticks' jobs failed on a worker with a ``TypeError``."""
    with pytest.raises(TypeError, match=r"task 'sig_tick' cannot take these arguments: "
                                        r"missing a required argument: 'y'\. Its signature "
                                        r"is sig_tick\(x, y\); fix the schedule's args="):
        @task(schedule=every(seconds=30, args=(1,)))
        def sig_tick(x: int, y: int) -> None: ...

    @task(schedule=every(seconds=30, args=(1,), kwargs={"y": 2}), name="sig_tock")
    def sig_tock(x: int, y: int) -> None: ...


def test_a_decorator_that_supplies_an_argument_is_checked_as_the_worker_calls_it(
        kernel: Kernel) -> None:
    """``@task`` over a ``functools.wraps`` decorator that passes the first argument itself
    (a database session): the check bound the call to the wrapped function's signature,
    which ``inspect.signature`` follows, and refused ``save.delay(5)``, which the worker
    runs as ``wrapper(5)``; a schedule's arguments made its module fail to import."""
    import functools

    def with_session(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn("session", *args, **kwargs)
        return wrapper

    @task
    @with_session
    def sig_save(session: str, item: int) -> str:
        return f"{session} saved {item}"

    @task(name="sig_nightly", schedule=every(minutes=5, args=("report",)))
    @with_session
    def sig_nightly(session: str, what: str) -> None: ...

    assert sig_save.delay(5).args == (5,)
    assert [j.args for j in sig_save.map([(6,), (7,)])] == [(6,), (7,)]
    assert kernel.queue.qsize() == 3


def test_a_jobs_created_at_does_not_count_the_first_calls_plugin_loading(project: Path):
    """A process's first ``.delay()`` loads the plugins (0.3-1 s with the Redis plugin's
    imports) after its job was stamped: the job's wait (``nuvom_job_wait_seconds``, the
    dashboard) counted the producer's start-up. A plugin module that takes 1 s to import
    stands for it; each way to enqueue is checked in a process of its own."""
    write_module(project, "slow_plugin", """
import time

from nuvom_kernel import hookimpl

time.sleep(1.0)  # a plugin whose imports are slow


@hookimpl
def nuvom_configure(config):
    pass
""")
    write_module(project, "stamped", "from nuvom_kernel import task\n\n\n"
                                     "@task\ndef stamped(x):\n    return x\n\n\n"
                                     "@task(unique=True)\ndef once(x):\n    return x\n")
    (project / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["slow_plugin"]\n')
    for call in ("stamped.delay(1)", "stamped.apply_async((1,))", "stamped.map([1])[0]",
                 "once.map([1])[0]"):
        script = ("import sys, time\nsys.path.insert(0, '')\nfrom stamped import once, stamped\n"
                  f"before = time.time()\njob = {call}\nprint(job.created_at - before)\n")
        done = subprocess.run([sys.executable, "-c", script], cwd=project, text=True,
                              capture_output=True, timeout=60,
                              env=user_env(NUVOM_QUEUE_BACKEND="memory",
                                           NUVOM_RESULT_BACKEND="memory"))
        assert done.returncode == 0, done.stderr
        assert float(done.stdout) >= 1.0, (call, done.stdout)


def test_a_program_run_in_a_projects_subfolder_is_warned_where_its_jobs_go(
        tmp_path: Path) -> None:
    """A script run from ``scripts/`` (or a cron job from ``$HOME``) read no
    ``.nuvom_plugins.toml`` and enqueued into a new store of its own folder without a word:
    the project's workers never saw its jobs."""
    (tmp_path / ".nuvom_plugins.toml").write_text('[settings]\nqueue_backend = "sqlite"\n')
    (tmp_path / "tasks.py").write_text(
        "from nuvom_kernel import task\n\n\n@task\ndef add(x, y):\n    return x + y\n")
    scripts = tmp_path / "scripts"
    scripts.mkdir()

    def run_script(name: str, code: str) -> subprocess.CompletedProcess[str]:
        (scripts / name).write_text(
            "import pathlib, sys\nsys.path.insert(0, str(pathlib.Path(__file__).parent.parent))"
            f"\nfrom nuvom_kernel import chain\nfrom tasks import add\n{code}\nprint('sent')\n")
        done = subprocess.run([sys.executable, name], cwd=scripts, env=user_env(),
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout == "sent\n", done.stderr
        return done

    done = run_script("enq.py", "add.delay(1, 2)\nadd.delay(3, 4)")
    said = (f"enqueuing into the store of {scripts} (no .nuvom_plugins.toml here), but "
            f"{tmp_path}, a folder above, holds a Nuvom project")
    assert done.stderr.count(said) == 1, done.stderr
    at_home = subprocess.run([sys.executable, "scripts/enq.py"], cwd=tmp_path,
                             env=user_env(), capture_output=True, text=True, timeout=60,
                             check=False)
    assert at_home.returncode == 0 and "a folder above" not in at_home.stderr, at_home.stderr
    chosen = subprocess.run([sys.executable, "enq.py"], cwd=scripts, timeout=60, check=False,
                            env=user_env(NUVOM_DATA_DIR=str(tmp_path / ".nuvom")),
                            capture_output=True, text=True)
    assert chosen.returncode == 0 and "a folder above" not in chosen.stderr, \
        "a store chosen on purpose (NUVOM_DATA_DIR) is no mistake to warn about"
    flow = run_script("flow.py", "chain(add.s(1, 2), add.s(3)).delay()")
    assert flow.stderr.count(said) == 1, "a workflow's steps go to that store too"


def test_calling_a_canvas_says_to_delay_it() -> None:
    """Celery submits `chain(...)()`; here it said only "'Chain' object is not callable"."""
    from nuvom_kernel import chain, group

    @task
    def one(x: int = 1) -> int:
        return x

    for canvas, kind in ((chain(one.s(), one.s()), "chain"), (group(one.s()), "group"),
                         (one.s(), "step")):
        with pytest.raises(TypeError, match=f"a {kind} is not called: submit it with "
                                            r"\.delay\(\)"):
            canvas()
