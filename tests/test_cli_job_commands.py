"""What the job commands print for the cases a user meets outside the happy path, through
the real ``nuvom`` script on the default SQLite backend: counts that add up, an unknown id,
an age past the epoch, and job data a UTF-8 terminal cannot print as it is."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from nuvom_kernel import JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import run_nuvom, run_worker_until, write_module

TASKS = """
from nuvom_kernel import task


@task
def echo(x):
    return x
"""


def test_status_counts_ready_and_delayed_jobs_apart(project: Path) -> None:
    """Two jobs, one delayed, read "waiting: default=2   delayed: 1": three jobs, or two?"""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    with use_kernel(Kernel(root=project)):
        echo.delay(1)
        echo.apply_async((2,), delay_secs=3600)
    done = run_nuvom(["status"], project)
    assert done.returncode == 0, done.stderr
    assert "ready: default=1   delayed: default=1   in flight: 0" in done.stdout, done.stdout
    assert "oldest ready job: " in done.stdout


def test_cancelling_an_unknown_id_says_it_is_unknown(project: Path) -> None:
    done = run_nuvom(["cancel", "job", "no-such-job"], project)
    assert done.returncode == 1
    assert "unknown job id 'no-such-job': no backend has seen it" in done.stderr, done.stderr


def _one_finished_job(project: Path) -> None:
    """One ``echo`` job run to its end by an in-process worker, its record stored."""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = echo.delay(1)
        run_worker_until(kernel, lambda: job.refresh().status is JobStatus.SUCCEEDED,
                         "the job to finish")
    kernel.close()


def test_purging_with_an_age_past_the_epoch_purges_everything_finished(project: Path) -> None:
    _one_finished_job(project)
    done = run_nuvom(["purge", "results", "--older-than", "999999999999d"], project)
    assert done.returncode == 0, done.stderr  # was an OSError traceback (Value too large)
    assert "finished before 1970-01-01" in done.stdout
    bad = run_nuvom(["purge", "results", "--older-than", "7"], project)
    assert bad.returncode == 2  # named as the option, as click names every other one
    assert "Invalid value for '--older-than': '7' is not an age" in bad.stderr, bad.stderr


def test_a_purge_dry_run_counts_what_it_would_delete_and_deletes_nothing(
        project: Path) -> None:
    """`purge results` asks nothing (cron runs it): an operator tries an age first."""
    _one_finished_job(project)
    recent = run_nuvom(["purge", "results", "--older-than", "1d", "--dry-run"], project)
    assert recent.returncode == 0, recent.stderr
    assert "dry run: would purge 0 job record(s) finished before " in recent.stdout
    old = run_nuvom(["purge", "results", "--older-than", "0s", "--dry-run"], project)
    assert old.returncode == 0, old.stderr
    assert "SUCCEEDED" in old.stdout and "dry run: would purge 1 job record(s)" in old.stdout
    assert "nothing was changed" in old.stdout
    done = run_nuvom(["purge", "results", "--older-than", "0s"], project)
    assert "purged 1 job record(s)" in done.stdout, done.stdout


FLAKY = """
from nuvom_kernel import task


@task(retries=1, retry_delay_secs=3600)
def flaky():
    raise ValueError("not yet")
"""


def test_a_job_cancelled_in_its_retry_delay_shows_how_long_its_attempt_ran(
        project: Path) -> None:
    """It showed the time from its attempt's start to the cancel (8,016 ms for an attempt
    of 4 ms): ``finished_at`` is the cancel's time."""
    write_module(project, "cli_flaky", FLAKY)
    from cli_flaky import flaky

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = flaky.delay()
        run_worker_until(kernel, lambda: job.refresh().status is JobStatus.RETRYING,
                         "the first attempt to fail")
    kernel.close()
    assert run_nuvom(["cancel", "job", job.id], project).returncode == 0
    shown = run_nuvom(["inspect", "job", job.id, "--format", "json"], project)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    [attempt] = data["history"]
    ran = f"{(attempt['finished_at'] - attempt['started_at']) * 1000:.1f} ms"
    until_cancel = f"{(data['finished_at'] - data['started_at']) * 1000:.1f} ms"
    assert ran != until_cancel, "the cancel came later than the attempt's end"
    assert data["status"] == "CANCELLED", data
    table = run_nuvom(["inspect", "job", job.id], project)
    assert f"      duration: {ran}\n" in table.stdout, table.stdout
    history = run_nuvom(["history", "recent"], project)
    assert ran in history.stdout and until_cancel not in history.stdout, history.stdout


