"""Schedules with a controllable clock on real backends: DST, catch-up, overlap, dedup."""

from __future__ import annotations

import itertools
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from nuvom_kernel import cron, every, task
from nuvom_kernel.backends import Capabilities
from nuvom_kernel.errors import BackendCapabilityError, TaskRegistrationError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.scheduler import MAX_SLEEP_SECS, Scheduler
from nuvom_kernel.schedules import Cron, Every, ScheduleError, schedule_job_id
from nuvom_kernel.testing.memory import MemoryResultBackend
from nuvom_kernel.worker import Worker
from tests.helpers import E2E_BACKENDS, write_module

BACKENDS = E2E_BACKENDS  # every built-in result backend keeps schedule state


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def fired(kernel: Kernel) -> list[str]:
    """``scheduled_for`` of every job in the queue, oldest first (no worker runs them)."""
    seen = []
    while (lease := kernel.queue.dequeue()) is not None:
        from nuvom_kernel.envelope import Envelope

        seen.append(Envelope.from_message(lease.message, kernel.serializer)
                    .headers["scheduled_for"])
        kernel.queue.ack(lease)
    return sorted(seen)


def step(scheduler: Scheduler, start: str, end: str, secs: float = 60.0) -> None:
    """Run a scheduler pass at every ``secs`` of a clock going from ``start`` to ``end``."""
    now, stop = at(start), at(end)
    while now <= stop:
        scheduler.run_pending(now)
        now += secs


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


