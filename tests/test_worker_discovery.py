"""``nuvom runworker`` discovering the project's tasks at start: a scan that outlasts its
wait does not hold up the start, and what it finds still reaches the running worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import discovery_run
from tests.helpers import (
    alive,
    read_until_started,
    run_nuvom,
    start_worker,
    stop_worker,
    wait_until,
    worker_starts_and_stops,
)

SLOW_DISCOVERER = """
import os, pathlib, time
from nuvom_kernel import hookimpl
from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef


class Slow(Discoverer):
    # as a scan of a home folder would be: it never ends by itself
    name = "slow"

    def discover(self, root, *, include=(), exclude=(), state=None):
        pathlib.Path("scanning.pid").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)


@hookimpl
def nuvom_register_discoverers():
    return [Slow]
"""


def _start_with_a_slow_discoverer(project: Path) -> subprocess.Popen[str]:
    """``nuvom runworker`` in ``project``, whose only discoverer never ends its scan."""
    (project / "slow_discoverer.py").write_text(SLOW_DISCOVERER)
    (project / ".nuvom_plugins.toml").write_text('[plugins]\ndiscoverer = ["slow_discoverer"]\n')
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
           "NUVOM_DISABLE_PLUGINS": "discovery", "NUVOM_LOG_LEVEL": "INFO"}
    return start_worker(project, env, "--workers", "1")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_discovery_that_outlasts_its_wait_is_stopped_and_the_worker_starts(
        project: Path) -> None:
    """A worker started outside its project (a home folder, ``/`` in a container) scanned
    all of it before it started, then acted on every task found there (the schedules of
    other projects). Past WAIT_SECS the scan is stopped and the worker starts without it."""
    worker = _start_with_a_slow_discoverer(project)
    try:
        seen = "".join(read_until_started(worker, timeout=discovery_run.WAIT_SECS + 50))
        assert " started: " in seen, seen
        assert (f"discovering the tasks under {project} took more than "
                f"{discovery_run.WAIT_SECS:g} s: stopped, the worker starts without it") \
            in seen, seen
        scanner = int((project / "scanning.pid").read_text())
        assert not alive(scanner), "the scan goes on beside the worker"
        assert not (project / ".nuvom" / "manifest.json").exists()
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out


def test_a_manifest_discovered_from_another_root_is_rescanned_with_it(project: Path) -> None:
    """`nuvom discover tasks --root src --exclude legacy`: the stale check read the task
    files relative to the project, found none, and never said the manifest was stale; a
    rescan must keep the same root and globs (the excluded task stays out)."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    (project / "src" / "legacy").mkdir(parents=True)
    (project / "src" / "jobs.py").write_text(
        "from nuvom_kernel import task\n\n\n@task(concurrency=2)\ndef crawl(i):\n    return i\n")
    (project / "src" / "legacy" / "old.py").write_text(
        "from nuvom_kernel import task\n\n\n@task\ndef old():\n    return 1\n")
    done = run_nuvom(["discover", "tasks", "--root", "src", "--exclude", "legacy"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = project / ".nuvom" / "manifest.json"
    assert json.loads(manifest.read_text())["scan"] == {
        "root": "src", "include": [], "exclude": ["legacy"]}
    (project / "src" / "jobs.py").write_text(
        "from nuvom_kernel import task\n\n\n@task(concurrency=1)\ndef crawl(i):\n    return i\n")
    written = manifest.stat().st_mtime
    os.utime(project / "src" / "jobs.py", (written + 1, written + 1))
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    said = worker_starts_and_stops(project, env, "--workers", "1")
    assert "1 task file(s) changed or removed after " in said and "(jobs.py): discovered 1 " \
        f"task(s) under {project / 'src'}" in said, said
    tasks = json.loads(manifest.read_text())["tasks"]
    assert [(t["name"], t["options"]) for t in tasks] == [("crawl", {"concurrency": 1})]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_stop_signal_during_the_discovery_stops_it_at_once(project: Path) -> None:
    """The worker waited out the whole scan wait (10 s) after a Ctrl-C, then started its
    pool, and only then drained: a supervisor's stop timeout may be shorter."""
    worker = _start_with_a_slow_discoverer(project)
    try:
        wait_until((project / "scanning.pid").exists, timeout=30, what="the scan to begin")
        worker.send_signal(signal.SIGINT)
        out, _ = worker.communicate(timeout=discovery_run.WAIT_SECS - 3)
    finally:
        worker.kill()
    assert worker.returncode == 0, out
    assert not alive(int((project / "scanning.pid").read_text())), out
    # said so, and not told to run the discovery the operator just stopped
    assert f"and the task discovery under {project} was stopped by the stop signal: the " \
           "worker stops without it" in out, out
    assert "run `nuvom discover tasks`" not in out, out


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_src_layout_project_runs_the_tasks_its_manifest_names(project: Path, pool: str
                                                                ) -> None:
    """Discovery names ``src/shop/jobs.py`` ``shop.jobs`` (src/ is the import root), but a
    project not installed into its environment could not import that: `nuvom enqueue`
    failed with ``No module named 'shop'``, and the worker failed the job saying to run it
    from the project folder, where it ran."""
    (project / "src" / "shop").mkdir(parents=True)
    (project / "src" / "shop" / "jobs.py").write_text(
        "from nuvom_kernel import task\n\n\n@task\ndef src_double(x):\n    return 2 * x\n")
    worker = start_worker(project, {}, "--workers", "1", "--pool", pool)
    try:
        seen = "".join(read_until_started(worker))
        assert " started: " in seen, seen
        done = run_nuvom(["enqueue", "src_double", "--args", "[21]", "--wait", "60"], project)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[-1] == "42"
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_an_installed_copy_of_a_src_layout_project_comes_first(project: Path, pool: str,
                                                                tmp_path_factory: Any) -> None:
    """The import root goes after the environment's entries, in the process pool's children
    too: they had put it first, and ran other code than the thread pool did."""
    source = ("import pathlib\nfrom nuvom_kernel import task\n\n\n@task\n"
              "def src_where():\n    return str(pathlib.Path(__file__).parent.parent)\n")
    for root in (project / "src", installed := tmp_path_factory.mktemp("site")):
        (root / "shop").mkdir(parents=True)
        (root / "shop" / "jobs.py").write_text(source)
    worker = start_worker(project, {"PYTHONPATH": str(installed)}, "--workers", "1",
                          "--pool", pool)
    try:
        seen = "".join(read_until_started(worker))
        assert " started: " in seen, seen
        done = run_nuvom(["enqueue", "src_where", "--wait", "60"], project,
                         PYTHONPATH=str(installed))
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout.splitlines()[-1]) == str(installed)
    finally:
        out = stop_worker(worker)
    assert worker.returncode == 0, out


def test_a_removed_task_file_is_discovered_away_where_the_sources_are(project: Path) -> None:
    """A deleted task module stayed in the manifest: its schedule kept firing jobs that
    failed as unknown tasks, and every process-pool child said it could not import it.
    A manifest shipped without any of its sources is left as it is."""
    pytest.importorskip("nuvom_plugins")  # the 'ast' discoverer
    (project / "jobs.py").write_text(
        "from nuvom_kernel import task\n\n\n@task\ndef crawl(i):\n    return i\n")
    (project / "reports.py").write_text(
        "from nuvom_kernel import every, task\n\n\n"
        "@task(schedule=every(minutes=5))\ndef nightly():\n    return 1\n")
    done = run_nuvom(["discover", "tasks"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = project / ".nuvom" / "manifest.json"
    shipped = manifest.read_text()
    assert sorted(t["name"] for t in json.loads(shipped)["tasks"]) == ["crawl", "nightly"]
    (project / "reports.py").unlink()
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    said = worker_starts_and_stops(project, env, "--pool", "process", "--workers", "1")
    assert "1 task file(s) changed or removed after " in said and "(reports.py): " \
        "discovered 1 task(s)" in said, said
    assert "cannot import" not in said, said
    assert [t["name"] for t in json.loads(manifest.read_text())["tasks"]] == ["crawl"]

    manifest.write_text(shipped)
    (project / "jobs.py").unlink()
    said = worker_starts_and_stops(project, env, "--workers", "1")
    assert "changed or removed after" not in said and ": discovered " not in said, said
    assert manifest.read_text() == shipped
