"""One discovery run: every registered discoverer over a project, merged into the tasks a
manifest lists; and the run ``nuvom runworker`` makes before it starts, where the manifest is
missing or older than its task files.

Why a worker discovers by itself: it does not import the project up front, so what it knows
of a task before the task's first job runs is what the manifest says. Without a manifest (a
first start, a fresh checkout) or with one older than the code, a ``concurrency=`` limit
was unknown while the worker claimed its first jobs (a thread pool ran 3 jobs at once of a
task limited to 1), and a ``schedule=`` never fired; a warning said to run ``nuvom discover
tasks``, and a worker started by a process manager logs where nobody reads. The scan is what
``nuvom discover tasks`` does (static, nothing imported; incremental, so a rerun re-parses
only changed files), with the root and globs the manifest records, and it writes the same
manifest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel.discovery import (
    Discoverer,
    Scan,
    TaskRef,
    changed_since,
    manifest_path,
    read_manifest,
    recorded_scan,
    write_manifest,
)

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["DiscoveryRun", "discover_before_start", "run_discoverers"]

log = logging.getLogger("nuvom.worker")

#: How long a starting worker waits for its discovery before it starts without it.
WAIT_SECS = 10.0


@attrs.define
class DiscoveryRun:
    """What every discoverer found, merged (the first to find a task name keeps it)."""

    tasks: dict[str, TaskRef] = attrs.field(factory=dict)
    states: dict[str, Any] = attrs.field(factory=dict)
    errors: list[str] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    files_scanned: int = 0
    files_parsed: int = 0
    secs: float = 0.0
    #: discoverers that raised: a manifest written without their tasks would lose them all
    failed: list[str] = attrs.field(factory=list)


def run_discoverers(discoverers: Mapping[str, tuple[type[Discoverer], str]], scan: Scan,
                    old_states: Mapping[str, Any]) -> DiscoveryRun:
    """Run each discoverer (name -> (class, providing plugin)) over ``scan``."""
    run = DiscoveryRun()
    started = time.perf_counter()
    found_by: dict[str, str] = {}  # task name -> the discoverer that found it first
    for name, (cls, provider) in sorted(discoverers.items()):
        try:
            report, state = cls().discover(scan.root, include=scan.include,
                                           exclude=scan.exclude, state=old_states.get(name))
        except Exception as exc:
            run.errors.append(f"discoverer {name!r} (plugin {provider!r}) failed: {exc!r}")
            run.failed.append(f"the discoverer {name!r}")
            continue
        run.states[name] = state
        run.errors += report.errors
        run.warnings += report.warnings
        run.files_scanned = max(run.files_scanned, report.files_scanned)
        run.files_parsed += report.files_parsed
        for ref in report.tasks:
            first = run.tasks.setdefault(ref.name, ref)
            first_by = found_by.setdefault(ref.name, name)
            # A discoverer reports its own duplicates (the scanner: "also defined at");
            # only a clash between two discoverers is this merge's to report.
            if first is not ref and first_by != name and \
                    (first.module, first.func_name) != (ref.module, ref.func_name):
                run.warnings.append(
                    f"{ref.file}:{ref.line}: task {ref.name!r} found by {name!r} is already "
                    f"at {first.file}:{first.line} (found by {first_by!r}); the first one is "
                    "kept")
    run.secs = time.perf_counter() - started
    return run


def discover_before_start(kernel: Kernel) -> None:
    """Discover the project's tasks and write the manifest when there is none (or it cannot
    be used) or a task file it names changed after it was written; otherwise do nothing.

    Waited for up to :data:`WAIT_SECS`: a worker started outside its project (in a home
    folder) would otherwise scan all of it before it starts. Past that the worker starts
    knowing what it knew, and the scan goes on beside it; the manifest it writes is read by
    the running worker (its schedules and limits) within seconds.

    Never raises: a worker that cannot discover starts as before, and says what it does not
    know (the worker's own warnings). Left alone: a manifest that does not record how it was
    discovered (written before that was recorded: its ``--include``/``--exclude`` are
    unknown, and a scan without them could add tasks they left out), and a project without
    a discoverer installed.
    """
    try:
        planned = _plan(kernel)
    except Exception as exc:  # a discoverer plugin's registration, a file system error
        log.warning("could not check the task manifest at start (%r); the worker starts "
                    "without discovering", exc)
        return
    if planned is None:
        return
    thread = threading.Thread(target=_discover, args=(kernel, *planned),
                              name="nuvom-discovery", daemon=True)
    thread.start()
    thread.join(WAIT_SECS)
    if thread.is_alive():
        log.warning("%s, and discovering the tasks under %s takes more than %g s: the worker "
                    "starts now and reads the manifest once it is written. A worker started "
                    "outside its project folder? Start it where your tasks are, or run "
                    "`nuvom discover tasks` there once", planned[1], planned[0].root,
                    WAIT_SECS)


def _plan(kernel: Kernel) -> tuple[Scan, str, dict[str, Any], dict[str, Any]] | None:
    """What to scan, why (for the log), the discoverers' previous state and the
    discoverers; ``None`` where nothing is to be done."""
    data_dir = Path(kernel.data_dir)
    project = Path(kernel.config.root).absolute()
    try:
        manifest = read_manifest(data_dir)
    except ValueError as exc:  # the registry warns about it too; a rewrite fixes it
        manifest, why = None, f"the manifest is unusable ({exc})"
    else:
        why = f"no manifest at {manifest_path(data_dir)}"
    scan = Scan(project)
    if manifest is not None:
        recorded = recorded_scan(manifest, project)
        changed = changed_since(data_dir, project)
        if recorded is None or not changed:
            return None
        scan = recorded
        why = (f"{len(changed)} task file(s) changed after {manifest_path(data_dir)} was "
               f"written ({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})")
    discoverers = kernel.pm.collect("nuvom_register_discoverers")
    if not discoverers or not scan.root.is_dir():
        return None
    return scan, why, (manifest or {}).get("state") or {}, discoverers


def _discover(kernel: Kernel, scan: Scan, why: str, old_states: dict[str, Any],
              discoverers: dict[str, tuple[type[Discoverer], str]]) -> None:
    data_dir = Path(kernel.data_dir)
    try:
        run = run_discoverers(discoverers, scan, old_states)
        for line in run.warnings + run.errors:
            log.warning("task discovery: %s", line)
        if run.failed:
            log.warning("%s, and discovery failed (%s): the worker starts without it; run "
                        "`nuvom discover tasks` to see why", why, ", ".join(run.failed))
            return
        path = write_manifest(data_dir, run.tasks.values(), run.states,
                              scan.to_dict(Path(kernel.config.root).absolute()))
    except Exception as exc:  # a full disk, a data folder not writable
        log.warning("%s; could not discover the tasks or write %s (%s): the worker starts "
                    "without them", why, manifest_path(data_dir),
                    getattr(exc, "strerror", None) or repr(exc))
        return
    log.info("%s: discovered %d task(s) under %s in %.2f s (%d file(s), %d parsed) and wrote "
             "%s", why, len(run.tasks), scan.root, run.secs, run.files_scanned,
             run.files_parsed, path)