DST = [
    # zone, expression, clock from/to (UTC), the instants it must fire at (UTC)
    ("Europe/Paris", "30 2 * * *", "2026-03-28T00:00", "2026-03-30T03:00",
     ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"]),  # 02:30 does not exist
    ("Europe/Paris", "30 2 * * *", "2026-10-24T00:00", "2026-10-26T03:00",
     ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),  # 02:30 happens twice
    ("America/New_York", "*/30 2 * * *", "2026-03-08T05:00", "2026-03-08T09:00",
     ["2026-03-08T07:00"]),  # 02:00 and 02:30 do not exist: once, at 03:00 EDT
    ("America/New_York", "*/30 1 * * *", "2026-11-01T04:00", "2026-11-01T08:00",
     ["2026-11-01T05:00", "2026-11-01T05:30"]),  # 01:00-01:59 twice: each tick once
]


@pytest.mark.parametrize(("zone", "expr", "start", "end", "expected"), DST)
def test_dst_transitions_fire_each_tick_once(make_kernel, backend, zone, expr, start, end,
                                             expected):
    kernel = make_kernel(backend)

    @task(schedule=cron(expr, tz=zone))
    def report() -> None: ...

    step(Scheduler(kernel), start, end, secs=300)  # lands on every :00 and :30
    assert fired(kernel) == [f"{t}:00+00:00" for t in expected]


@pytest.mark.parametrize(("policy", "window", "runs", "missed"), [
    ("all", 3600, [60, 120, 180, 240, 300], 0),
    ("latest", 3600, [300], 4),
    ("none", 3600, [], 5),
    ("all", 150, [240, 300], 3),  # older than the window: missed whatever the policy
])
def test_downtime_applies_the_catch_up_policy_exactly(make_kernel, backend, policy, window,
                                                      runs, missed):
    kernel = make_kernel(backend)

    @task(schedule=every(minutes=1), catch_up=policy, catch_up_window_secs=window)
    def poll() -> None: ...

    scheduler = Scheduler(kernel)
    t0 = at("2026-06-01T12:00:00+00:00")
    scheduler.run_pending(t0)
    assert len(fired(kernel)) == 1
    scheduler.run_pending(t0 + 5 * 60 + 30)  # down for five ticks
    assert fired(kernel) == [datetime.fromtimestamp(t0 + r, timezone.utc).isoformat()
                             for r in runs]
    state = kernel.results.schedule_states()["poll"]
    assert (state.missed, state.fired, state.last_tick) == (missed, 1 + len(runs), t0 + 300)


def test_overlap_skip_records_skipped_ticks(make_kernel, backend):
    kernel = make_kernel(backend)

    @task(schedule=every(seconds=10), overlap="skip")
    def slow() -> None: ...

    scheduler = Scheduler(kernel)
    t0 = at("2026-06-01T12:00:00+00:00")
    scheduler.run_pending(t0)
    scheduler.run_pending(t0 + 10)  # the first run is still queued
    scheduler.run_pending(t0 + 20)
    assert kernel.queue.qsize() == 1
    state = kernel.results.schedule_states()["slow"]
    assert (state.fired, state.skipped) == (1, 2)
    fired(kernel)  # the run finished (acked)
    scheduler.run_pending(t0 + 30)
    assert kernel.queue.qsize() == 1


def test_two_schedulers_on_one_store_fire_each_tick_once(make_kernel, backend):
    if backend == "memory":
        pytest.skip("memory is one process's store")
    first, second = make_kernel(backend), make_kernel(backend)

    @task(schedule=every(seconds=1))
    def beat() -> None: ...

    a, b = Scheduler(first), Scheduler(second)
    t0 = at("2026-06-01T12:00:00+00:00")
    for i in range(20):
        (a if i % 3 else b).run_pending(t0 + i)
        (b if i % 3 else a).run_pending(t0 + i + 0.5)
    assert len(fired(first)) == 20


def test_worker_runs_ticks_and_the_job_knows_its_tick(make_kernel, backend, project):
    kernel = make_kernel(backend)
    write_module(project, "ticking", """
from nuvom_kernel import task, every, current_job
SEEN = []

@task(schedule=every(seconds=1))
def ticking():
    SEEN.append(current_job().scheduled_for)
""")
    import ticking

    from tests.helpers import wait_until

    worker = Worker(kernel, workers=1)
    worker.start()
    try:
        wait_until(lambda: len(ticking.SEEN) >= 2, timeout=10, what="two ticks")
    finally:
        worker.stop()
        worker.join()
    first = ticking.SEEN[0]
    assert first.tzinfo is not None and first.utcoffset().total_seconds() == 0
    assert first.microsecond == 0 and ticking.SEEN[1].timestamp() - first.timestamp() == 1


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"schedule": "61 * * * *"}, "'61 * * * *'"),
    ({"schedule": cron("0 9 * * *", tz="Mars/Olympus")}, "'Mars/Olympus'"),
    ({"schedule": every(seconds=0)}, "positive interval"),
    ({"schedule": every(minutes=-1)}, "positive interval"),
    ({"schedule": every(seconds=float("nan"))}, "positive interval"),
    ({"schedule": every(seconds=float("inf"))}, "at most 31622400 s (366 days)"),
    ({"schedule": every(hours=24 * 367)}, "for rarer runs use cron(...)"),
    ({"schedule": "0 0 31 2 *"}, "'0 0 31 2 *' never fires"),  # February 31
    ({"schedule": cron("0 0 31 4 *")}, "April 31"),
    ({"schedule": "0 */5 * * * *"}, "Seconds are not supported"),  # Quartz: seconds first
    ({"schedule": "@every_minute"}, "It is none of the named ones: @annually, @daily"),
    ({"schedule": "* * * * *", "overlap": "queue"}, "overlap='queue'"),
    ({"schedule": "* * * * *", "catch_up": "some"}, "catch_up='some'"),
    ({"schedule": 5}, "schedule= takes"),
    # accepted, then every tick failed to encode while `schedule list` showed it healthy
    ({"schedule": every(seconds=1, args=(1e400,))}, "schedule's arguments: args[0] is inf"),
    ({"schedule": cron("0 9 * * *", kwargs={"to": object()})},
     "schedule's arguments: kwargs['to'] has type builtins.object"),
    ({"overlap": "skip"}, "overlap applies only with schedule="),
    ({"schedule": None, "catch_up": "all", "overlap": "skip"},
     "catch_up, overlap apply only with schedule="),
])
def test_bad_schedules_fail_at_decoration_naming_task_and_value(kwargs, needle):
    with pytest.raises(ValueError) as info:
        @task(name="nightly", **kwargs)
        def nightly() -> None: ...
    assert needle in str(info.value)
    assert "nightly" in str(info.value)


def test_schedule_none_is_no_schedule() -> None:
    """``schedule=None`` (a settings value left empty) means no schedule, as leaving it out
    does; it was refused with a garbled "task 'x':  only apply with schedule=" message."""
    @task(name="unscheduled", schedule=None)
    def unscheduled() -> None: ...

    assert unscheduled.schedule is None


