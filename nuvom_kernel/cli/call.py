"""Internal plugin: ``nuvom enqueue TASK``, one job from the command line.

Why: an operator who must run a task now (a backfill, a resend, a smoke test after a
deploy) had to write a Python snippet that imports the task and calls ``.delay()``;
Celery has ``celery call`` for this. The task is found as a worker finds it, by the
discovery manifest, so its ``@task`` options travel with the job exactly as from code, and
the arguments are checked against its signature before anything is stored.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from nuvom_kernel import hookimpl
from nuvom_kernel.call_checks import PRIORITY_MAX, PRIORITY_MIN, check_id, check_queue
from nuvom_kernel.cli.output import Seconds, queue_typo, refuse_in_process
from nuvom_kernel.errors import JobCancelledError, JobFailedError, NuvomError, UnknownTaskError
from nuvom_kernel.job import live_workers, queued_hint, serving
from nuvom_kernel.models import JobStatus


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    cli.add_command(enqueue_command)


def _json(value: str | None, option: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}): {value!r:.80}", param_hint=option
                                 ) from None
    if not isinstance(parsed, kind):
        example = "'[2, 3]'" if kind is list else "'{\"y\": 3}'"
        raise click.BadParameter(f"must be a JSON {'array' if kind is list else 'object'}, "
                                 f"got {type(parsed).__name__}: e.g. {option} {example}",
                                 param_hint=option)
    return parsed


def _queue(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--queue`` checked as ``apply_async`` checks it, refused as the option's error (its
    words named ``apply_async(queue=...)``, and the exit status was 1, not click's 2)."""
    try:
        return None if value is None else check_queue(value, "--queue")
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--queue: ")) from None


def _job_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--job-id`` checked as ``apply_async`` checks it, refused as the option's error."""
    try:
        return check_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("job_id ")) from None


@click.command(name="enqueue")
@click.argument("task_name", metavar="TASK")
@click.option("--args", "args_json", metavar="JSON", default=None,
              help="Positional arguments as a JSON array, e.g. '[2, 3]'.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", default=None,
              help="Keyword arguments as a JSON object, e.g. '{\"y\": 3}'.")
@click.option("--queue", default=None, callback=_queue, help="Another queue than the task's own.")
@click.option("--priority", type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX), default=None,
              help="Higher runs first.")
@click.option("--delay", "delay_secs", type=Seconds(zero_ok=True), default=0.0,
              show_default=True, help="Seconds before the job may start.")
@click.option("--job-id", default=None, callback=_job_id,
              help="An id of your own: enqueuing an id that exists creates nothing.")
@click.option("--wait", "wait_secs", type=Seconds(zero_ok=True), default=None,
              help="Wait this many seconds for the outcome and print the result as JSON "
                   "(exit 1 if the job failed or was cancelled, 2 if none came in time).")
