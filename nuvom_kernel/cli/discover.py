"""Internal plugin: ``nuvom discover tasks`` and ``nuvom list tasks``.

Discovery itself lives in discoverer plugins (``nuvom_register_discoverers``; the built-in
AST scanner ships in ``nuvom-plugins``). This module only runs every registered discoverer,
merges what they found, writes ``.nuvom/manifest.json`` (with each discoverer's incremental
state, so the next run re-parses only changed files) and shows what changed, so a user sees
at a glance whether the worker will find the task they just wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nuvom_kernel import hookimpl
from nuvom_kernel.cli.output import print_table, subgroup
from nuvom_kernel.discovery import (
    ManifestError,
    Scan,
    manifest_path,
    read_manifest,
    write_manifest,
)
from nuvom_kernel.discovery_run import run_discoverers
from nuvom_kernel.plugin_failures import KNOWN_PLUGINS, KNOWN_PROVIDERS

__all__ = ["nuvom_register_commands"]


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    subgroup(cli, "discover", "Find tasks in the project and record them for workers.") \
        .add_command(discover_tasks)
    subgroup(cli, "list", "List what Nuvom knows about.").add_command(list_tasks)


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


def _read_previous(data_dir: Path) -> dict[str, Any]:
    """The manifest this run replaces (for what changed and the discoverers' caches); an
    unusable one is only a warning: this run rewrites it."""
    try:
        return read_manifest(data_dir) or {}
    except ManifestError as exc:
        click.echo(f"warning: previous manifest {exc.path} unusable ({exc.problem}); "
                   f"starting fresh", err=True)
    except (ValueError, OSError) as exc:
        click.echo(f"warning: previous manifest unreadable ({exc}); starting fresh", err=True)
    return {}


def _location(task: dict[str, Any]) -> str:
    return f"{task.get('file')}:{task.get('line')}"


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two manifest entries of one task, briefly."""
    parts = []
    if (old.get("module"), old.get("func_name")) != (new.get("module"), new.get("func_name")):
        parts.append(f"moved from {old.get('module')}.{old.get('func_name')}")
    elif old.get("line") != new.get("line") or old.get("file") != new.get("file"):
        parts.append(f"line {old.get('line')} -> {new.get('line')}")
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            parts.append(f"{key}: {old_opts.get(key, '-')} -> {new_opts.get(key, '-')}")
    for key in ("description", "is_async"):
        if old.get(key) != new.get(key):
            parts.append(f"{key} changed")
    return "; ".join(parts)


@click.command(name="tasks")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder to scan (default: the current directory, whose "
                                 ".nuvom_plugins.toml is read). The manifest is written to "
                                 "the data directory either way (NUVOM_DATA_DIR, relative to "
                                 "the current directory), where a worker started here reads "
                                 "it.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only scan files matching GLOB (gitignore syntax; repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Skip files and directories matching GLOB (gitignore syntax; repeatable).")
def discover_tasks(root: Path | None, include: tuple[str, ...],
                   exclude: tuple[str, ...]) -> None:
    """Scan the project for @task functions and write .nuvom/manifest.json.

    Prints the tasks added, removed and changed since the previous manifest, then any
    errors (files skipped, e.g. syntax errors) and warnings. Exits with status 1 if there
    were errors; the manifest is written either way, unless a discoverer failed as a
    whole (then the previous manifest is kept: it would lose every task).
    """
    kernel = _kernel()
    root = (root or kernel.config.root).resolve()
    data_dir = Path(kernel.data_dir)
    discoverers = kernel.pm.collect("nuvom_register_discoverers")
    if not discoverers:
        plugin, dist = KNOWN_PLUGINS["ast"], KNOWN_PROVIDERS["ast"]
        raise click.ClickException(
            f"no task discoverer is loaded: the 'ast' discoverer comes with the plugin "
            f"{plugin!r} ({dist}), which is {kernel.pm.why_not_loaded(plugin, dist)}.")
    previous = _read_previous(data_dir)
    scan = Scan(root, include, exclude)
    run = run_discoverers(discoverers, scan, previous.get("state") or {})
    tasks, errors, warnings = run.tasks, run.errors, run.warnings
    if run.failed:  # a manifest without that discoverer's tasks would drop them all
        for line in errors:
            click.echo(f"error: {line}", err=True)
        raise click.ClickException(
            f"the manifest {manifest_path(data_dir)} was not written (the previous one is "
            f"kept): {', '.join(run.failed)} failed. Fix the cause named above and run "
            f"`nuvom discover tasks` again.")
    try:
        path = write_manifest(data_dir, tasks.values(), run.states,
                              scan.to_dict(kernel.config.root))
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the manifest {manifest_path(data_dir)}: "
            f"{exc.strerror or exc}. Make {data_dir} a writable directory, or set "
            f"NUVOM_DATA_DIR to one.") from None

    old = {t["name"]: t for t in previous.get("tasks", []) if isinstance(t, dict)}
    new = {n: t.to_dict() for n, t in tasks.items()}
    rows = []
    for task_name in sorted(set(old) | set(new)):
        before, after = old.get(task_name), new.get(task_name)
        if before is None and after is not None:
            rows.append({"change": "added", "task": task_name, "module": after["module"],
                         "location": _location(after), "detail": after.get("description")})
        elif after is None and before is not None:
            rows.append({"change": "removed", "task": task_name,
                         "module": before.get("module"), "location": _location(before),
                         "detail": None})
        elif before is not None and after is not None and (detail := _changes(before, after)):
            rows.append({"change": "changed", "task": task_name, "module": after["module"],
                         "location": _location(after), "detail": detail})
    if rows:
        print_table(rows, ["change", "task", "module", "location", "detail"])
    else:
        click.echo("No changes to tasks.")
    counts = {c: sum(r["change"] == c for r in rows) for c in ("added", "removed", "changed")}
    click.echo(f"{len(tasks)} task(s): {counts['added']} added, {counts['removed']} removed, "
               f"{counts['changed']} changed. Scanned {run.files_scanned} file(s), parsed "
               f"{run.files_parsed}, in {run.secs:.2f}s. Manifest: {path}")
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    for line in errors:
        click.echo(f"error: {line}", err=True)
    if errors:
        raise click.exceptions.Exit(1)