def test_run_secs_reads_a_cancelled_jobs_last_attempt_and_survives_a_hand_edit() -> None:
    """A hand-edited history (a string where an attempt was) made `history recent` and the
    dashboard's job list fail on ``.get`` of a non-dict."""
    from nuvom_kernel.models import JobRecord

    def cancelled(history: object) -> JobRecord:
        return JobRecord(job_id="j", task="t", status=JobStatus.CANCELLED, started_at=10.0,
                         finished_at=500.0, history=history)  # type: ignore[arg-type]

    assert cancelled([{"started_at": 10.0, "finished_at": 10.25}]).run_secs == 0.25
    assert cancelled(["not an attempt"]).run_secs is None
    assert cancelled("torn").run_secs is None
    assert cancelled([]).run_secs is None  # cancelled before it ever ran
    done = JobRecord(job_id="j", task="t", status=JobStatus.SUCCEEDED, started_at=10.0,
                     finished_at=12.0)
    assert done.run_secs == 2.0


def test_inspect_shows_a_lone_surrogate_escaped_on_a_utf8_terminal(project: Path) -> None:
    """A value with a lone surrogate (a file name decoded with surrogateescape) is stored
    as given; a UTF-8 stdout refused to print it and `inspect job` ended in a traceback."""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = echo.delay("caf\udce9.txt")
        run_worker_until(kernel, lambda: job.refresh().status is JobStatus.SUCCEEDED,
                         "the job to finish")
    done = run_nuvom(["inspect", "job", job.id], project, PYTHONIOENCODING="utf-8",
                     LC_ALL="C.UTF-8")
    assert done.returncode == 0, done.stderr
    assert "result: caf\\udce9.txt" in done.stdout, done.stdout
    done = run_nuvom(["history", "recent"], project, PYTHONIOENCODING="utf-8")
    assert done.returncode == 0, done.stderr


def test_inspect_shows_values_as_get_returns_them_and_json_keeps_the_wire_form(
        project: Path) -> None:
    """The table printed the stored wire form: ``{'__nuvom__': ['dict', [['b',
    {'__nuvom__': ['bytes', '/w==']}], ...`` for what ``get()`` returns as a plain dict."""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = echo.delay({"b": b"\xff", 1: (2, 3)})
        run_worker_until(kernel, lambda: job.refresh().status is JobStatus.SUCCEEDED,
                         "the job to finish")
    done = run_nuvom(["inspect", "job", job.id], project)
    assert done.returncode == 0, done.stderr
    assert "result: {'b': b'\\xff', 1: (2, 3)}" in done.stdout, done.stdout
    assert "args: [{'b': b'\\xff', 1: (2, 3)}]" in done.stdout, done.stdout
    assert "__nuvom__" not in done.stdout
    done = run_nuvom(["inspect", "job", job.id, "--format", "json"], project)
    assert '"__nuvom__"' in done.stdout, "JSON output is the stored (JSON-native) form"


def test_inspect_shows_a_waiting_job_from_its_message(project: Path) -> None:
    """A job never run has no record: inspect showed its id, task, status and queue, not
    its arguments, priority or when it is due, which its message holds."""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = echo.apply_async(args=({"b": b"\xff"},), priority=7, delay_secs=600)
    done = run_nuvom(["inspect", "job", job.id], project)
    assert done.returncode == 0, done.stderr
    for line in ("status: QUEUED", "priority: 7", "args: [{'b': b'\\xff'}]", "created_at: ",
                 "due_at: "):
        assert line in done.stdout, done.stdout
    shown = json.loads(run_nuvom(["inspect", "job", job.id, "--format", "json"],
                                 project).stdout)
    assert shown["priority"] == 7 and shown["due_at"] > shown["created_at"], shown
    kernel.close()


def test_inspect_says_a_waiting_job_s_body_does_not_decode(project: Path) -> None:
    """A body damaged in the store showed the job as QUEUED and nothing else, though the
    worker that claims it will fail it."""
    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job, newer = echo.delay(1), echo.delay(2)
    kernel.close()
    with sqlite3.connect(project / ".nuvom" / "nuvom.db") as db:
        assert db.execute("UPDATE nuvom_queue SET body = x'7b6e6f' WHERE id = ?",
                          (job.id,)).rowcount == 1
        assert db.execute("UPDATE nuvom_queue SET body = CAST('{\"v\": 99}' AS BLOB) "
                          "WHERE id = ?", (newer.id,)).rowcount == 1
    done = run_nuvom(["inspect", "job", job.id], project)
    assert done.returncode == 0, done.stderr
    assert "status: QUEUED" in done.stdout, done.stdout
    assert "damaged: the message body cannot be decoded (" in done.stdout, done.stdout
    shown = json.loads(run_nuvom(["inspect", "job", job.id, "--format", "json"],
                                 project).stdout)
    assert "payload is not valid JSON" in shown["damaged"], shown
    later = run_nuvom(["inspect", "job", newer.id], project).stdout
    assert "leaves it in the queue for a worker of a newer release" in later, later