def enqueue_command(task_name: str, args_json: str | None, kwargs_json: str | None,
                    queue: str | None, priority: int | None, delay_secs: float,
                    job_id: str | None, wait_secs: float | None) -> None:
    """Enqueue one job of TASK (its registered name, as `nuvom discover tasks` lists it)
    with the task's own options, and print its id."""
    kernel = click.get_current_context().find_root().obj
    args, kwargs = _json(args_json, "--args", list), _json(kwargs_json, "--kwargs", dict)
    refuse_in_process(kernel, "the job", waits=wait_secs is not None)
    if "" not in sys.path:  # the project directory holds the task modules
        sys.path.insert(0, "")
    kernel.registry.load_manifest(kernel.data_dir, kernel.config.root)
    try:
        task = kernel.registry.resolve(task_name)
    except UnknownTaskError as exc:
        if exc.tried:  # the manifest names its module, which failed or lacks the task
            raise click.ClickException(
                f"task {task_name!r} cannot be loaded: {exc.tried}. " + (
                    "Fix that module (importing it in the project folder shows the whole "
                    "traceback), or run `nuvom discover tasks` if the task moved"
                    if exc.import_failed else
                    "The manifest is older than the code: run `nuvom discover tasks`, then "
                    "`nuvom list tasks` for the names")) from exc
        from nuvom_kernel.hints import did_you_mean

        # (a Celery-style `module.task` name is matched by its last part too)
        close = did_you_mean(task_name.rpartition(".")[2], kernel.registry.names(), repr) \
            or did_you_mean(task_name, kernel.registry.names(), repr)
        raise click.ClickException(
            f"unknown task {task_name!r}{close}: no imported module and no entry of "
            f"{kernel.data_dir / 'manifest.json'} defines it. Run `nuvom discover tasks` in "
            "the project folder, then `nuvom list tasks` for the names") from exc
    from nuvom_kernel.kernel import get_job  # as the other job commands: not at import

    # before the push, which makes the queue one a job waits in: `--queue defualt` was
    # taken without a word while the workers served 'default'
    typo = queue_typo(kernel, queue) if queue is not None else ""
    try:
        before = None if job_id is None else get_job(job_id).status
        called_at = time.time()
        job = task.apply_async(args, kwargs, delay_secs=delay_secs, queue=queue,
                               priority=priority, job_id=job_id)
    except (NuvomError, TypeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if before not in (None, JobStatus.UNKNOWN):  # a job id names one job for its life
        click.echo(f"job {job.id} ({job.task}) exists already, {before.value}: nothing was "
                   "enqueued (a job id names one job for its life; `nuvom retry job` runs a "
                   "finished one again)")
    elif job_id is not None and kernel.state_of(job)[0] is JobStatus.UNKNOWN:
        # the push stored nothing (the id is taken), and no job of it can be read: it said
        # "enqueued job <id> ()", exit 0
        raise click.ClickException(
            f"job id {job_id!r} is taken in the queue backend, but no job of it can be read, "
            "so nothing was enqueued: a quarantined message may hold the id (`nuvom status` "
            "lists quarantined entries; the backend's README says how to free it)")
    elif job_id is None and task.options.unique and _older(job.id, called_at):
        # the equal call's job stands for this one: "enqueued" said a job was added
        click.echo(f"job {job.id} ({job.task}) exists already, {job.refresh().status.value}: "
                   "an equal call of this unique task is "
                   + ("not finished" if task.options.unique_for is None else
                      "not finished, or finished within its unique_for")
                   + ", so nothing was enqueued")
    else:
        click.echo(f"enqueued job {job.id} ({job.task}) on queue {job.queue!r}")
        if typo:
            click.echo(f"note: no task of the manifest routes jobs to queue {job.queue!r} "
                       f"and no job waited in it{typo}", err=True)
        _say_if_unserved(kernel, job.queue)
    if wait_secs is None:
        return
    try:
        result = job.get(timeout=wait_secs)
    except TimeoutError:
        # why, where the result backend knows its live workers (it said only "no outcome")
        hint = queued_hint(job.queue, kernel) if job.status is JobStatus.QUEUED else None
        click.echo(f"job {job.id} has no outcome after {wait_secs:g} s "
                   f"(`nuvom inspect job {job.id}` shows it later){hint or ''}", err=True)
        raise SystemExit(2) from None
    except (JobFailedError, JobCancelledError) as exc:
        click.echo(str(exc), err=True)  # it names the job (`job <id> failed: ...`)
        raise SystemExit(1) from None
    click.echo(json.dumps(_jsonable(result)))


def _say_if_unserved(kernel: Any, queue: str) -> None:
    """A note when live workers run and none serves ``queue``: a misspelt ``--queue`` (or a
    task's) was taken silently, and ``--wait`` then timed out with no hint why. Nothing is
    said where the result backend keeps no heartbeats, or no worker runs (it may start
    later)."""
    workers = live_workers(kernel)
    if not workers or serving(workers, queue):
        return
    served = sorted({q for w in workers for q in w.queues})
    click.echo(f"note: no live worker serves queue {queue!r} (they serve: "
               f"{', '.join(served)}); the job waits for one that does (nuvom runworker "
               f"--queue {queue})", err=True)


def _older(job_id: str, called_at: float) -> bool:
    """Whether ``job_id``'s current run was enqueued before ``called_at``: a unique task's
    call that found an equal job returns that job's handle (as stored: read again), while
    a call that enqueued stamped its own run after ``called_at``."""
    from nuvom_kernel.kernel import get_job

    created = get_job(job_id).created_at
    return created is not None and created < called_at


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can print it: a dict with keys of other types (a tuple, a
    frozenset: results may have them) has them as their ``repr``, and what JSON has no
    type for (a datetime, bytes) is its ``repr`` too."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)