def _unread(task: dict[str, Any]) -> list[str]:
    """The options a manifest entry records as written as no literal (``retries=RETRIES``),
    which only importing the module tells; a hand-edited value that is no list of names
    is ignored."""
    unread = task.get("unread")
    return [n for n in unread if isinstance(n, str)] if isinstance(unread, list) else []


def _option(task: dict[str, Any], unread: list[str], name: str, default: Any) -> Any:
    """An option of a manifest entry as ``list tasks`` shows it: ``"?"`` for an unread one
    (it showed the default: 0 retries where 3 run)."""
    return "?" if name in unread else (task.get("options") or {}).get(name, default)


@click.command(name="tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_tasks(as_json: bool) -> None:
    """List the tasks in .nuvom/manifest.json (run `nuvom discover tasks` to refresh it)."""
    data_dir = Path(_kernel().data_dir)
    try:
        manifest = read_manifest(data_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if manifest is None:
        raise click.ClickException(
            f"no manifest at {manifest_path(data_dir)}; run `nuvom discover tasks` first")
    rows = []
    for task in manifest.get("tasks", []):
        unread = _unread(task)
        rows.append({
            "name": task.get("name"), "module": task.get("module"),
            "location": _location(task), "retries": _option(task, unread, "retries", 0),
            "timeout": _option(task, unread, "timeout_secs", None),
            "async": bool(task.get("is_async")),
            "description": task.get("description"),
            "unread": unread,  # (--json: those shown as "?")
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("The manifest lists no tasks. Decorate functions with @task and run "
                   "`nuvom discover tasks`.")
        return
    print_table(rows, ["name", "module", "location", "retries", "timeout", "description"])