def test_two_schedules_with_one_name_name_both_modules(project):
    source = "from nuvom_kernel import task\n@task(name='report', schedule='0 * * * *')\n" \
             "def report(): ...\n"
    write_module(project, "billing", source)
    write_module(project, "reports", source)
    import billing  # noqa: F401

    with pytest.raises(TaskRegistrationError) as info:
        import reports  # noqa: F401
    assert "billing" in str(info.value) and "reports" in str(info.value)


class _Forgetful(MemoryResultBackend):
    name = "forgetful"
    capabilities = Capabilities()


class _Plugin:
    from nuvom_kernel import hookimpl

    @hookimpl
    def nuvom_register_result_backends(self) -> list[type]:
        return [_Forgetful]


def test_worker_refuses_schedules_a_result_backend_cannot_keep(project):
    kernel = Kernel(root=project, plugins={"forgetful": _Plugin()},
                    environ={"NUVOM_QUEUE_BACKEND": "memory",
                             "NUVOM_RESULT_BACKEND": "forgetful"})

    @task(schedule=every(seconds=1))
    def beat() -> None: ...

    with pytest.raises(BackendCapabilityError) as info:
        Worker(kernel, workers=1).start()
    assert "'forgetful'" in str(info.value) and "schedule=" in str(info.value)
    assert "beat" in str(info.value)
    Worker(kernel, workers=1, scheduler=False)  # --no-scheduler: nothing to refuse
    kernel.close()


def test_schedule_state_compare_and_set_lets_one_writer_win(make_kernel, backend):
    """Two schedulers that read the same state: only the first write lands, so only its
    ticks are pushed (the second finds its write refused and pushes nothing)."""
    from nuvom_kernel.models import ScheduleState

    first, second = make_kernel(backend), make_kernel(backend)
    results = [first.results, second.results if backend != "memory" else first.results]
    assert results[0].advance_schedule(None, ScheduleState("s", last_tick=1.0, updated_at=1.0))
    assert not results[1].advance_schedule(None, ScheduleState("s", last_tick=1.0,
                                                                updated_at=1.5))
    read = results[1].schedule_states()["s"]
    assert results[0].advance_schedule(read, ScheduleState("s", last_tick=2.0, updated_at=2.0))
    assert not results[1].advance_schedule(read, ScheduleState("s", last_tick=2.0,
                                                                updated_at=2.5))
    assert results[1].schedule_states()["s"].updated_at == 2.0


def test_schedule_cli_lists_and_fires_from_the_manifest(project):
    from tests.helpers import run_nuvom

    write_module(project, "nightly", "from nuvom_kernel import task, cron\n"
                 "@task(schedule=cron('0 3 * * *', tz='America/New_York'))\n"
                 "def cleanup(): ...\n")
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    listed = run_nuvom(["schedule", "list"], project)
    assert listed.returncode == 0, listed.stderr
    assert "cleanup" in listed.stdout and "America/New_York" in listed.stdout
    fired_now = run_nuvom(["schedule", "run", "cleanup"], project)
    assert fired_now.returncode == 0, fired_now.stderr
    assert "fired cleanup: job schedule.cleanup.manual." in fired_now.stdout
    kernel = Kernel(root=project, environ={})
    (lease,) = kernel.queue.claim(5)
    assert lease.message.task == "cleanup"
    assert "cleanup" not in kernel.results.schedule_states(), "a run by hand is no tick"
    kernel.close()
    in_memory = run_nuvom(["schedule", "run", "cleanup"], project,
                          NUVOM_QUEUE_BACKEND="memory", NUVOM_RESULT_BACKEND="memory")
    assert in_memory.returncode == 1 and "so the run would end with this command" in \
        in_memory.stderr, in_memory.stdout + in_memory.stderr
    unknown = run_nuvom(["schedule", "run", "nope"], project)
    assert unknown.returncode != 0 and "no schedule named 'nope'" in unknown.stderr
    assert "cleanup" in unknown.stderr


