"""``nuvom list jobs`` and ``nuvom purge queue`` through the real ``nuvom`` script on real
stores: SQLite files, file folders, and the Redis and PostgreSQL servers when their plugins
are installed (the ``project`` fixture gives each test a namespace of its own there).

A job "held by a worker" is a lease this test process claims on the same store: to the
store it is exactly a worker's claim."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from nuvom_kernel import JobCancelledError, JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import Message
from tests.helpers import NUVOM, PERSISTENT_BACKENDS, run_nuvom, user_env, write_module

# Task names are unique to this module: every test module shares one registry per session.
TASKS = """
from nuvom_kernel import task


@task
def lq_add(x):
    return x + 1


@task
def lq_other(x):
    return x


@task(queue="pq-a")
def pq_doomed(x):
    return x


@task(queue="pq-a")
def pq_later(x):
    return x


@task(queue="pq-b")
def pq_kept(x):
    return x
"""


def _env(backend: str) -> dict[str, str]:
    return {"NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend,
            "NUVOM_LOG_LEVEL": "WARNING"}


def _kernel(project: Path, env: dict[str, str]) -> Kernel:
    write_module(project, "lq_tasks", TASKS)
    return Kernel(root=project, environ=env)


def _listed(project: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    done = run_nuvom(["list", "jobs", "--json", *args], project, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout, parse_constant=lambda name: pytest.fail(
        f"{name} is not JSON"))
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS)
def test_list_jobs_shows_every_state_oldest_first_and_pages(backend: str,
                                                            project: Path) -> None:
    env = _env(backend)
    kernel = _kernel(project, env)
    import lq_tasks

    with use_kernel(kernel):
        held = lq_tasks.lq_add.apply_async(args=(0,), queue="lq-run")
        failed = lq_tasks.lq_add.apply_async(args=(1,), queue="lq-run")
        ready = [lq_tasks.lq_add.delay(i) for i in range(3)]
        later = lq_tasks.lq_other.apply_async(args=(9,), queue="lq-later", delay_secs=300)
    leases = {le.id: le for le in kernel.queue.claim(2, ["lq-run"])}
    assert sorted(leases) == sorted([held.id, failed.id])
    assert kernel.queue.retry(leases[failed.id], delay_secs=300)

    data = _listed(project, env)
    jobs = {j["id"]: j for j in data["jobs"]}  # type: ignore[union-attr]
    assert [j["id"] for j in data["jobs"]] == \
        [held.id, failed.id, *(j.id for j in ready), later.id], "oldest first"  # type: ignore[union-attr]
    assert data["next"] is None
    assert (jobs[held.id]["state"], jobs[held.id]["deliveries"]) == ("RUNNING", 1)
    assert jobs[held.id]["lease_expires_at"] is not None
    assert (jobs[failed.id]["state"], jobs[failed.id]["failures"]) == ("RETRYING", 1)
    assert (jobs[later.id]["state"], jobs[later.id]["task"]) == ("QUEUED", "lq_other")
    assert {jobs[j.id]["state"] for j in ready} == {"QUEUED"}

    running = _listed(project, env, "--state", "running")
    assert [j["id"] for j in running["jobs"]] == [held.id]  # type: ignore[union-attr]
    waiting = _listed(project, env, "--state", "queued", "--state", "retrying",
                      "--queue", "lq-run")
    assert [j["id"] for j in waiting["jobs"]] == [failed.id]  # type: ignore[union-attr]

    first = run_nuvom(["list", "jobs", "--queue", "default", "--limit", "2"], project, **env)
    assert first.returncode == 0, first.stderr
    assert [j.id for j in ready if j.id in first.stdout] == [ready[0].id, ready[1].id]
    more = first.stdout.strip().splitlines()[-1]
    assert more.startswith("more: nuvom list jobs --after "), first.stdout
    cursor = shlex.split(more.partition("more: ")[2])[4]
    rest = run_nuvom(["list", "jobs", "--queue", "default", "--limit", "2", "--after",
                      cursor], project, **env)
    assert rest.returncode == 0, rest.stderr
    assert ready[2].id in rest.stdout and ready[1].id not in rest.stdout
    assert "more:" not in rest.stdout, "a short page is the last one"
    for line in ("LQ_ADD", "RETRYING", "in 5 min"):  # the table: states, due times
        assert line.lower() in run_nuvom(["list", "jobs"], project, **env).stdout.lower()
    kernel.close()


#: More waiting jobs than one page of ``purge queue`` (1,000).
MANY = 1200


@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS)
def test_purge_queue_cancels_every_waiting_job_and_leaves_held_ones(backend: str,
                                                                   project: Path) -> None:
    env = _env(backend)
    kernel = _kernel(project, env)
    import lq_tasks

    with use_kernel(kernel):
        doomed = lq_tasks.pq_doomed.map([(i,) for i in range(MANY)])
        kept = lq_tasks.pq_kept.map([(i,) for i in range(2)])
        delayed = lq_tasks.pq_later.apply_async(args=(5,), delay_secs=300)
    [lease] = kernel.queue.claim(1, ["pq-a"])  # a worker's: it must be left alone

    dry = run_nuvom(["purge", "queue", "pq-a", "--dry-run"], project, **env)
    assert dry.returncode == 0, dry.stderr
    assert f"dry run: would cancel {MANY} waiting job(s) of queue(s) 'pq-a'" in dry.stdout
    assert "pq_later   1" in dry.stdout and f"pq_doomed  {MANY - 1}" in dry.stdout, dry.stdout
    refused = run_nuvom(["purge", "queue", "pq-a"], project, **env)  # no terminal: no "yes"
    assert refused.returncode == 1 and "Aborted" in refused.stderr, refused.stderr
    assert kernel.queue.qsize(["pq-a"]) == MANY, "a dry run and a refusal change nothing"

    done = run_nuvom(["purge", "queue", "pq-a", "--yes"], project, timeout=300, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cancelled {MANY} waiting job(s) of queue(s) 'pq-a'\n" in done.stdout
    assert "1 job(s) held by workers were left to finish" in done.stdout, done.stdout
    assert kernel.queue.qsize(["pq-a"]) == 0
    assert kernel.queue.qsize(["pq-b"]) == 2, "another queue is untouched"
    states = {kernel.results.get(j.id).status for j in [*doomed, delayed]  # type: ignore[union-attr]
              if j.id != lease.id}
    assert states == {JobStatus.CANCELLED}, "each is recorded, so a waiter is told"
    with use_kernel(kernel), pytest.raises(JobCancelledError):
        delayed.get(timeout=5)
    assert kernel.queue.ack(lease) is True, "the held job was not touched"
    assert {j.refresh().status for j in kept} == {JobStatus.QUEUED}
    # a misspelt queue: nothing to cancel, said with the queue meant (it said "cancelled 0")
    # (and in a dry run, and a list: each said 0 jobs, as of a queue emptied)
    note = ("note: no task of the manifest routes jobs to queue 'pq-bb' and no job waits in "
            "it (did you mean 'pq-b'?)")
    for args in (["purge", "queue", "pq-bb", "--yes"], ["purge", "queue", "pq-bb",
                                                        "--dry-run"],
                 ["list", "jobs", "--queue", "pq-bb"]):
        typo = run_nuvom(args, project, **env)
        assert typo.returncode == 0, typo.stderr
        assert note in typo.stdout, (args, typo.stdout)
    kernel.close()


@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS)
def test_a_purge_takes_the_jobs_enqueued_before_it_began(backend: str,
                                                        project: Path) -> None:
    """It chased the newest: jobs enqueued while it ran were cancelled page after page, and
    a purge behind a producer faster than its cancels could not end."""
    from nuvom_kernel.cli.queued import _waiting

    kernel = _kernel(project, _env(backend))
    import lq_tasks

    with use_kernel(kernel):
        before = lq_tasks.pq_doomed.map([(i,) for i in range(MANY)])  # more than a page
        began = time.time()
        while time.time() <= began:  # the next job's created_at is strictly later
            pass
        lq_tasks.pq_doomed.map([(i,) for i in range(5)])
    taken = [job.id for job in _waiting(kernel, ["pq-a"], until=began)]
    assert sorted(taken) == sorted(job.id for job in before)
    assert len(list(_waiting(kernel, ["pq-a"]))) == MANY + 5
    kernel.close()


def test_a_malformed_cursor_says_where_a_cursor_comes_from(project: Path) -> None:
    done = run_nuvom(["list", "jobs", "--after", "not-a-cursor"], project, **_env("sqlite"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "malformed page cursor 'not-a-cursor'" in done.stderr
    assert "copy it from the line `nuvom list jobs` printed" in done.stderr


def test_a_limit_past_a_page_is_refused_in_one_line(project: Path) -> None:
    """A limit no store's integer holds ended in an OverflowError traceback (SQLite) or
    ``bigint out of range`` (PostgreSQL)."""
    done = run_nuvom(["list", "jobs", "--limit", "9223372036854775807"], project,
                     **_env("sqlite"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Invalid value for '--limit'" in done.stderr and "Traceback" not in done.stderr


def test_an_empty_queue_says_so(project: Path) -> None:
    done = run_nuvom(["list", "jobs", "--queue", "nowhere"], project, **_env("sqlite"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("No jobs in queue(s) 'nowhere' (`nuvom history recent` lists "
                           "finished ones).\n")


def test_the_next_page_command_runs_as_printed_whatever_the_job_ids(project: Path) -> None:
    """The "more:" line is a command to paste into a shell: a job id may hold a quote, a
    dollar sign, a backtick or a tab, and the cursor carries the id (it was printed inside
    single quotes unescaped, which the shell refused)."""
    env = _env("sqlite")
    kernel = _kernel(project, env)
    import lq_tasks

    ids = ["o'brien-1", "$HOME and `x`", "tab\there"]
    with use_kernel(kernel):
        for job_id in ids:
            lq_tasks.lq_add.apply_async(args=(1,), job_id=job_id, queue="lq-odd")
    shell_env = {**user_env(**env), "PATH": f"{NUVOM.parent}:/usr/bin:/bin"}

    def shell(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=project, env=shell_env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    seen: list[str] = []
    after = ""  # the next page's option, as the last page printed it
    for _ in range(len(ids) + 1):
        page = json.loads(shell(f"nuvom list jobs --queue lq-odd --limit 1 --json {after}"))
        seen += [job["id"] for job in page["jobs"]]
        more = [line for line in shell(f"nuvom list jobs --queue lq-odd --limit 1 {after}")
                .splitlines() if line.startswith("more: ")]
        if not more:
            break
        after = more[0].removeprefix("more: nuvom list jobs ").partition(" (with the same")[0]
    assert seen == ids, "each job once, in the order they were enqueued"
    kernel.close()


def test_a_queue_backend_that_cannot_list_says_so_in_one_line(project: Path) -> None:
    (project / "blindq.py").write_text(
        "from nuvom_kernel.backends import QueueBackend\n"
        "from nuvom_kernel.testing.stubs import StubQueue\n\n\n"
        "class BlindQueue(StubQueue):\n"
        "    name = 'blindq'\n"
        "    browse = QueueBackend.browse  # the SPI's default: not implemented\n")
    (project / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["blindq:BlindQueue"]\n')
    for args in (["list", "jobs"], ["purge", "queue", "default", "--yes"]):
        done = run_nuvom(args, project, NUVOM_QUEUE_BACKEND="blindq")
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == (
            "Error: queue backend 'blindq' cannot list its messages: `nuvom list jobs` and "
            "`nuvom purge queue` need a queue backend that lists its messages (memory, "
            "file, sqlite, redis and postgres do); `nuvom status` still counts them\n")


def test_a_time_no_calendar_holds_is_listed_as_stored(project: Path) -> None:
    """A hand-edited ``created_at`` made ``nuvom list jobs`` a traceback, and ``--json``
    printed ``Infinity``, which JSON parsers refuse."""
    env = _env("sqlite")
    kernel = _kernel(project, env)
    kernel.queue.enqueue_many([
        Message(id="odd-inf", body=b"{}", queue="odd", task="t", created_at=float("inf")),
        Message(id="odd-ms", body=b"{}", queue="odd", task="t", created_at=1.8e12)])
    table = run_nuvom(["list", "jobs", "--queue", "odd"], project, **env)
    assert table.returncode == 0, table.stderr
    assert "1800000000000.0" in table.stdout and " inf " in table.stdout, table.stdout
    data = _listed(project, env, "--queue", "odd")  # strict JSON: no Infinity
    assert [j["created_at"] for j in data["jobs"]] == [1.8e12, "inf"]  # type: ignore[union-attr]
    kernel.close()


def test_control_characters_in_a_job_id_are_shown_escaped_in_one_row(project: Path) -> None:
    """A tab or newline in a job id split its row and shifted the columns; an escape
    sequence reached the operator's terminal. The table shows them escaped (``--json``
    keeps the id exact)."""
    env = _env("sqlite")
    kernel = _kernel(project, env)
    import lq_tasks

    ids = ["tab\there", "line\nbreak", "red\x1b[31mtext"]
    with use_kernel(kernel):
        for job_id in ids:
            lq_tasks.lq_add.apply_async(args=(1,), job_id=job_id, queue="lq-ctl")
    done = run_nuvom(["list", "jobs", "--queue", "lq-ctl"], project, **env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + len(ids), f"one header and one row per job:\n{done.stdout}"
    assert "\x1b" not in done.stdout and "\t" not in done.stdout
    for line, shown in zip(lines[1:], ["tab\\there", "line\\nbreak", "red\\x1b[31mtext"],
                           strict=True):
        assert shown in line
    assert [job["id"] for job in _listed(project, env, "--queue", "lq-ctl")["jobs"]] == ids
    kernel.close()
