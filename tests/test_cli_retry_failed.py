"""``nuvom retry failed`` and where ``nuvom status`` says the stores are, through the real
``nuvom`` script on real stores: SQLite files, file folders, and the Redis and PostgreSQL
servers when their plugins are installed (the ``project`` fixture gives each test a
namespace of its own there)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, chain, get_job
from nuvom_kernel.config import load_config
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord
from tests.helpers import (
    E2E_BACKENDS,
    PERSISTENT_BACKENDS,
    run_nuvom,
    run_worker_until,
    start_worker,
    stop_worker,
    wait_until,
    worker_starts_and_stops,
    write_module,
)

# Task names are unique to this module: every test module shares one registry per session.
TASKS = """
from nuvom_kernel import task


@task(retries=0)
def rf_always_fails(i):
    raise RuntimeError(f"boom {i}")


@task(retries=0)
def rf_other_fails(i):
    raise ValueError(f"other {i}")


@task
def rf_step_ok(x):
    return x
"""

#: More failed jobs than one page of ``retry failed`` (500) and of ``query``'s default (50).
MANY = 2500
WORKFLOW_BACKENDS = [b for b in PERSISTENT_BACKENDS if b in ("sqlite", "file")]


def _env(backend: str) -> dict[str, str]:
    return {"NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend,
            "NUVOM_LOG_LEVEL": "WARNING"}


def _kernel(project: Path, env: dict[str, str]) -> Kernel:
    write_module(project, "rf_tasks", TASKS)
    return Kernel(root=project, environ={**env, "NUVOM_RETRY_DELAY_SECS": "0.05"})


def _fail(kernel: Kernel, task: str, count: int) -> list[str]:
    """Enqueue ``count`` jobs of a failing task and run a worker until all are FAILED."""
    import rf_tasks

    with use_kernel(kernel):
        jobs = getattr(rf_tasks, task).map([(i,) for i in range(count)])
        run_worker_until(kernel, lambda: all(j.refresh().status is JobStatus.FAILED
                                             for j in jobs), f"{count} {task} jobs to fail")
    return [j.id for j in jobs]


def _record(kernel: Kernel, job_id: str) -> JobRecord:
    record = kernel.results.get(job_id)
    assert record is not None, job_id
    return record


# --- nuvom retry failed -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS)
def test_thousands_of_failed_jobs_are_each_rerun_exactly_once(backend: str,
                                                              project: Path) -> None:
    """2,500 FAILED jobs, read newest first a page at a time, while a worker fails each
    re-run again at once: its new FAILED record is the newest, and a command that read the
    first page again would run it a third time (or stop at one page)."""
    env = _env(backend)
    kernel = _kernel(project, env)
    # quiet: every failure logs a line, and a pipe nobody reads would stall the worker
    worker = start_worker(project, {**env, "NUVOM_LOG_LEVEL": "CRITICAL"}, "--workers", "8")
    try:
        import rf_tasks

        with use_kernel(kernel):
            ids = {j.id for j in rf_tasks.rf_always_fails.map([(i,) for i in range(MANY)])}
        wait_until(lambda: kernel.results.counts().get("FAILED") == MANY, timeout=180,
                   what=f"{MANY} jobs to fail")

        done = run_nuvom(["retry", "failed"], project, timeout=600, **env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"re-enqueued {MANY} FAILED job(s)\n" in done.stdout, done.stdout
        assert "not re-enqueued" not in done.stderr, done.stderr

        def settled() -> bool:
            stats = kernel.queue.stats()
            return (kernel.results.counts().get("FAILED") == MANY and not stats.depth
                    and stats.in_flight == 0)

        wait_until(settled, timeout=300, what="every re-run to fail again")
    finally:
        stop_worker(worker)
    runs = Counter((r.status, r.run) for r in (_record(kernel, i) for i in ids))
    assert runs == {(JobStatus.FAILED, 2): MANY}, runs
    kernel.close()


@pytest.mark.parametrize("backend", WORKFLOW_BACKENDS)
def test_workflow_steps_are_skipped_with_the_command_that_reruns_them(backend: str,
                                                                       project: Path) -> None:
    env = _env(backend)
    kernel = _kernel(project, env)
    from rf_tasks import rf_always_fails, rf_step_ok

    with use_kernel(kernel):
        flow = chain(rf_always_fails.si(1), rf_step_ok.si(2)).delay()
        lone = rf_always_fails.delay(3)
        step = flow.nodes[0].id
        run_worker_until(kernel, lambda: get_job(step).status is JobStatus.FAILED
                         and lone.refresh().status is JobStatus.FAILED, "both to fail")

    dry = run_nuvom(["retry", "failed", "--dry-run"], project, **env)
    assert dry.returncode == 0, dry.stderr
    assert lone.id in dry.stdout and step not in dry.stdout, dry.stdout
    assert "dry run: would re-enqueue 1 FAILED job(s); nothing was changed" in dry.stdout
    assert f"skipped 1 workflow step(s) of 1 workflow(s) ({flow.id})" in dry.stdout
    assert _record(kernel, lone.id).status is JobStatus.FAILED, "a dry run changes nothing"

    done = run_nuvom(["retry", "failed"], project, **env)
    assert done.returncode == 0, done.stderr
    assert "re-enqueued 1 FAILED job(s)\n" in done.stdout, done.stdout
    assert f"skipped 1 workflow step(s) of 1 workflow(s) ({flow.id})" in done.stdout
    assert "use `nuvom workflow retry WORKFLOW_ID` for each" in done.stdout
    rerun, kept = _record(kernel, lone.id), _record(kernel, step)
    assert (rerun.status, rerun.run) == (JobStatus.QUEUED, 2)
    assert (kept.status, kept.run) == (JobStatus.FAILED, 1)
    kernel.close()


def test_task_and_limit_choose_the_newest_failures_of_one_task(project: Path) -> None:
    env = _env("sqlite")
    kernel = _kernel(project, env)
    _fail(kernel, "rf_always_fails", 4)
    others = _fail(kernel, "rf_other_fails", 2)
    newest_first = [r.job_id for r in kernel.results.query(
        status=JobStatus.FAILED, task="rf_always_fails", limit=10)]

    dry = run_nuvom(["retry", "failed", "--task", "rf_always_fails", "--limit", "2",
                     "--dry-run"], project, **env)
    assert dry.returncode == 0, dry.stderr
    assert [i for i in newest_first if i in dry.stdout] == newest_first[:2], dry.stdout

    done = run_nuvom(["retry", "failed", "--task", "rf_always_fails", "--limit", "2"],
                     project, **env)
    assert done.returncode == 0, done.stderr
    assert "re-enqueued 2 FAILED job(s) of task 'rf_always_fails'\n" in done.stdout
    states = {i: _record(kernel, i).status for i in [*newest_first, *others]}
    assert [states[i] for i in newest_first] == [JobStatus.QUEUED] * 2 + [JobStatus.FAILED] * 2
    assert {states[i] for i in others} == {JobStatus.FAILED}

    none = run_nuvom(["retry", "failed", "--task", "rf_no_such_task"], project, **env)
    assert none.returncode == 0, none.stderr
    assert "No FAILED jobs of task 'rf_no_such_task': nothing to re-run" in none.stdout
    typo = run_nuvom(["retry", "failed", "--task", "rf_always_fail"], project, **env)
    assert typo.returncode == 0, typo.stderr
    assert "No task named 'rf_always_fail' is in the manifest or the newest records (did " \
           "you mean 'rf_always_fails'?)" in typo.stdout, typo.stdout
    kernel.close()


def test_a_job_that_cannot_be_rerun_is_reported_and_the_others_go_on(project: Path) -> None:
    env = _env("sqlite")
    kernel = _kernel(project, env)
    good = _fail(kernel, "rf_always_fails", 2)
    # the newest record, so it is met first: one without stored options cannot run again
    assert kernel.results.put(JobRecord(job_id="rf-legacy-1", task="rf_legacy",
                                        status=JobStatus.FAILED))

    done = run_nuvom(["retry", "failed"], project, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "re-enqueued 2 FAILED job(s)\n" in done.stdout, done.stdout
    assert ("not re-enqueued: job rf-legacy-1 (rf_legacy): job rf-legacy-1 has no stored "
            "task options") in done.stderr, done.stderr
    assert "could not re-enqueue 1 job(s)" in done.stderr
    assert {_record(kernel, i).status for i in good} == {JobStatus.QUEUED}
    kernel.close()


def test_no_failed_jobs_says_so_and_succeeds(project: Path) -> None:
    done = run_nuvom(["retry", "failed"], project, **_env("sqlite"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "No FAILED jobs: nothing to re-run.\n"


# --- nuvom status: where the stores are -------------------------------------------------------

def _expected_locations(backend: str, project: Path) -> tuple[str, str]:
    if backend == "memory":
        from nuvom_kernel.testing.memory_results import IN_PROCESS

        return IN_PROCESS, IN_PROCESS
    if backend == "sqlite":
        return (str(project / ".nuvom" / "nuvom.db"),) * 2
    if backend == "file":
        return str(project / ".nuvom" / "queue"), str(project / ".nuvom" / "results")
    namespace = load_config(project, environ={}).settings.namespace
    if backend == "redis":
        return (f"redis://127.0.0.1:6379/0 keys nuvom:{namespace}:*",) * 2
    from nuvom_plugins_postgres.settings import schema_name

    return (f", schema {schema_name('nuvom', namespace)}",) * 2  # after the server


@pytest.mark.parametrize("backend", E2E_BACKENDS)
def test_status_says_where_each_store_is(backend: str, project: Path) -> None:
    queue, results = _expected_locations(backend, project)
    shown = run_nuvom(["status", "--json"], project, **_env(backend))
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    if backend == "postgres":  # the DSN is libpq's defaults here: the server it chose
        assert data["queue_location"].startswith("libpq defaults (host=")
        assert data["queue_location"].endswith(queue), data["queue_location"]
        queue = results = data["queue_location"]
    assert (data["queue_location"], data["result_location"]) == (queue, results)
    text = run_nuvom(["status"], project, **_env(backend))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    if queue == results:
        assert lines[1] == f"store (queue and results): {queue}", lines
    else:
        assert lines[1:3] == [f"queue store: {queue}", f"result store: {results}"], lines


def test_status_from_the_wrong_folder_shows_the_store_it_opened(project: Path) -> None:
    """The operator's case: a mistyped NUVOM_DATA_DIR (or another folder) opened a new,
    empty store, and status looked like a healthy, idle deployment."""
    env = _env("sqlite")
    kernel = _kernel(project, env)
    _fail(kernel, "rf_always_fails", 1)
    right = run_nuvom(["status"], project, **env)
    assert right.returncode == 0, right.stderr
    assert f"store (queue and results): {project / '.nuvom' / 'nuvom.db'}\n" in right.stdout
    assert "note:" not in right.stdout, right.stdout

    wrong = run_nuvom(["status"], project, **env, NUVOM_DATA_DIR=".nuovm")
    assert wrong.returncode == 0, wrong.stderr
    assert f"store (queue and results): {project / '.nuovm' / 'nuvom.db'}\n" in wrong.stdout
    assert "note: these stores hold no jobs, records or live workers" in wrong.stdout
    assert "NUVOM_DATA_DIR" in wrong.stdout

    sub = project / "app"  # a subfolder: a store of its own, and the project named
    sub.mkdir()
    (project / ".nuvom_plugins.toml").touch()
    below = run_nuvom(["status"], sub, **env)
    assert below.returncode == 0, below.stderr
    assert f"{project}, a folder above this one, holds a Nuvom project" in below.stdout, \
        below.stdout
    own = project / "own"  # a project of its own below another: no mistake, no hint
    own.mkdir()
    (own / ".nuvom_plugins.toml").touch()
    mine = run_nuvom(["inspect", "job", "j-1"], own, **env)
    assert mine.returncode == 1 and "a folder above" not in mine.stderr, mine.stderr
    lost = run_nuvom(["inspect", "job", "j-1"], sub, **env)
    assert lost.returncode == 1, lost.stderr
    assert f"{project}, a folder above it, holds a Nuvom project: run it there" \
        in lost.stderr, lost.stderr
    out = worker_starts_and_stops(sub, {**env, "NUVOM_LOG_LEVEL": "INFO"}, "--workers", "1")
    assert f"A folder above this one, {project}, holds a Nuvom project" in out, out
    assert f"start it there (cd {project})" in out, out

    apart = run_nuvom(["status", "--json"], project, **env,
                      NUVOM_PLUGINS__SQLITE__RESULTS_PATH="records/r.db")
    data = json.loads(apart.stdout)
    assert data["result_location"] == str(project / "records" / "r.db"), data
    assert data["queue_location"] == str(project / ".nuvom" / "nuvom.db")
    kernel.close()


def test_status_shows_two_stores_that_report_no_location_apart(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two backends without a ``location`` were shown as one store ("store (queue and
    results): not reported by the backend"), as if the queue and the results shared it."""
    from nuvom_kernel.cli.jobs import _echo_locations

    _echo_locations(None, None)
    assert capsys.readouterr().out.splitlines() == [
        "queue store: not reported by the backend",
        "result store: not reported by the backend"]