def test_schedule_list_names_a_schedule_known_only_by_its_stored_state(project):
    """A schedule discovery cannot read fires in a worker that imported its module, while
    `nuvom schedule list` said "No schedules" and nothing else."""
    from nuvom_kernel.models import ScheduleState
    from tests.helpers import run_nuvom

    kernel = Kernel(root=project, environ={})
    try:
        assert kernel.results.advance_schedule(None, ScheduleState("varsched", last_tick=1.0))
    finally:
        kernel.close()
    listed = run_nuvom(["schedule", "list"], project)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("No schedules.")
    assert ("The store also holds the state of schedule(s) varsched, which neither the "
            "manifest nor an imported task declares") in listed.stdout, listed.stdout
    write_module(project, "nightly", "from nuvom_kernel import task\n"
                 "@task(schedule='0 3 * * *')\ndef varsched(): ...\n")
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    listed = run_nuvom(["schedule", "list"], project)
    assert "varsched" in listed.stdout and "The store also holds" not in listed.stdout


BEATS = """
from nuvom_kernel import task, every

EVERY = every(seconds=60)
QUEUE = "emails"
COMMON = {{"schedule": every(seconds=90)}}

@task(schedule=every(seconds={secs}, args=({tag!r},)), queue=QUEUE)
def beat(tag): ...

@task(schedule=EVERY)  # discovery cannot read it: only the imported task says
def hidden(): ...

@task(**COMMON)  # nor this one
def starred(): ...

@task({dropped})
def dropped(): ...

@task(schedule=every(seconds=45), queue=QUEUE)
def steady(): ...
"""


def test_a_schedule_changed_in_the_manifest_replaces_the_imported_one(project):
    """A thread worker never imports a module again: after `nuvom discover tasks` read an
    edited schedule, the worker kept firing the imported one every 3 s with its old
    arguments, while `nuvom schedule list` showed the new one. What the manifest cannot
    say (a queue held in a variable, a schedule in **options) stays the imported task's."""
    from tests.helpers import run_nuvom

    write_module(project, "beats", BEATS.format(secs=3, tag="a",
                                               dropped="schedule=every(seconds=5)"))
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    kernel = Kernel(root=project, environ={})
    with use_kernel(kernel):
        import beats  # type: ignore[import-not-found]  # noqa: F401
    scheduler = Scheduler(kernel)
    first = scheduler.schedules()
    assert (first["beat"].trigger.interval, first["beat"].trigger.args) == (3, ("a",))
    assert set(first) == {"beat", "hidden", "starred", "dropped", "steady"}

    write_module(project, "beats", BEATS.format(secs=2, tag="b", dropped=""))
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    now = scheduler.schedules()
    assert (now["beat"].trigger.interval, now["beat"].trigger.args) == (2, ("b",)), now["beat"]
    assert now["beat"].options.queue == "emails", "the imported task's options stay"
    for name in ("hidden", "starred", "steady"):
        assert now[name] is first[name], f"{name}: the manifest did not change it"
    assert now["steady"].options.queue == "emails"
    assert "dropped" not in now, "a schedule removed from the source stops"
    kernel.close()


def test_a_schedule_whose_queue_is_no_literal_is_warned_about(project, caplog):
    """Its ticks went to queue 'default' from a worker that had not imported the module
    (one serving only the task's queue never imports it), silently."""
    from tests.helpers import run_nuvom

    write_module(project, "qbeats", "from nuvom_kernel import task, every\nQ = 'emails'\n"
                 "@task(schedule=every(seconds=30), queue=Q)\ndef qtick(): ...\n")
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    kernel = Kernel(root=project, environ={})
    with caplog.at_level(logging.WARNING, logger="nuvom.scheduler"):
        assert Scheduler(kernel).schedules()["qtick"].options.queue == "default"
    assert "schedule of task 'qtick': its queue= is not a literal" in caplog.text
    assert "to queue 'default'" in caplog.text
    kernel.close()


# --- a schedule that cannot work never stops the others -----------------------------------


@pytest.mark.parametrize("expr", ["0 */5 * * * *", "* * * * * *", "0 0 9 * * MON 2026",
                                  "0 9 * *", "@reboot"])