def test_inspect_of_a_running_job_shows_no_earlier_attempt_as_this_one(project: Path) -> None:
    """A job running again after a failed attempt showed that attempt's worker, start, end
    and duration as if they were this one's, where no heartbeat named its worker (yet)."""
    from nuvom_kernel.models import JobRecord

    write_module(project, "cli_tasks", TASKS)
    from cli_tasks import echo

    kernel = Kernel(root=project)
    with use_kernel(kernel):
        job = echo.delay(1)
    kernel.results.put(JobRecord(job_id=job.id, task="echo", status=JobStatus.RETRYING,
                                 attempts=1, started_at=100.0, finished_at=101.0,
                                 worker="old-host:1"))
    [_] = kernel.queue.claim(1)  # this attempt: a worker holds it
    kernel.close()
    shown = json.loads(run_nuvom(["inspect", "job", job.id, "--format", "json"],
                                 project).stdout)
    assert shown["status"] == "RUNNING" and shown["attempts"] == 1, shown
    assert (shown["worker"], shown["started_at"], shown["finished_at"]) == (None,) * 3, shown
    table = run_nuvom(["inspect", "job", job.id], project).stdout
    assert "old-host" not in table and "duration" not in table, table


def test_history_offers_only_the_states_a_record_can_be_in(project: Path) -> None:
    """No record is ever RUNNING (a job's record keeps its last settled state), so
    `--status running` matched nothing, silently."""
    done = run_nuvom(["history", "recent", "--status", "running"], project)
    assert done.returncode == 2
    assert "'running' is not one of" in done.stderr, done.stderr


def test_history_of_queued_jobs_points_to_the_queue(project: Path) -> None:
    """A job enqueued has no record until it first runs: `--status queued` said "No job
    records match." while jobs waited, as if the queue were empty."""
    write_module(project, "t_waits", "from nuvom_kernel import task\n\n\n"
                 "@task\ndef waits():\n    return 1\n")
    with use_kernel(Kernel(root=project)) as kernel:
        from t_waits import waits  # type: ignore[import-not-found]

        job = waits.delay()
    done = run_nuvom(["history", "recent", "--status", "queued"], project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "No job records match. A job waiting for its first run has no record yet: `nuvom "
        "list jobs --state queued` lists the queue."), done.stdout
    listed = run_nuvom(["list", "jobs", "--state", "queued"], project)
    assert job.id in listed.stdout, listed.stdout + listed.stderr
    kernel.close()


def test_history_of_a_misspelt_task_says_which_names_are_in_use(project: Path) -> None:
    """`--task` takes a task's registered name exactly; a misspelt one matched nothing,
    silently, as a task that never ran does."""
    _one_finished_job(project)
    done = run_nuvom(["history", "recent", "--task", "ecoh"], project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "No job records match. No task named 'ecoh' is in the manifest or the newest records "
        "(did you mean 'echo'?); --task takes a task's registered name."), done.stdout
    done = run_nuvom(["history", "recent", "--task", "echo", "--status", "failed"], project)
    assert done.stdout.strip() == "No job records match.", done.stdout


def test_an_id_with_undecodable_bytes_is_refused_not_a_traceback(project: Path) -> None:
    """``nuvom inspect job $'ab\\xffcd'``: Python reads the byte as a lone surrogate, which
    no store can be asked for; SQLite, the file backend and Redis ended in a
    ``UnicodeEncodeError`` traceback. Such an id was refused at enqueue, so it is unknown."""
    from nuvom_kernel import get_job
    from nuvom_kernel.job import Job

    bad = "ab\udcffcd"
    for backend in ("sqlite", "file"):
        env = {"NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend}
        for command in (["inspect", "job"], ["cancel", "job"], ["retry", "job"]):
            done = run_nuvom([*command, bad], project, **env)
            assert "Traceback" not in done.stderr, (backend, command, done.stderr)
            assert done.returncode == 2, (backend, command, done.stderr)
            assert "holds a NUL or undecodable bytes, which no id does" in done.stderr
        kernel = Kernel(root=project, environ=env)
        with use_kernel(kernel):
            assert get_job(bad).status is JobStatus.UNKNOWN
            assert kernel.cancel(Job(id=bad, task="")) is False


def test_a_job_command_without_job_says_where_the_id_goes(project: Path) -> None:
    """``nuvom cancel <id>`` (Celery's and RQ's shape) said "No such command '<id>'"."""
    for group in ("inspect", "cancel", "retry"):
        done = run_nuvom([group, "abc123"], project)
        assert done.returncode == 2, done.stderr
        assert f"No such command 'abc123'. To {group} a job by its id: nuvom {group} job " \
               "abc123" in done.stderr, done.stderr
    done = run_nuvom(["retry", "faild"], project)  # a subcommand's typo
    assert "No such command 'faild'. (did you mean 'failed'?)" in done.stderr, done.stderr
