"""Internal plugin: job commands that work on any queue and result backend.

``nuvom inspect job``, ``nuvom history recent``, ``nuvom retry job`` (and ``retry failed``,
from :mod:`.retry_failed`), ``nuvom status`` and ``nuvom purge results``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import attrs
import click

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.cli.output import (
    JobGroup,
    local_time,
    print_table,
    printable,
    refuse_in_process,
    stored_id,
    task_typo,
)
from nuvom_kernel.cli.retry_failed import retry_failed
from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.envelope import Envelope, EnvelopeVersionError
from nuvom_kernel.errors import NuvomError, SerializationError
from nuvom_kernel.hints import parent_project
from nuvom_kernel.job import running_on
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, Message
from nuvom_kernel.views import WorkerInfo


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    for command in (inspect_group, history_group, retry_group, cancel_group, status,
                    purge_group):
        cli.add_command(command)


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


def _unknown(job_id: str) -> str:
    """Why ``job_id`` is not known here, and, run below a project's folder, where it may be:
    each folder has its own store, and the message spoke only of quarantine."""
    kernel = _kernel()
    above = parent_project(Path(kernel.config.root), Path(kernel.data_dir),
                           kernel.config.path is not None)
    return (f"unknown job id {job_id!r}: no backend has seen it (or its message was "
            "quarantined as damaged: see `nuvom status`)"
            + ("" if above is None else f". This command opened the store of this folder; "
               f"{above}, a folder above it, holds a Nuvom project: run it there"))


def _duration(record: JobRecord) -> str | None:
    secs = record.run_secs
    return None if secs is None else f"{secs * 1000:.1f} ms"


@click.group(name="inspect", cls=JobGroup)
def inspect_group() -> None:
    """Show one job in detail."""


@inspect_group.command(name="job")
@click.argument("job_id", callback=stored_id)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def inspect_job(job_id: str, fmt: str) -> None:
    """Everything known about JOB_ID: state, result or error, attempts and their history."""

    kernel = _kernel()
    record = kernel.results.get(job_id)
    queued = kernel._queued(job_id) if record is None else None  # (read once, for both)
    job = kernel.refresh_job(kernel._handle(job_id, queued))
    message, envelope = queued or (None, None)
    if envelope is not None:  # waiting or leased, never recorded: what its message says
        data: dict[str, Any] = envelope.record(job.status).to_dict()  # (it showed 4 fields)
        data.update(priority=message.priority if message is not None else None,
                    due_at=message.available_at if message is not None
                    and message.available_at > time.time() else None)
    elif record is None:  # a workflow step waiting for its parents, or unknown
        data = {"job_id": job_id, "status": job.status.value}
        if job.task:
            data.update(task=job.task, queue=job.queue)
        if message is not None:  # held, but its body does not decode
            data["damaged"] = _damage(kernel, message)
    else:
        data = record.to_dict()
    data["status"] = job.status.value
    if job.status is JobStatus.RUNNING:  # a record is an earlier attempt's: its worker,
        holder = running_on(kernel).get(job_id)  # start and end are not this one's
        data.update(worker=None if holder is None else holder.id, finished_at=None,
                    started_at=None if holder is None else holder.running[job_id])
    if record is None and job.headers.get("wf"):
        data["workflow"] = job.headers["wf"]
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        if job.status is JobStatus.UNKNOWN:
            raise SystemExit(1)
        return
    if job.status is JobStatus.UNKNOWN:
        raise click.ClickException(_unknown(job_id))
    if record is not None or envelope is not None:  # the values as get() returns them,
        data.update(args=list(job.args), kwargs=job.kwargs, result=job.result)  # not wire
    if (data.get("run") or 1) == 1:  # said once a job ran again (`nuvom retry job`): the
        data.pop("run", None)  # attempts and created_at are then that run's, not the first's
    for key in ("job_id", "task", "status", "run", "queue", "priority", "workflow",
                "damaged", "attempts", "max_retries",
                "args", "kwargs", "result", "error_type", "error_message", "worker",
                "trace_id"):
        if key in data and data[key] not in (None, [], {}):
            click.echo(f"{key:>14}: {printable(data[key])}")
    for key in ("created_at", "due_at", "started_at", "finished_at"):
        if data.get(key) is not None:
            click.echo(f"{key:>14}: {local_time(data[key])}")
    if record is not None and job.status is not JobStatus.RUNNING and _duration(record):
        click.echo(f"{'duration':>14}: {_duration(record)}")
    for entry in data.get("history") or []:
        click.echo(printable(f"{'attempt ' + str(entry.get('attempt')):>14}: "
                             f"{entry.get('kind')} {entry.get('error_type')}: "
                             f"{entry.get('error_message')}"))
    if data.get("traceback"):
        click.echo("\n" + printable(data["traceback"].rstrip()))


def _damage(kernel: Any, message: Message) -> str:
    """Why the waiting ``message``'s body does not decode, and what will become of it: the
    operator looking at a job that will fail should learn so before a worker claims it."""
    try:
        Envelope.from_message(message, kernel.serializer)
    except SerializationError as exc:
        why = str(exc).removeprefix(f"job {message.id}: ")
        if isinstance(exc, EnvelopeVersionError):
            return (f"{why}; a worker of this release leaves it in the queue for a worker "
                    "of a newer release")
    else:
        return ("its message did not decode when read, and does now (rewritten meanwhile): "
                "run this command again")
    keeps = type(kernel.queue).copy_to_quarantine is not QueueBackend.copy_to_quarantine
    return (f"{why}; the worker that claims it will fail the job" +
            (" and keep the message in the queue's quarantine (`nuvom status`)" if keeps else
             f" (queue backend {kernel.queue.name!r} keeps no quarantine: its record will "
             "say why)"))


@click.group(name="history")
def history_group() -> None:
    """Browse recent job outcomes."""


@history_group.command(name="recent")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", type=click.Choice([s.value for s in JobStatus  # as recorded:
                                             # a running job's record says its last state
                                             if s not in (JobStatus.UNKNOWN, JobStatus.RUNNING)],
                                            case_sensitive=False), default=None,
              help="Only records in this state (running jobs, and queued ones that never "
                   "ran: `nuvom list jobs`).")
@click.option("--task", default=None, help="Only jobs of this task name.")
@click.option("--json", "as_json", is_flag=True)
def history_recent(limit: int, status: str | None, task: str | None, as_json: bool) -> None:
    """The newest job records first."""
    records = _kernel().results.query(status=JobStatus(status.upper()) if status else None,
                                      task=task, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, default=str))
        return
    if not records:
        # a job enqueued has no record until it first runs (only a retry's or a re-run's
        # reads QUEUED): "none match" while jobs waited read as an empty queue
        queued = (" A job waiting for its first run has no record yet: `nuvom list jobs "
                  "--state queued` lists the queue."
                  if status and status.upper() == "QUEUED" else "")
        click.echo("No job records match." + (task_typo(_kernel(), task) if task else "")
                   + queued)
        return
    print_table([{"job_id": r.job_id, "task": r.task, "status": r.status.value,
                  "attempts": r.attempts, "duration": _duration(r),
                  "updated": local_time(r.updated_at), "error": r.error_type}
                 for r in records],
                ["job_id", "task", "status", "attempts", "duration", "updated", "error"])


@click.group(name="retry", cls=JobGroup)
def retry_group() -> None:
    """Run failed jobs again."""


retry_group.add_command(retry_failed)


@retry_group.command(name="job")
@click.argument("job_id", callback=stored_id)
def retry_job(job_id: str) -> None:
    """Run a FAILED or CANCELLED job again with the same id and arguments (its next run;
    attempts start over). A workflow step is refused: run alone, the steps depending on it
    would never run; `nuvom workflow retry` runs it inside its workflow."""
    kernel = _kernel()
    refuse_in_process(kernel, "its next run")
    try:
        job = rerun(kernel, job_id)
    except NuvomError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"re-enqueued job {job_id} ({job.task}) on queue {job.queue!r} "
               f"(run {job.run})")


@click.group(name="cancel", cls=JobGroup)
def cancel_group() -> None:
    """Cancel jobs that have not started."""


@cancel_group.command(name="job")
@click.argument("job_id", callback=stored_id)
def cancel_job(job_id: str) -> None:
    """Remove a waiting job from its queue and record it CANCELLED."""
    from nuvom_kernel.kernel import get_job

    job = get_job(job_id)
    try:
        cancelled = _kernel().cancel(job)
    except NotImplementedError as exc:  # an optional call this queue backend does not make
        raise click.ClickException(str(exc)) from exc
    if not cancelled:
        if job.status is JobStatus.UNKNOWN:
            raise click.ClickException(_unknown(job_id))
        if job.status is JobStatus.QUEUED:  # read as waiting, then claimed before the cancel
            raise click.ClickException(
                f"job {job_id} cannot be cancelled: a worker claimed it between this "
                "command's look and its cancel, and holds it now (`nuvom inspect job` shows "
                "it RUNNING); only a job no worker holds can be cancelled")
        if job.status is JobStatus.CANCELLED:
            raise click.ClickException(f"job {job_id} is already CANCELLED")
        if job.status is JobStatus.RUNNING:  # a lease: running, or claimed ahead
            raise click.ClickException(
                f"job {job_id} is RUNNING: a worker holds it, running it or claimed ahead of "
                "its busy threads (see Prefetch in docs/workers.md: one that cannot start "
                "within about a second is given back, and can be cancelled then); only a "
                "job no worker holds can be cancelled. Workers started with NUVOM_PREFETCH=0 "
                "hold only what they run")
        finished = ": it has finished" if job.status in TERMINAL_STATES else ""
        raise click.ClickException(
            f"job {job_id} is {job.status.value}{finished}; only a job waiting to run "
            "(QUEUED, or RETRYING: waiting for its next attempt) can be cancelled")
    click.echo(f"cancelled job {job_id}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Where the stores are, queue depth per queue, jobs per state, leases in flight,
    oldest job, quarantine, the queue backend's warnings about its store, and the live
    workers (those that have not missed three heartbeats; a result backend without
    heartbeats lists none)."""
    kernel = _kernel()
    stats = kernel.queue.stats()
    serializer = kernel.serializer.name  # an unknown one said "all is well" here (exit 0)
    heartbeats = type(kernel.results).capabilities.heartbeats
    workers = kernel.results.live_workers() if heartbeats else []
    data = {
        "queue_backend": kernel.queue.name,
        "result_backend": kernel.results.name,
        "queue_location": kernel.queue.location,
        "result_location": kernel.results.location,
        "serializer": serializer,
        "queues": {name: attrs.asdict(counts) for name, counts in sorted(stats.queues.items())},
        "depth": stats.depth,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "oldest_age_secs": stats.oldest_age_secs,
        "quarantined": stats.quarantined,
        "warnings": stats.warnings,
        "states": kernel.results.counts(),
        "workers": [worker.to_dict() for worker in workers],
        "limits": _limits(kernel),
        "waiting_steps": kernel.queue.waiting_steps(),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"queue backend: {data['queue_backend']}   result backend: "
               f"{data['result_backend']}   serializer: {serializer}")
    _echo_locations(data["queue_location"], data["result_location"])
    # ready and delayed apart: "waiting: default=2   delayed: 2" read as four jobs
    ready = ", ".join(f"{q}={c.ready}" for q, c in sorted(stats.queues.items()) if c.ready)
    delayed = ", ".join(f"{q}={c.delayed}" for q, c in sorted(stats.queues.items())
                        if c.delayed)
    click.echo(f"ready: {ready or 0}   delayed: {delayed or 0}   in flight: {stats.in_flight}")
    oldest = stats.oldest_age_secs
    click.echo(f"oldest ready job: {'-' if oldest is None else f'{oldest:.1f} s'}")
    if data["waiting_steps"]:
        click.echo(f"workflow steps waiting for their parents: {data['waiting_steps']} "
                   "(not queued yet)")
    states = ", ".join(f"{k}={v}" for k, v in sorted(data["states"].items())) or "none"
    click.echo(f"job records: {states}")
    if stats.quarantined:
        click.echo(f"quarantined entries: {len(stats.quarantined)}")
        for line in stats.quarantined:
            click.echo(f"  {line}")
    for task, row in data["limits"].items():  # ready jobs wait on the limit only while full
        held = " (held back by the limit)" if row["waiting"] and \
            row["running"] >= row["limit"] else ""
        click.echo(f"concurrency {task}: running {row['running']}/{row['limit']}, "
                   f"{row['waiting']} ready{held}")
    for line in stats.warnings:
        click.echo(f"warning: {line}")
    if not (data["states"] or stats.queues or stats.quarantined or data["waiting_steps"]
            or workers):
        above = parent_project(Path(kernel.config.root), Path(kernel.data_dir),
                               kernel.config.path is not None)
        click.echo("note: these stores hold no jobs, records or live workers. If you "
                   "expected some, this is probably not your workers' store: run nuvom from "
                   "the project folder (where .nuvom_plugins.toml is"
                   + ("" if above is None else f": {above}, a folder above this one, holds "
                      "a Nuvom project") + "), or check "
                   "NUVOM_DATA_DIR, NUVOM_NAMESPACE and the backend settings (`nuvom config`)")
    if not heartbeats:
        click.echo(f"workers: unknown (result backend {kernel.results.name!r} keeps no "
                   "heartbeats)")
        return
    click.echo(f"workers: {len(workers)} live")
    if not workers:
        return
    now = time.time()
    print_table([{"worker": w.id, "queues": ",".join(w.queues) or "*",
                  "busy": _busy(w), "pool": w.pool, "version": w.version,
                  "up": f"{max(0.0, now - w.started_at):.0f} s",
                  "last beat": _beat(now - w.heartbeat_at, w.heartbeat_secs)}
                 for w in workers],
                ["worker", "queues", "busy", "pool", "version", "up", "last beat"])


