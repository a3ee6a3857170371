"""``nuvom enqueue TASK``: one job from the command line, found as a worker finds it (the
discovery manifest), with the task's own options and its arguments checked, through the
real ``nuvom`` script and a real worker on the default SQLite backend."""

from __future__ import annotations

import json
from pathlib import Path

from nuvom_kernel import JobStatus, get_job
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import read_until_started, run_nuvom, start_worker, stop_worker, write_module

TASKS = """
from nuvom_kernel import task


@task(retries=2, queue="mail")
def enq_send(to, subject="hi"):
    return {"to": to, "subject": subject}


@task
def enq_boom():
    raise ValueError("enq_boom went off")


@task(unique=True)
def enq_refresh(x, y=0):
    return x
"""


def _project(project: Path) -> Path:
    write_module(project, "enq_tasks", TASKS)
    done = run_nuvom(["discover", "tasks"], project)
    assert done.returncode == 0, done.stderr
    return project


def test_a_job_enqueued_by_name_runs_with_the_tasks_options_and_wait_prints_it(
        project: Path) -> None:
    _project(project)
    worker = start_worker(project, {}, "--workers", "1")
    try:
        seen = read_until_started(worker)
        # where its store is, said as it starts (a path setting creates one silently)
        store = project / ".nuvom" / "nuvom.db"
        assert any(f" started: thread pool of 1, queues=*, backend=sqlite ({store})" in line
                   for line in seen), "".join(seen)
        done = run_nuvom(["enqueue", "enq_send", "--args", '["ops@example.com"]',
                          "--kwargs", '{"subject": "resend"}', "--wait", "60"], project)
        assert done.returncode == 0, done.stderr
        first, result = done.stdout.splitlines()
        assert first.startswith("enqueued job ") and first.endswith("(enq_send) on queue "
                                                                    "'mail'"), first
        assert json.loads(result) == {"to": "ops@example.com", "subject": "resend"}

        failed = run_nuvom(["enqueue", "enq_boom", "--wait", "60"], project)
        assert failed.returncode == 1, failed.stderr
        assert "ValueError" in failed.stderr and "enq_boom went off" in failed.stderr
        failed_id = failed.stdout.split()[2]
        assert failed.stderr.count(failed_id) == 1, failed.stderr  # "job X: job X failed"
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out
    job_id = first.split()[2]
    with use_kernel(Kernel(root=project)):
        job = get_job(job_id)
        assert job.status is JobStatus.SUCCEEDED
        assert (job.options.retries, job.queue) == (2, "mail"), "the task's own options"


def test_bad_arguments_an_unknown_task_and_no_outcome_in_time_are_said_clearly(
        project: Path) -> None:
    _project(project)
    for args, code, message in [
            (["enq_send"], 1, "task 'enq_send' cannot take these arguments: missing a "
                              "required argument: 'to'. Its signature is "
                              "enq_send(to, subject='hi'); nothing was enqueued"),
            (["enq_send", "--args", '{"to": 1}'], 2, "must be a JSON array, got dict"),
            (["enq_send", "--args", "[1,"], 2, "not JSON"),
            (["enq_send", "--kwargs", "[1]"], 2, "must be a JSON object, got list"),
            (["enq_nothing"], 1, "unknown task 'enq_nothing'"),
            (["enq_sned"], 1, "unknown task 'enq_sned' (did you mean 'enq_send'?)"),
            (["enq_mod.enq_send"], 1, "unknown task 'enq_mod.enq_send' (did you mean "
                                      "'enq_send'?)"),  # Celery's module.task name
            # the options as options (exit 2), not in apply_async's words
            (["enq_send", "--args", '["x"]', "--delay", "-5"], 2,
             "Invalid value for '--delay': '-5' must be a finite number of seconds >= 0"),
            (["enq_send", "--args", '["x"]', "--queue", "a,b"], 2,
             "Invalid value for '--queue': the queue name 'a,b' holds a comma"),
            (["enq_send", "--args", '["x"]', "--job-id", ""], 2,
             "Invalid value for '--job-id': must be a non-empty string"),
            (["enq_send", "--args", '["x"]', "--priority", "99999999999"], 2,
             "Invalid value for '--priority': 99999999999 is not in the range"),
            (["enq_send", "--args", '["x"]', "--wait", "nan"], 2,
             "Invalid value for '--wait': 'nan' must be a finite number")]:
        done = run_nuvom(["enqueue", *args], project)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    with use_kernel(Kernel(root=project)) as kernel:
        assert kernel.queue.qsize() == 0, "a refused call stores nothing"

    late = run_nuvom(["enqueue", "enq_send", "--args", '["x"]', "--delay", "3600",
                      "--wait", "0.5"], project)
    assert late.returncode == 2, late.stderr
    assert "has no outcome after 0.5 s" in late.stderr
    # no worker runs: said (it said only that the job had no outcome)
    assert f"no live worker runs on this store ({project / '.nuvom' / 'nuvom.db'}): start " \
        "one with `nuvom runworker`" in late.stderr, late.stderr
    with use_kernel(Kernel(root=project)) as kernel:
        assert kernel.queue.stats().delayed == 1


