"""Internal plugin: ``nuvom schedule list`` and ``nuvom schedule run NAME``.

Schedules come from the tasks this process imported and from the discovery manifest
(``nuvom discover tasks``), exactly as a worker's scheduler sees them; their state (last
run, missed and skipped ticks) is read from the result backend.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from nuvom_kernel import hookimpl
from nuvom_kernel.cli.output import print_table, refuse_in_process
from nuvom_kernel.errors import NuvomError


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    cli.add_command(schedule_group)


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


@click.group(name="schedule")
def schedule_group() -> None:
    """Inspect and fire task schedules (@task(schedule=...))."""


@schedule_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedule_list(as_json: bool) -> None:
    """Every schedule: task, schedule, zone, next run, last run and its status, and how
    many ticks were missed (workers down) or skipped (overlap="skip"); a schedule that
    raises is listed with its error."""
    from nuvom_kernel.scheduler import schedule_rows

    if "" not in sys.path:  # the project directory holds the task modules
        sys.path.insert(0, "")
    kernel = _kernel()
    rows = schedule_rows(kernel)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No schedules. Give a task schedule=cron(...) or every(...) and run "
                   "`nuvom discover tasks` so workers and this command find it.")
    else:  # the ERROR column only when a schedule raised: the usual table as documented
        print_table(rows, ["name", "task", "schedule", "tz", "next_run", "last_run",
                           "last_status", "missed", "skipped",
                           *(["error"] if any(row.get("error") for row in rows) else [])])
    unlisted = _stored_only(kernel, {row["name"] for row in rows})
    if unlisted:
        click.echo(f"\nThe store also holds the state of schedule(s) {', '.join(unlisted)}, "
                   "which neither the manifest nor an imported task declares: a schedule "
                   "discovery cannot read (written with variables), which fires only in a "
                   "worker that imported its module, or one removed since. Write it with "
                   "literals and run `nuvom discover tasks` to list it here.")


def _stored_only(kernel: Any, listed: set[str]) -> list[str]:
    """Schedules with stored state but no declaration this process found: "No schedules"
    was printed while such a schedule fired (a worker had imported its module)."""
    if not type(kernel.results).capabilities.schedules:
        return []
    return sorted(set(kernel.results.schedule_states()) - listed)


@schedule_group.command(name="run")
@click.argument("name")
def schedule_run(name: str) -> None:
    """Fire one run of schedule NAME now (outside its ticks)."""
    from nuvom_kernel.scheduler import Scheduler

    if "" not in sys.path:
        sys.path.insert(0, "")
    refuse_in_process(_kernel(), "the run")
    try:
        job = Scheduler(_kernel()).fire_now(name)
    except NuvomError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"fired {name}: job {job.id}")