def _busy(worker: WorkerInfo) -> str:
    """``busy/slots``, and the tasks stuck past their timeout if any: a worker whose slots
    were all held by them read ``0/2``, an idle healthy worker, while it ran nothing."""
    stuck = worker.reports.get("abandoned_threads")
    stuck = int(stuck) if isinstance(stuck, int | float) and stuck > 0 else 0
    return f"{worker.busy_slots}/{worker.slots}" + (f" ({stuck} stuck)" if stuck else "")


def _beat(age: float, heartbeat_secs: float) -> str:
    """A live worker's heartbeat age. One from the future is a worker's clock ahead of this
    one (it read "-177.0 s ago"); one older than the store keeps a heartbeat for
    (:data:`MISSED_HEARTBEATS` beats, on the store's clock) is a worker's clock behind this
    one: it read "123.6 s ago", a worker that looked dead and was not."""
    from nuvom_kernel.worker.heartbeat import MISSED_HEARTBEATS

    if age < -1:
        return f"just now (its clock is {-age:.0f} s ahead of this one)"
    kept = MISSED_HEARTBEATS * heartbeat_secs
    if age > kept + 1:
        return (f"within {kept:.0f} s (its clock is at least {age - kept:.0f} s behind this "
                "one)")
    return f"{max(0.0, age):.1f} s ago"


