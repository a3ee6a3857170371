"""One discovery run: every registered discoverer over a project, merged into the tasks a
manifest lists; and the run ``nuvom runworker`` makes before it starts, where the manifest is
missing or older than its task files.

Why a worker discovers by itself: it does not import the project up front, so what it knows
of a task before the task's first job runs is what the manifest says. Without a manifest (a
first start, a fresh checkout) or with one older than the code, a ``concurrency=`` limit
was unknown while the worker claimed its first jobs (a thread pool ran 3 jobs at once of a
task limited to 1), and a ``schedule=`` never fired; a warning said to run ``nuvom discover
tasks``, and a worker started by a process manager logs where nobody reads. The worker runs
that command (static, nothing imported; incremental, so a rerun re-parses only changed
files), with the root and globs the manifest records.
"""

from __future__ import annotations

import logging
import subprocess
import sys
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
    usable_manifest,
)
from nuvom_kernel.hints import parent_project, warned

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["DiscoveryRun", "discover_before_start", "load_at_start", "run_discoverers"]

log = logging.getLogger("nuvom.worker")

#: How long a starting worker waits for its discovery before it stops it and starts.
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


def discover_before_start(kernel: Kernel, stopping: threading.Event | None = None) -> bool:
    """Discover the project's tasks and write the manifest when there is none (or it cannot
    be used) or a task file it names changed after it was written; otherwise do nothing.
    Returns whether the manifest was written.

    The scan is ``nuvom discover tasks`` run as a child process, with the root and globs
    the manifest records: it can be killed. It is waited for up to :data:`WAIT_SECS` (and
    not past a stop signal): a worker started outside its project (a home folder, ``/`` in
    a container) would scan all of it, in the worker's own process, and then act on every
    task found there (fire the schedules of other projects' tasks). Past that the scan is
    stopped, and the worker starts as it would without it, saying why.

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
        return False
    if planned is None:
        return False
    scan, why = planned
    command = [sys.executable, "-m", "nuvom_kernel", "discover", "tasks", "--root",
               str(scan.root), *[f"--include={g}" for g in scan.include],
               *[f"--exclude={g}" for g in scan.exclude]]
    started = time.monotonic()
    try:
        child = subprocess.Popen(command, cwd=Path(kernel.config.root).absolute(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 errors="replace")
    except OSError as exc:
        log.warning("%s, and the task discovery could not start (%s)", why, exc)
        return False
    while True:
        try:
            _, err = child.communicate(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            late = time.monotonic() - started > WAIT_SECS
            if late or (stopping is not None and stopping.is_set()):
                child.kill()
                _, err = child.communicate()
                if child.returncode in (0, 1):  # it ended before the kill: its manifest
                    break  # stands (it was said to be stopped, and used silently next time)
                if late:
                    log.warning("%s, and discovering the tasks under %s took more than %g "
                                "s: stopped, the worker starts without it. A worker started "
                                "outside its project folder? Start it where your tasks are, "
                                "or run `nuvom discover tasks` there once", why, scan.root,
                                WAIT_SECS)
                else:  # said: nothing else tells why no manifest was written
                    log.warning("%s, and the task discovery under %s was stopped by the stop "
                                "signal: the worker stops without it", why, scan.root)
                return False
    # what the command says of the scan (files skipped, duplicates), not what its loading
    # says as this process's did (a plugin that fails to load, a misspelt variable): the
    # worker said that already
    said = set(kernel.pm.failures.values())
    for line in err.splitlines():
        level, _, text = line.partition(": ")
        if level in ("warning", "error") and text not in said and not warned(text):
            log.warning("task discovery: %s", line.removeprefix("warning: "))
    path = manifest_path(Path(kernel.data_dir))
    try:
        found = len((read_manifest(Path(kernel.data_dir)) or {})["tasks"])
    except (ValueError, KeyError):
        found = -1
    if child.returncode not in (0, 1) or found < 0:  # 1: written, with files it skipped
        last = [line for line in err.splitlines() if line.strip()][-1:]
        log.warning("%s, and the task discovery failed (exit status %s%s): the worker starts "
                    "without it", why, child.returncode, f": {last[0]}" if last else "")
        return False
    log.info("%s: discovered %d task(s) under %s in %.2f s and wrote %s", why, found,
             scan.root, time.monotonic() - started, path)
    return True


def _plan(kernel: Kernel) -> tuple[Scan, str] | None:
    """What to scan and why (for the log); ``None`` where nothing is to be done."""
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
        why = _stale(changed, data_dir)
    if not kernel.pm.collect("nuvom_register_discoverers") or not scan.root.is_dir():
        return None
    return scan, why


def _stale(changed: list[str], data_dir: Path) -> str:
    """The task files of :func:`changed_since`, as the start-up log names them."""
    return (f"{len(changed)} task file(s) changed or removed after {manifest_path(data_dir)} "
            f"was written ({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})")


def load_at_start(kernel: Kernel, written: bool, process_pool: bool, quiet: bool = False
                  ) -> None:
    """Load the manifest into the starting worker's registry, and say what the worker does
    not know: tasks in files changed since it was written (``written``: it was just
    written), or any task at all; ``quiet``: say nothing (the worker is stopping)."""
    data_dir, root = Path(kernel.data_dir), Path(kernel.config.root)
    kernel.registry.load_manifest(data_dir, root)
    if quiet:
        return
    # (just written: a file dated in the future would still read as changed)
    changed = [] if written else changed_since(data_dir, root)
    if changed:
        log.warning("%s: a schedule=, a concurrency= or a task added there is unknown to "
                    "this worker, and one removed still known, until `nuvom discover tasks` "
                    "runs again", _stale(changed, data_dir))
    if kernel.registry.names():
        return
    # A process pool's children import the task modules, never this process: without a
    # manifest it knows no schedule, and a limit only once the children ran a job of the
    # task (a hunt ran 12 at once of a task limited to 2, for good). A thread or asyncio
    # pool learns them as it imports each task's module, after claiming its first jobs:
    # two fresh workers ran 3 jobs at once of a task limited to 1.
    above = parent_project(root, data_dir, kernel.config.path is not None)
    log.warning("%s, so this worker knows schedules from %s alone, %s, and a task's "
                "concurrency limit only after its first jobs were claimed: run `nuvom "
                "discover tasks` where it finds your tasks (--root, --include; and again "
                "after changing a task's options)%s",
                "the process pool imports task modules in its children only" if process_pool
                else "no task is imported yet (a task's module is imported when its first "
                "job runs)", manifest_path(data_dir),
                "which lists no task" if usable_manifest(data_dir) else "and there is none",
                "" if above is None else
                f". A folder above this one, {above}, holds a Nuvom project: each folder has "
                f"its own store (.nuvom/), so a worker started here serves none of its jobs; "
                f"start it there (cd {above})")
