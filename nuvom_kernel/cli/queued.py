"""``nuvom list jobs`` and ``nuvom purge queue``: what is in a queue now, and emptying one,
for an operator with only the shell (Celery's ``inspect active``/``scheduled`` and ``celery
purge -Q``, RQ's ``rq info`` and ``rq empty``, Huey's ``pending()`` and ``flush()``).

Both read the queue with :meth:`~nuvom_kernel.backends.QueueBackend.browse`, a page at a
time. Why ``purge queue`` cancels job by job instead of deleting the queue's messages
(``QueueBackend.clear``): a deleted job would stay QUEUED in its record forever, and a
producer's ``.get()`` would wait for it until its timeout. A cancelled one is recorded
CANCELLED, a workflow's steps that depend on it are cancelled with it, and a running job is
left to its worker, as ``nuvom cancel job`` does for one.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Iterator, Sequence
from typing import Any

import click

from nuvom_kernel import hookimpl
from nuvom_kernel.cli.jobs import _kernel
from nuvom_kernel.cli.output import (
    local_time,
    print_table,
    printable,
    queue_typo,
    relative,
    subgroup,
)
from nuvom_kernel.job import Job, workers_of
from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob

__all__ = ["STATES", "list_jobs", "purge_queue"]

#: Jobs read per ``browse`` while purging: one page costs a scan of the queue's index on the
#: SQL backends and of its sets on Redis, so pages are large.
PAGE_SIZE = 1000
#: The largest page ``list jobs`` asks for: a page is one scan of the store, whatever its
#: size, and a limit past what the stores' integers hold ended in a traceback.
MAX_LIMIT = 10_000
#: How much younger than the purge a job may be and still be cancelled by it: a job's
#: ``created_at`` is stamped by the clock of the host that enqueued it.
PURGE_SLACK_SECS = 1.0
#: The states a job that no worker holds can be in: what ``purge queue`` cancels.
WAITING = (JobStatus.QUEUED, JobStatus.RETRYING)
#: The ``--state`` names (the dashboard's ``/queued`` takes the same), in the order shown.
STATES = {"queued": JobStatus.QUEUED, "retrying": JobStatus.RETRYING,
           "running": JobStatus.RUNNING}


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    subgroup(cli, "list", "List what Nuvom knows about.").add_command(list_jobs)
    subgroup(cli, "purge", "Delete old records, or the jobs waiting in a queue.") \
        .add_command(purge_queue)


def _browse(kernel: Any, queues: Sequence[str] | None, states: Sequence[JobStatus] | None,
            after: str | None, limit: int, *, typed: bool = False) -> list[QueuedJob]:
    """One page, with a refusal (no ``browse`` in this backend, a bad cursor the user
    ``typed``) as one line."""
    try:
        return list(kernel.queue.browse(queues, states=states, after=after, limit=limit))
    except NotImplementedError as exc:
        raise click.ClickException(
            f"{exc}: `nuvom list jobs` and `nuvom purge queue` need a queue backend that "
            "lists its messages (memory, file, sqlite, redis and postgres do); `nuvom "
            "status` still counts them") from exc
    except ValueError as exc:
        if not typed:  # a cursor browse returned itself: the backend's fault, shown whole
            raise
        raise click.BadParameter(f"{exc}; copy it from the line `nuvom list jobs` printed "
                                 "under its last page", param_hint="'--after'") from exc


@click.command(name="jobs")
@click.option("--queue", "-q", "queues", multiple=True, metavar="NAME",
              help="Only jobs of this queue (repeat for more). Default: every queue.")
@click.option("--state", "states", multiple=True, type=click.Choice(sorted(STATES),
              case_sensitive=False), help="Only jobs in this state (repeat for more): "
              "queued (waiting to run, or delayed), retrying (waiting out a retry delay), "
              "running (a worker holds it). Default: all three.")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=50,
              show_default=True, help=f"Jobs per page (at most {MAX_LIMIT:,}).")
@click.option("--after", default=None, metavar="CURSOR",
              help="Start after this job: the cursor printed under the previous page.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"jobs": [...], "next": CURSOR or null} instead of a table.')
def list_jobs(queues: tuple[str, ...], states: tuple[str, ...], limit: int,
              after: str | None, as_json: bool) -> None:
    """The jobs in the queues now, oldest first: waiting, delayed, waiting out a retry
    delay, or held by a worker (finished jobs: `nuvom history recent`)."""
    kernel = _kernel()
    wanted = [STATES[s.lower()] for s in states] or None
    page = _browse(kernel, list(queues) or None, wanted, after, limit + 1, typed=True)
    more = page[limit - 1].cursor if len(page) > limit else None
    page = page[:limit]
    workers = workers_of(kernel, page)
    if as_json:
        click.echo(json.dumps({"jobs": [_finite({**j.to_dict(), "worker": workers.get(j.id)})
                                        for j in page], "next": more}, indent=2))
        return
    if not page:
        where = f" in queue(s) {', '.join(map(repr, queues))}" if queues else ""
        click.echo(f"No jobs{where}{' after that cursor' if after else ''} "
                   f"(`nuvom history recent` lists finished ones).")
        _note_typos(kernel, () if after else queues)
        return
    now = time.time()
    print_table([{"job_id": j.id, "task": j.task, "queue": j.queue, "state": j.state.value,
                  "priority": j.priority,
                  "created": local_time(j.created_at),
                  "due": relative(j.available_at, now) if j.available_at > now else None,
                  "failures": j.failures, "deliveries": j.deliveries,
                  "lease": relative(j.lease_expires_at, now), "worker": workers.get(j.id)}
                 for j in page],
                ["job_id", "task", "queue", "state", "priority", "created", "due",
                 "failures", "deliveries", "lease", "worker"])
    if more is not None:  # quoted for the shell: a job id may hold ' or $ or a space
        click.echo(printable(f"more: nuvom list jobs --after {shlex.quote(more)} (with the "
                             "same --queue and --state)"))


def _note_typos(kernel: Any, queues: Sequence[str]) -> None:
    """A note for each of ``queues`` (where none matched a job) that looks misspelt: a
    queue no task routes to and no job waits in, close to one that is (``defualt``)."""
    for name in queues:
        if hint := queue_typo(kernel, name):
            click.echo(f"note: no task of the manifest routes jobs to queue {name!r} and no "
                       f"job waits in it{hint}")


def _finite(data: dict[str, Any]) -> dict[str, Any]:
    """Valid JSON for a hand-edited row: ``inf``/``nan`` as strings (``json`` would print
    ``Infinity``, which JSON parsers refuse)."""
    return {k: repr(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in data.items()}


def _waiting(kernel: Any, queues: Sequence[str], until: float = math.inf
             ) -> Iterator[QueuedJob]:
    """Every job of ``queues`` that no worker holds and that was enqueued by ``until``
    (epoch seconds), oldest first, a page at a time as the caller consumes them (a
    cancelled job leaves the queue; the cursor goes on past it). Pages come in enqueue
    order, so the first younger job ends the walk: a purge behind a steady producer
    stops where it began instead of chasing the newest jobs."""
    after = None
    while True:
        page = _browse(kernel, queues, WAITING, after, PAGE_SIZE)
        for job in page:
            if job.created_at > until:
                return
            yield job
        if len(page) < PAGE_SIZE:
            return
        after = page[-1].cursor


@click.command(name="queue")
@click.argument("names", nargs=-1, required=True, metavar="QUEUE...")
@click.option("--dry-run", is_flag=True,
              help="Count the jobs that would be cancelled, per task; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge_queue(names: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Cancel every job waiting in the named queues (queued, delayed, or waiting out a
    retry delay): each is removed and recorded CANCELLED, as `nuvom cancel job` does, so
    whoever waits on its result is told. Jobs a worker holds are left to finish. There is
    no undo, but `nuvom retry job ID` runs a cancelled job again."""
    kernel = _kernel()
    queues = list(dict.fromkeys(names))
    shown = ", ".join(map(repr, queues))
    if dry_run:
        tasks: dict[str, int] = {}
        for job in _waiting(kernel, queues):
            tasks[job.task] = tasks.get(job.task, 0) + 1
        if tasks:
            print_table([{"task": t, "jobs": n} for t, n in sorted(tasks.items())],
                        ["task", "jobs"])
        click.echo(f"dry run: would cancel {sum(tasks.values())} waiting job(s) of queue(s) "
                   f"{shown}; nothing was changed")
        _note_typos(kernel, () if tasks else queues)
        return
    if not yes:
        click.confirm(f"Cancel every waiting job of queue(s) {shown} (about "
                      f"{kernel.queue.qsize(queues)})? There is no undo", abort=True)
    cancelled = missed = 0
    # the jobs waiting when it began, as Celery's and RQ's purges take the queue as it was;
    # give or take PURGE_SLACK_SECS, which hosts' clocks (stamping created_at) may differ by
    for job in _waiting(kernel, queues, until=time.time() + PURGE_SLACK_SECS):
        if kernel.cancel(Job(id=job.id, task=job.task)):
            cancelled += 1
        else:  # a worker claimed it (or it ended) between the page and its cancel
            missed += 1
    running = len(_browse(kernel, queues, [JobStatus.RUNNING], None, PAGE_SIZE))
    click.echo(f"cancelled {cancelled} waiting job(s) of queue(s) {shown}")
    _note_typos(kernel, () if cancelled else queues)
    if missed:
        click.echo(f"{missed} job(s) were claimed by a worker before they could be "
                   "cancelled: they run")
    if running:
        plus = "+" if running == PAGE_SIZE else ""
        click.echo(f"{running}{plus} job(s) held by workers were left to finish "
                   "(`nuvom list jobs --state running`)")