def test_a_task_whose_module_fails_to_import_is_said_with_the_import_error(
        project: Path) -> None:
    """The manifest named the task's module, whose import failed (a missing dependency):
    the error said "no entry of manifest.json defines it" and sent the user back to
    ``nuvom discover tasks``, which had just succeeded, hiding the import error."""
    write_module(project, "enq_broken", "import enq_not_installed\n" + TASKS.replace(
        "def enq_send", "def enq_sendb").replace("def enq_boom", "def enq_boomb"))
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    done = run_nuvom(["enqueue", "enq_sendb", "--args", '["x"]'], project)
    assert done.returncode == 1, done.stderr
    assert ("task 'enq_sendb' cannot be loaded: importing 'enq_broken' failed: "
            "ModuleNotFoundError(\"No module named 'enq_not_installed'\")") in done.stderr
    assert "manifest.json defines it" not in done.stderr
    assert "Traceback" not in done.stderr
    with use_kernel(Kernel(root=project)) as kernel:
        assert kernel.queue.qsize() == 0

    # the module imports now, but the task was renamed since the manifest was written
    write_module(project, "enq_broken", TASKS)
    stale = run_nuvom(["enqueue", "enq_sendb", "--args", '["x"]'], project)
    assert stale.returncode == 1, stale.stderr
    assert ("task 'enq_sendb' cannot be loaded: module 'enq_broken' has no task named "
            "'enq_sendb'. The manifest is older than the code: run `nuvom discover tasks`"
            ) in stale.stderr, stale.stderr


def test_an_existing_job_id_and_a_result_with_non_string_keys_are_said_as_they_are(
        project: Path) -> None:
    """A second ``--job-id order-42`` said "enqueued" and ``--wait`` printed the first job's
    result as if it were this call's; a result ``{(1, 2): "a"}`` (non-string keys are
    supported values) ended ``--wait`` in a traceback, exit 1."""
    write_module(project, "enq_more", TASKS + '''

@task
def enq_pairs():
    return {(1, 2): "a", "n": [1, (2, 3)]}
''')
    assert run_nuvom(["discover", "tasks"], project).returncode == 0
    worker = start_worker(project, {}, "--workers", "1")
    try:
        assert any(" started: " in line for line in read_until_started(worker))
        pairs = run_nuvom(["enqueue", "enq_pairs", "--wait", "60"], project)
        assert pairs.returncode == 0, pairs.stderr
        assert json.loads(pairs.stdout.splitlines()[1]) == {"(1, 2)": "a", "n": [1, [2, 3]]}
        first = run_nuvom(["enqueue", "enq_send", "--args", '["alice"]', "--job-id",
                           "order-42", "--wait", "60"], project)
        assert first.returncode == 0, first.stderr
        again = run_nuvom(["enqueue", "enq_send", "--args", '["bob"]', "--job-id",
                           "order-42"], project)
    finally:
        stop_worker(worker)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("job order-42 (enq_send) exists already, SUCCEEDED: "
                                   "nothing was enqueued"), again.stdout


def test_an_equal_call_of_a_unique_task_says_nothing_was_enqueued(project: Path) -> None:
    """It printed "enqueued job ..." for the job an equal call had enqueued already."""
    _project(project)
    first = run_nuvom(["enqueue", "enq_refresh", "--args", "[7]"], project)
    assert first.returncode == 0 and first.stdout.startswith("enqueued job unique."), first
    job_id = first.stdout.split()[2]
    for how in (["--args", "[7]"], ["--kwargs", '{"x": 7}']):
        again = run_nuvom(["enqueue", "enq_refresh", *how], project)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"job {job_id} (enq_refresh) exists already, QUEUED: "
                                       "an equal call of this unique task is not finished, "
                                       "so nothing was enqueued"), again.stdout
    other = run_nuvom(["enqueue", "enq_refresh", "--args", "[8]"], project)
    assert other.stdout.startswith("enqueued job unique.") and job_id not in other.stdout
    with use_kernel(Kernel(root=project)) as kernel:
        assert kernel.queue.qsize() == 2


