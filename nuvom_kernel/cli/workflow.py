"""``nuvom workflow inspect|retry|resume``: a workflow's graph with each step's state,
attempts and timings, re-running its failed part, and moving on one whose steps' outcomes
never reached its graph (an internal plugin, like the job commands)."""

from __future__ import annotations

import json
from typing import Any

import click

from nuvom_kernel import hookimpl
from nuvom_kernel.cli.jobs import _kernel
from nuvom_kernel.cli.output import local_time, print_table, stored_id
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.workflow.stranded import look, lost_error, stranded_error

__all__ = ["nuvom_register_commands"]


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    cli.add_command(workflow_group)


@click.group(name="workflow")
def workflow_group() -> None:
    """Inspect, retry and resume workflows (chains, groups, joins)."""


def _handle(workflow_id: str) -> Any:
    from nuvom_kernel.workflow.handle import Workflow

    kernel = _kernel()
    handle = Workflow(workflow_id, kernel)
    try:
        handle._graph(nodes=False)
    except NuvomError as exc:
        step = None
        try:  # a step's id is what `nuvom list jobs` and `inspect job` show
            step = kernel.queue.workflow_step(workflow_id)
        except Exception:  # the unknown id is the error to report
            pass
        if step is not None:
            raise click.ClickException(
                f"{workflow_id!r} is a step of workflow {step.workflow}, not a workflow id: "
                f"`nuvom workflow inspect {step.workflow}` shows it, and `nuvom workflow "
                f"retry {step.workflow} --from {workflow_id}` re-runs from it") from exc
        raise click.ClickException(str(exc)) from exc
    return handle


def describe(handle: Any) -> dict[str, Any]:
    """The workflow as ``inspect --json`` prints it."""
    kernel = handle._kernel
    graph = handle._graph()
    nodes = []
    for node in handle.nodes:
        record = kernel.results.get(node.id)
        started = record.started_at if record else None
        finished = record.finished_at if record and node.state != "WAITING" else None
        nodes.append({
            "id": node.id, "task": node.task, "state": node.state, "policy": node.policy,
            "attempts": record.attempts if record else 0, "run": record.run if record else 1,
            "parents": list(node.parents), "started_at": started, "finished_at": finished,
            "duration_ms": (None if started is None or finished is None
                            else round((finished - started) * 1000, 1)),
            "error_type": record.error_type if record else None,
            "error_message": record.error_message if record else None,
            "finally": node.id == graph.flow.final,
        })
    flow = graph.flow
    found = look(kernel.queue, kernel.results, kernel.serializer, graph)
    return {"id": flow.id, "status": flow.status, "created_at": flow.created_at,
            "finished_at": flow.finished_at, "steps": len(nodes), "nodes": nodes,
            "stranded": (str(stranded_error(flow.id, found.stranded)) if found.stranded
                         else None),
            "lost": str(lost_error(flow.id, found.lost)) if found.lost else None}


#: Parents a table row names; a join of a big group says how many more (``--json`` has all).
SHOWN_PARENTS = 3


def _parents(ids: list[str]) -> str:
    """A step's parents for the table: a join after a group of 5,000 listed every one, and
    the table, padding each row to its widest cell, printed 225 MB."""
    if len(ids) <= SHOWN_PARENTS:
        return ",".join(ids)
    return f"{','.join(ids[:SHOWN_PARENTS])} +{len(ids) - SHOWN_PARENTS} more"


@workflow_group.command(name="inspect")
@click.argument("workflow_id", callback=stored_id)
@click.option("--json", "as_json", is_flag=True, help="Print the graph as JSON.")
def inspect_workflow(workflow_id: str, as_json: bool) -> None:
    """The graph of WORKFLOW_ID: each step's state, attempts, timings and parents."""
    data = describe(_handle(workflow_id))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"workflow {data['id']}: {data['status']}, {data['steps']} step(s), "
               f"created {local_time(data['created_at'])}"
               + (f", finished {local_time(data['finished_at'])}" if data["finished_at"] else ""))
    # whole ids: they are what `workflow retry --from` and `inspect job` take (8-character
    # ones were accepted by neither)
    rows = [{**n, "task": n["task"] + (" (finally)" if n["finally"] else ""),
             "parents": _parents(n["parents"]),
             "error": f"{n['error_type']}: {n['error_message']}" if n["error_type"] else None}
            for n in data["nodes"]]
    print_table(rows, ["id", "task", "state", "attempts", "duration_ms", "parents", "error"])
    for problem in (data["stranded"], data["lost"]):
        if problem:
            click.echo(problem, err=True)


@workflow_group.command(name="retry")
@click.argument("workflow_id", callback=stored_id)
@click.option("--from", "from_node", default=None, metavar="NODE",
              help="Re-run this step and every step depending on it (default: the failed, "
                   "cancelled and skipped steps and their dependents).")
def retry_workflow(workflow_id: str, from_node: str | None) -> None:
    """Re-run the failed or cancelled part of WORKFLOW_ID, keeping succeeded results."""
    handle = _handle(workflow_id)
    try:
        reopened = handle.retry(from_node)
    except NuvomError as exc:
        raise click.ClickException(str(exc)) from exc
    if not reopened:
        click.echo(f"workflow {workflow_id}: nothing to re-run (no failed, cancelled or "
                   "skipped step)")
        return
    click.echo(f"workflow {workflow_id}: re-running {len(reopened)} step(s): "
               + ", ".join(reopened))


@workflow_group.command(name="resume")
@click.argument("workflow_id", callback=stored_id)
def resume_workflow(workflow_id: str) -> None:
    """Move WORKFLOW_ID on past its stranded steps (outcomes that never reached its graph).

    A step that ended while the workflow's stored graph could not be read (a damaged entry,
    since restored) had its outcome recorded, but the workflow stayed RUNNING with nothing
    to move it; this applies each such step's recorded outcome, as its settle would have.
    Safe beside running workers.
    """
    moved = _handle(workflow_id).resume()  # a NuvomError: `nuvom`'s one "Error:" line
    if not moved:
        click.echo(f"workflow {workflow_id}: nothing to resume (no stranded step)")
        return
    click.echo(f"workflow {workflow_id}: applied the recorded outcome of {len(moved)} "
               "step(s): " + ", ".join(moved))