def test_cron_needs_exactly_five_fields_and_says_so(expr):
    """croniter reads a sixth field as seconds: '0 */5 * * * *' would fire 301 times a day."""
    with pytest.raises(ScheduleError) as info:
        cron(expr).check()
    text = str(info.value)
    assert repr(expr) in text
    assert "five (minute hour day-of-month month day-of-week)" in text or "five fields" in text
    if len(expr.split()) > 5:
        assert "Seconds are not supported" in text and "every(seconds=...)" in text


def _noop() -> None:
    """A task body for decoration checks."""


@pytest.mark.parametrize(("expr", "problem"), [
    ("61 * * * *", "its minute field '61' is not valid (minute takes 0-59"),
    ("0 25 * * *", "its hour field '25' is not valid (hour takes 0-23"),
    ("* * 32 * *", "its day-of-month field '32' is not valid (day-of-month takes 1-31"),
    ("* * * 13 *", "its month field '13' is not valid (month takes 1-12 or JAN-DEC"),
    ("* * * * FOO", "its day-of-week field 'FOO' is not valid (day-of-week takes 0-6"),
    ("*/0 * * * *", "its minute field '*/0' is not valid"),
])
def test_a_cron_field_out_of_range_is_named(expr, problem):
    """croniter names no field, and the message said "five fields" to an expression that
    has five."""
    with pytest.raises(ScheduleError) as info:
        task(name=f"bad_field_{expr.split()[0]}", schedule=expr)(_noop)
    assert problem in str(info.value) and "five fields" not in str(info.value)


@pytest.mark.parametrize(("call", "problem"), [
    (lambda: cron("* * * * *", tz=ZoneInfo("Europe/Paris")),
     "tz= takes an IANA zone name as a string, got zoneinfo.ZoneInfo(key='Europe/Paris'): "
     "pass tz='Europe/Paris'"),
    (lambda: cron("* * * * *", tz=timezone.utc), "tz= takes an IANA zone name as a string"),
    (lambda: cron("* * * * *", kwargs=[1]), "cron(kwargs=...) takes a dict"),
    (lambda: every(seconds=5, args="ab"), "every(args=...) takes a list or tuple"),
])
def test_a_wrong_type_of_zone_or_arguments_is_a_schedule_error(call, problem):
    """A ZoneInfo for tz= failed inside zoneinfo with a TypeError naming neither the task
    nor what tz= takes; kwargs=[1] as "cannot convert dictionary update sequence"."""
    with pytest.raises(ScheduleError) as info:
        task(name="wrong_type", schedule=call())(_noop)
    assert problem in str(info.value)


@pytest.mark.parametrize(("call", "problem"), [
    (lambda: every(seconds="5"), "every(seconds=...) takes a number, got '5'; "
                                 "write every(seconds=5)"),
    (lambda: every(minutes=None), "every(minutes=...) takes a number, got None"),
    (lambda: every(hours=True), "every(hours=...) takes a number, got True"),
    (lambda: every(days="1"), "every(days=...) takes a number, got '1'; write every(days=1)"),
])
def test_every_refuses_a_non_number_naming_its_argument(call, problem):
    """every(seconds="5") failed with "can only concatenate str", naming nothing."""
    with pytest.raises(ScheduleError) as info:
        call()
    assert problem in str(info.value)


@pytest.mark.parametrize("window", [float("inf"), float("nan"), 0, -1, "3600", True,
                                    366 * 86400 + 1])
def test_catch_up_window_must_be_a_finite_number_of_seconds(window):
    """Infinity was accepted (every missed tick since the epoch is in its window), and a
    string raised a TypeError that did not name the task."""
    with pytest.raises(ScheduleError) as info:
        task(name="windowed", schedule=every(minutes=1), catch_up_window_secs=window)(
            lambda: None)
    assert "catch_up_window_secs must be a number of seconds above 0" in str(info.value)
    assert repr(window) in str(info.value)


@pytest.mark.parametrize(("macro", "every_secs"), [("@hourly", 3600), ("@DAILY", 86400),
                                                   ("@midnight", 86400)])
def test_croniter_macros_still_stand_for_their_five_fields(macro, every_secs):
    cron(macro).check()
    day = at("2026-06-01T00:00:00+00:00")
    ticks = cron(macro).ticks(day - 1, day + 2 * 86400)
    assert ticks[0] == day and {b - a for a, b in itertools.pairwise(ticks)} == {every_secs}