def test_a_queue_no_live_worker_serves_is_noted(project: Path) -> None:
    """A misspelt or unserved queue was taken silently, and `--wait` timed out with no hint
    why; with no worker running nothing is said (one may start later)."""
    _project(project)
    quiet = run_nuvom(["enqueue", "enq_send", "--args", '["a"]', "--queue", "nosuch"],
                      project)
    assert quiet.returncode == 0 and "note:" not in quiet.stderr, quiet.stderr
    worker = start_worker(project, {}, "--workers", "1", "--queue", "mail")
    try:
        seen = read_until_started(worker)
        assert any(" started: " in line for line in seen), "".join(seen)
        served = run_nuvom(["enqueue", "enq_send", "--args", '["b"]'], project)  # its "mail"
        assert served.returncode == 0 and "note:" not in served.stderr, served.stderr
        unserved = run_nuvom(["enqueue", "enq_send", "--args", '["c"]', "--queue", "mial"],
                             project)
        assert unserved.returncode == 0, unserved.stderr
        assert ("note: no live worker serves queue 'mial' (they serve: mail); the job waits "
                "for one that does (nuvom runworker --queue mial)") in unserved.stderr
        # the name looks misspelt too (it was taken without a word, with no worker or any)
        assert ("note: no task of the manifest routes jobs to queue 'mial' and no job waited "
                "in it (did you mean 'mail'?)") in unserved.stderr, unserved.stderr
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out


def test_the_memory_backend_is_refused_where_the_job_would_end_with_the_command(
        project: Path) -> None:
    """`nuvom enqueue` with the memory queue said "enqueued", the job ended with the process,
    and `--wait` said `nuvom inspect job` would show it later; a worker on it started
    without a word about serving only its own process."""
    _project(project)
    memory = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory"}
    done = run_nuvom(["enqueue", "enq_send", "--args", '["x"]', "--wait", "1"], project,
                     **memory)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "queue backend 'memory' keeps its jobs in this process only, so the job would " \
           "end with this command" in done.stderr and "enqueued" not in done.stdout
    retried = run_nuvom(["retry", "job", "01a24ee459b02f84a74b6c7c3d44becc"], project, **memory)
    assert retried.returncode == 1 and "so its next run would end with this command" in \
        retried.stderr, retried.stdout + retried.stderr
    all_failed = run_nuvom(["retry", "failed"], project, **memory)
    assert all_failed.returncode == 1 and "so their next runs would end with this command" \
        in all_failed.stderr, all_failed.stdout + all_failed.stderr
    waited = run_nuvom(["enqueue", "enq_send", "--args", '["x"]', "--wait", "1"], project,
                       NUVOM_RESULT_BACKEND="memory")
    assert waited.returncode == 1 and "result backend 'memory' keeps its records in this " \
        "process only, so --wait would never see" in waited.stderr, waited.stderr
    with use_kernel(Kernel(root=project)) as kernel:
        assert kernel.queue.qsize() == 0, "refused before anything was enqueued"
    worker = start_worker(project, memory, "--workers", "1")
    try:
        seen = "".join(read_until_started(worker))
    finally:
        stop_worker(worker)
    assert "queue backend 'memory' keeps its jobs in this process only: this worker runs " \
           "what its own tasks and schedules enqueue" in seen, seen
    assert "result backend 'memory' keeps its records in this process only" in seen, seen


def test_an_id_held_by_a_quarantined_message_is_not_said_enqueued(project: Path) -> None:
    """The file queue keeps a quarantined file's id taken while the file is there when its
    name did not parse: ``nuvom enqueue --job-id`` of that id stored nothing and said
    "enqueued job <id> ()", exit 0."""
    from tests.helpers import run_worker_until

    _project(project)
    env = {"NUVOM_QUEUE_BACKEND": "file", "NUVOM_RESULT_BACKEND": "file"}
    kernel = Kernel(root=project, environ=env)
    with use_kernel(kernel):
        from enq_tasks import enq_boom

        enq_boom.apply_async(job_id="held-1")
        ready = kernel.queue.path / "ready"  # type: ignore[attr-defined]
        [entry] = list(ready.iterdir())
        entry.rename(ready / "no-name-of-a-message")  # a name that does not parse
        run_worker_until(kernel, lambda: kernel.queue.stats().quarantined,
                         "the file quarantined")
    kernel.close()
    done = run_nuvom(["enqueue", "enq_boom", "--job-id", "held-1"], project, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "enqueued" not in done.stdout, done.stdout
    assert "job id 'held-1' is taken in the queue backend, but no job of it can be read" \
        in done.stderr, done.stderr
