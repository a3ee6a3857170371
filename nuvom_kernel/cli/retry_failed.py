"""``nuvom retry failed``: run every FAILED job again, each as ``nuvom retry job`` runs one
(RQ's ``rq requeue --all``, Flower's bulk retry), for an operator with only the shell.

Why it pages with a cursor while it re-runs: records come newest first, a page at a time
(:meth:`~nuvom_kernel.result_backend.ResultBackend.query`), and one page would have capped
the run at its size. A re-run job's record turns QUEUED with a new ``updated_at``; if it
fails again at once, its new FAILED record is newer than every page read so far, and the
cursor only moves on to older records, so no job runs twice in one command (the ids seen
are kept too, against a backend whose paging repeats a record).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import click

from nuvom_kernel.cli.output import print_table, printable, refuse_in_process, task_typo
from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.result_backend import ResultBackend
from nuvom_kernel.views import page_cursor

__all__ = ["failed_records", "retry_failed"]

#: Records read per query: big enough that 10,000 failures cost 20 round trips, small
#: enough that a page of large records (arguments, tracebacks) stays a few MB.
PAGE_SIZE = 500
#: Workflows the summary names before it says "and N more".
SHOWN_WORKFLOWS = 5


def failed_records(results: ResultBackend, task: str | None, page_size: int = PAGE_SIZE
                   ) -> Iterator[JobRecord]:
    """Every FAILED record (of ``task``), newest first, each once, read a page at a time
    as the caller consumes them: what the caller re-runs between two pages is never met
    again (see the module's docstring)."""
    seen: set[str] = set()
    after = None
    while True:
        page = results.query(status=JobStatus.FAILED, task=task, limit=page_size,
                             after=after)
        for record in page:
            if record.job_id not in seen:
                seen.add(record.job_id)
                yield record
        if len(page) < page_size:
            return
        after = page_cursor(page[-1])


@attrs.define
class _Tally:
    """What one ``retry failed`` did: jobs chosen, re-run, refused; steps skipped."""

    chosen: list[JobRecord] = attrs.field(factory=list)
    rerun: int = 0
    refused: int = 0
    #: workflow id -> its FAILED steps met (skipped: they run again inside the workflow)
    steps: dict[str, int] = attrs.field(factory=dict)


@click.command(name="failed")
@click.option("--task", default=None,
              help="Only jobs of this task name (as `nuvom history recent` shows it).")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="At most N jobs, the newest failures first (workflow steps skipped "
                   "do not count). Default: every FAILED job.")
@click.option("--dry-run", is_flag=True,
              help="List the jobs that would run again, and the steps skipped; change "
                   "nothing.")
def retry_failed(task: str | None, limit: int | None, dry_run: bool) -> None:
    """Run every FAILED job again, as `nuvom retry job` runs one: same id and arguments,
    its next run, attempts starting over. Workflow steps are skipped and counted (run on
    their own, the steps depending on them would never run): `nuvom workflow retry` runs
    them inside their workflow. A job that cannot be re-enqueued is reported and the others
    go on; the exit status is then 1."""
    from nuvom_kernel.workflow.steps import workflow_of

    kernel = click.get_current_context().find_root().obj
    if not dry_run:
        refuse_in_process(kernel, "their next runs")
    tally = _Tally()
    for record in failed_records(kernel.results, task):
        if limit is not None and len(tally.chosen) >= limit:
            break
        workflow = workflow_of(kernel, record.job_id)
        if workflow is not None:
            tally.steps[workflow] = tally.steps.get(workflow, 0) + 1
            continue
        tally.chosen.append(record)
        if not dry_run:
            _rerun_one(kernel, record, tally)
    _report(kernel, tally, task, dry_run)
    if tally.refused:
        raise SystemExit(1)


def _rerun_one(kernel: Any, record: JobRecord, tally: _Tally) -> None:
    """Re-run one job; a refusal (re-run by someone else meanwhile, still settling, no
    stored options, a store error) is printed and counted, and the others go on."""
    try:
        rerun(kernel, record.job_id)
    except NuvomError as exc:
        tally.refused += 1
        click.echo(printable(f"not re-enqueued: job {record.job_id} ({record.task}): {exc}"),
                   err=True)
    else:
        tally.rerun += 1


def _report(kernel: Any, tally: _Tally, task: str | None, dry_run: bool) -> None:
    of_task = f" of task {task!r}" if task else ""
    if not tally.chosen and not tally.steps:
        hint = (" (task names as `nuvom history recent --status failed` shows them)"
                if task else "")
        click.echo(f"No FAILED jobs{of_task}: nothing to re-run{hint}."
                   + (task_typo(kernel, task) if task else ""))
        return
    if dry_run:
        if tally.chosen:
            print_table([{"job_id": r.job_id, "task": r.task, "queue": r.queue,
                          "attempts": r.attempts, "error": r.error_type}
                         for r in tally.chosen],
                        ["job_id", "task", "queue", "attempts", "error"])
        click.echo(f"dry run: would re-enqueue {len(tally.chosen)} FAILED job(s){of_task}; "
                   "nothing was changed")
    else:
        click.echo(f"re-enqueued {tally.rerun} FAILED job(s){of_task}")
    if tally.steps:
        skipped = sum(tally.steps.values())
        flows = sorted(tally.steps)
        named = ", ".join(flows[:SHOWN_WORKFLOWS])
        more = f" and {len(flows) - SHOWN_WORKFLOWS} more" if len(flows) > SHOWN_WORKFLOWS else ""
        click.echo(printable(
            f"skipped {skipped} workflow step(s) of {len(flows)} workflow(s) ({named}{more}): "
            "a step runs again only inside its workflow, with the steps depending on it; "
            "use `nuvom workflow retry WORKFLOW_ID` for each"))
    if tally.refused:
        click.echo(f"could not re-enqueue {tally.refused} job(s): see the messages above; "
                   "`nuvom retry failed` again retries what is still FAILED", err=True)