def _break(task_obj: Any) -> None:
    """Give a registered task a schedule that raises at every computation, as a cron
    expression croniter accepts but never matches did before ``check()`` refused it."""
    task_obj.schedule = attrs.evolve(task_obj.schedule, trigger=Cron("0 0 31 2 *"))


def test_a_schedule_that_raises_is_logged_once_and_the_others_keep_firing(
        make_kernel, backend, caplog):
    kernel = make_kernel(backend)

    @task(schedule="0 * * * *")
    def a_broken() -> None: ...

    @task(schedule=every(seconds=2))
    def b_healthy() -> None: ...

    _break(a_broken)
    t0 = at("2026-06-01T12:00:00+00:00")
    now = [t0]
    scheduler = Scheduler(kernel, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="nuvom.scheduler"):
        for i in range(11):  # ten seconds, a pass a second
            now[0] = t0 + i
            scheduler.run_pending()
            assert 0 < scheduler._until_next() <= MAX_SLEEP_SECS + 0.001  # the thread's sleep
    assert fired(kernel) == [datetime.fromtimestamp(t0 + s, timezone.utc).isoformat()
                             for s in range(0, 11, 2)]
    assert set(kernel.results.schedule_states()) == {"b_healthy"}
    errors = [r for r in caplog.records
              if r.name == "nuvom.scheduler" and r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # not once a pass
    assert "'a_broken'" in errors[0].getMessage()
    assert "CroniterBadDateError" in errors[0].getMessage()

    a_broken.schedule = attrs.evolve(a_broken.schedule, trigger=cron("* * * * *"))
    with caplog.at_level(logging.INFO, logger="nuvom.scheduler"):
        scheduler.run_pending(t0 + 60)  # fixed (a new import): it fires, and says so
    assert "schedule 'a_broken' fires again" in caplog.text
    assert kernel.results.schedule_states()["a_broken"].fired == 1


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("and so does its str()")


@attrs.frozen
class _Exploding(Every):
    def ticks(self, after: float, until: float, limit: int = 0) -> list[float]:
        raise _Unprintable


def test_a_schedule_raising_an_unprintable_error_is_isolated_too(make_kernel, caplog):
    """The isolation logs the error's text: taken with a plain ``str()``, an error whose
    ``__str__`` raises escaped it and ended the pass for every schedule."""
    kernel = make_kernel("memory")

    @task(schedule="0 * * * *")
    def a_broken() -> None: ...

    @task(schedule=every(seconds=2))
    def b_healthy() -> None: ...

    a_broken.schedule = attrs.evolve(a_broken.schedule, trigger=_Exploding(60.0))
    t0 = at("2026-06-01T12:00:00+00:00")
    scheduler = Scheduler(kernel, clock=lambda: t0)
    with caplog.at_level(logging.ERROR, logger="nuvom.scheduler"):
        scheduler.run_pending(t0)
        assert scheduler._until_next() > 0
    assert fired(kernel) == [datetime.fromtimestamp(t0, timezone.utc).isoformat()]
    assert "_Unprintable: <_Unprintable: str() raised RuntimeError" in caplog.text


def test_schedule_list_shows_a_schedule_that_raises_with_its_error(make_kernel, backend):
    from click.testing import CliRunner

    from nuvom_kernel.cli import make_cli
    from nuvom_kernel.scheduler import schedule_rows

    kernel = make_kernel(backend)

    @task(schedule="0 * * * *")
    def a_broken() -> None: ...

    @task(schedule=every(seconds=30))
    def b_healthy() -> None: ...

    _break(a_broken)
    broken, healthy = schedule_rows(kernel)
    assert (broken["name"], broken["next_run"], broken["schedule"]) == (
        "a_broken", None, "cron(0 0 31 2 *)")
    assert "CroniterBadDateError" in broken["error"]
    assert healthy["error"] is None and healthy["next_run"] is not None

    listed = CliRunner().invoke(make_cli(kernel), ["schedule", "list"], obj=kernel)
    assert listed.exit_code == 0, listed.output
    assert "ERROR" in listed.output.splitlines()[0]
    assert "b_healthy" in listed.output and "CroniterBadDateError" in listed.output
    as_json = CliRunner().invoke(make_cli(kernel), ["schedule", "list", "--json"], obj=kernel)
    assert as_json.exit_code == 0, as_json.output
    assert [row["error"] is None for row in json.loads(as_json.output)] == [False, True]


def test_manifest_schedule_of_the_wrong_type_is_refused_as_task_refuses_it(
        make_kernel, caplog):
    from nuvom_kernel.discovery import TaskRef, write_manifest

    kernel = make_kernel("sqlite")
    write_manifest(kernel.data_dir, [
        TaskRef("bad_type", "tasks", "tasks.py", 3, options={"schedule": 30}),
        TaskRef("no_kind", "tasks", "tasks.py", 6, options={"schedule": {"args": []}}),
        TaskRef("fine", "tasks", "tasks.py", 9, options={"schedule": {"every": 5.0},
                                                         "overlap": "skip"})])
    with pytest.raises(ValueError) as refused:
        @task(name="bad_type", schedule=30)  # type: ignore[arg-type]
        def bad_type() -> None: ...
    with caplog.at_level(logging.WARNING, logger="nuvom.scheduler"):
        schedules = Scheduler(kernel).schedules()
    assert set(schedules) == {"fine"} and schedules["fine"].overlap == "skip"
    assert f"manifest schedule of task 'bad_type' ignored: {refused.value}" in caplog.text
    assert "'no_kind'" in caplog.text and "neither cron(...) nor every(...)" in caplog.text
    assert "not iterable" not in caplog.text


# --- every(): one tick, one time, one id ------------------------------------------------------


def test_a_fractional_every_tick_runs_once_under_one_id(make_kernel, backend):
    """every(seconds=0.6), catch_up="all": the catch-up used to compute its last tick as
    ...577.9999998 (id ``...T013618.1000000``) and the next pass the same tick as ...578.0
    (id ``...T013618``): the tick ran twice."""
    kernel = make_kernel(backend)

    @task(schedule=every(seconds=0.6), catch_up="all")
    def sixth() -> None: ...

    scheduler = Scheduler(kernel)
    ids = [j.id for j in scheduler.run_pending(1796434238.05)]
    caught_up = scheduler.run_pending(1796434578.21)  # 340 s down: catch every tick up
    ids += [j.id for j in caught_up]
    assert caught_up[-1].id == "schedule.sixth.20261205T013618"  # the tick at ...578.0
    assert scheduler.run_pending(1796434578.31) == []  # handled: nothing to fire again
    ids += [j.id for j in scheduler.run_pending(1796434578.81)]  # the tick at ...578.6
    assert len(ids) == len(set(ids)) == 1 + 567 + 1
    assert all(re.fullmatch(r"schedule\.sixth\.\d{8}T\d{6}(\.\d{6})?", i) for i in ids)
    times = fired(kernel)
    assert len(times) == len(set(times)) == len(ids)


@pytest.mark.parametrize("interval", [0.6, 0.1, 1.5, 0.25, 7.3, 60.0])
def test_every_computes_each_tick_the_same_way_however_it_is_reached(interval):
    """Ticks of one long computation and of many short ones (what successive passes do) are
    the same floats with the same ids."""
    trigger = every(seconds=interval)
    start = 1796434238.05
    whole = trigger.ticks(start, start + 400)
    pieces: list[float] = []
    after = start
    while after < start + 400:
        until = min(after + 1.7, start + 400)
        pieces += trigger.ticks(pieces[-1] if pieces else after, until)
        after = until
    assert pieces == whole
    assert [schedule_job_id("s", t) for t in pieces] == [schedule_job_id("s", t)
                                                          for t in whole]
    assert len({schedule_job_id("s", t) for t in whole}) == len(whole)


def test_tick_ids_have_microseconds_and_whole_seconds_keep_their_ids():
    second = at("2026-12-05T01:36:18+00:00")
    assert schedule_job_id("x", second) == "schedule.x.20261205T013618"  # as deployed
    assert schedule_job_id("x", second - 2e-7) == "schedule.x.20261205T013618"
    assert schedule_job_id("x", second + 2e-7) == "schedule.x.20261205T013618"
    assert schedule_job_id("x", second + 0.5) == "schedule.x.20261205T013618.500000"
    assert schedule_job_id("x", second + 0.6) == "schedule.x.20261205T013618.600000"
    assert schedule_job_id("x", second - 1e-6) == "schedule.x.20261205T013617.999999"


LIMITED_AND_TICKING = """
from nuvom_kernel import every, task

@task(concurrency=1)
def limited():
    return 1

@task(schedule=every(seconds=1))
def beat():
    return 2
"""


def test_a_limit_the_backend_cannot_keep_leaves_the_schedules_firing(
        make_kernel, project, caplog: pytest.LogCaptureFixture) -> None:
    """A backend without ``concurrency`` (Redis had none): a worker that imported such a
    task after it started failed every scheduler pass on it, and fired its schedules only on
    the pass's retries (late, and missing ticks). It is said once; the schedules keep their
    seconds."""
    import attrs

    from tests.helpers import wait_until

    kernel = make_kernel("memory")
    kernel.queue.capabilities = attrs.evolve(kernel.queue.capabilities, concurrency=False)
    write_module(project, "limited_ticks", LIMITED_AND_TICKING)
    __import__("limited_ticks")
    scheduler = Scheduler(kernel)
    with caplog.at_level(logging.ERROR, logger="nuvom"):
        scheduler.start()
        try:
            wait_until(lambda: getattr(kernel.results.schedule_states().get("beat"), "fired",
                                       0) >= 3, timeout=15, what="three ticks of beat")
        finally:
            scheduler.stop()
    assert "scheduler pass failed" not in caplog.text
    assert caplog.text.count("task limits cannot be applied") == 1, caplog.text
    assert "concurrency" in caplog.text


def test_a_last_tick_ahead_of_this_clock_is_said_once_and_then_it_fires_again(
        make_kernel, caplog):
    """A worker whose clock ran ahead moved the shared last tick past the others' clocks (or
    this host's clock stepped back): each schedule fired nothing and said nothing."""
    kernel = make_kernel("memory")

    @task(schedule=every(seconds=10))
    def clocked() -> None: ...

    scheduler = Scheduler(kernel)
    t0 = at("2026-06-01T12:00:00+00:00")
    scheduler.run_pending(t0)
    with caplog.at_level(logging.INFO, logger="nuvom.scheduler"):
        for back in (3600, 3590, 3580):  # stepped back an hour
            assert scheduler.run_pending(t0 - back) == []
        ahead = [r.getMessage() for r in caplog.records if "ahead of this" in r.getMessage()]
        assert len(ahead) == 1, ahead
        assert "is 3600 s ahead of this worker's clock" in ahead[0]
        assert "keep the workers' clocks synchronised" in ahead[0]
        caplog.clear()
        assert len(scheduler.run_pending(t0 + 10)) == 1
        assert any("fires again" in r.getMessage() for r in caplog.records)


def test_a_state_read_that_waits_is_not_blamed_on_this_clock(make_kernel, caplog,
                                                             monkeypatch):
    """A worker's read of the schedule states blocked for 19 s in a partition while another
    worker fired; it had read its clock before the read, so the ticks fired meanwhile were
    "19 s ahead of this worker's clock (... keep clocks synchronised, NTP)", though every
    clock agreed. The clock is now read after the states."""
    kernel = make_kernel("memory")

    @task(schedule=every(seconds=1))
    def waited() -> None: ...

    t0 = at("2026-06-01T12:00:00+00:00")
    clock = [t0]
    blocked, other = Scheduler(kernel, clock=lambda: clock[0]), Scheduler(kernel)
    blocked.run_pending()
    read = kernel.results.schedule_states

    def slow_read() -> Any:
        monkeypatch.setattr(kernel.results, "schedule_states", read)  # the other's is quick
        other.run_pending(t0 + 19)  # while this read waits, the other worker fires
        clock[0] = t0 + 19.2  # and this clock went on, agreeing with the other's
        return read()

    monkeypatch.setattr(kernel.results, "schedule_states", slow_read)
    with caplog.at_level(logging.INFO, logger="nuvom.scheduler"):
        blocked.run_pending()
    assert "ahead of this worker's clock" not in caplog.text, caplog.text


def test_every_takes_days() -> None:
    """``every(days=1)`` failed with "unexpected keyword argument 'days'"."""
    assert every(days=1).interval == 86_400
    assert every(days=1, hours=12).interval == 129_600