def _echo_locations(queue: str | None, results: str | None) -> None:
    """Where the stores are, one line, or two when they differ. Why: a store is created on
    first use, so from the wrong folder (or with a mistyped data dir or namespace) status
    read a new, empty one and looked like a healthy idle deployment. Two backends that both
    report nothing are not one store: they get a line each."""
    unknown = "not reported by the backend"
    if queue is not None and queue == results:
        click.echo(f"store (queue and results): {printable(queue or unknown)}")
        return
    click.echo(f"queue store: {printable(queue or unknown)}")
    click.echo(f"result store: {printable(results or unknown)}")


def _limits(kernel: Any) -> dict[str, dict[str, int]]:
    """Per concurrency-limited task: running/limit and how many ready jobs wait."""
    from nuvom_kernel.limits import concurrency_limits

    limits = concurrency_limits(kernel)
    if not limits or not kernel.queue.capabilities.concurrency:
        return {}
    counts = kernel.queue.task_counts(sorted(limits))
    return {task: {"running": counts[task][0], "limit": limit, "waiting": counts[task][1]}
            for task, limit in sorted(limits.items())}


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(_ctx: click.Context | None, _param: click.Parameter | None, text: str) -> float:
    """``--older-than``'s age in seconds, refused as that option's error (a bare
    ``Invalid value:`` named no option)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not an age; use a number and a unit "
                                 "s, m, h, d or w (e.g. 7d, 12h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@click.group(name="purge")
def purge_group() -> None:
    """Delete old records, or the jobs waiting in a queue."""


def _purge_preview(cutoff: float) -> None:
    """What ``purge results`` would delete before ``cutoff``: every finished record less
    those updated since (two counts the backends answer from their indexes; no result
    backend counts "older than" directly). On this machine's clock, and two reads: an
    estimate where a backend's purge reads the server's clock (PostgreSQL) or records
    finish meanwhile."""
    results = _kernel().results
    finished = {status.value for status in TERMINAL_STATES}
    total = {s: n for s, n in results.counts().items() if s in finished}
    for per_status in results.counts_since(cutoff).values():
        for status, n in per_status.items():
            if status in total:
                total[status] -= n
    old = {s: n for s, n in sorted(total.items()) if n > 0}
    if old:
        print_table([{"status": s, "records": n} for s, n in old.items()], ["status", "records"])
    click.echo(f"dry run: would purge {sum(old.values())} job record(s) finished before "
               f"{local_time(cutoff)}, and the workflows that ended before it; nothing was "
               "changed")


@purge_group.command(name="results")
@click.option("--older-than", "older_than", required=True, callback=parse_age,
              help="Age such as 7d, 12h, 30m: finished records older than this are deleted.")
@click.option("--dry-run", is_flag=True,
              help="Count the finished records that would be deleted, per status (on this "
                   "machine's clock); change nothing.")
def purge_results(older_than: float, dry_run: bool) -> None:
    """Delete finished job records (SUCCEEDED, FAILED, CANCELLED) older than an age, and
    the workflows that ended before it. Asks nothing (it is what cron runs): try an age
    with --dry-run first."""
    # an age past the epoch (999999999999d) means every finished record, not an OSError
    cutoff = max(0.0, time.time() - older_than)
    if dry_run:
        _purge_preview(cutoff)
        return
    removed = _kernel().results.purge(cutoff)
    click.echo(f"purged {removed} job record(s) finished before {local_time(cutoff)}")
    flows = _kernel().queue.purge_workflows(cutoff)  # their steps' records went just above
    if flows:
        click.echo(f"purged {flows} workflow(s) that ended before {local_time(cutoff)}")
