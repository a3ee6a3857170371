"""``nuvom runworker`` discovering the project's tasks at start: a scan that outlasts its
wait does not hold up the start, and what it finds still reaches the running worker."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from nuvom_kernel import discovery_run
from tests.helpers import (
    read_until_started,
    run_nuvom,
    start_worker,
    wait_until,
    worker_starts_and_stops,
)

SLOW_DISCOVERER = """
import time
from nuvom_kernel import hookimpl
from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef


class Slow(Discoverer):
    # as a scan of a home folder would be, until the test says "go"
    name = "slow"

    def discover(self, root, *, include=(), exclude=(), state=None):
        while not (root / "go").exists():
            time.sleep(0.05)
        ref = TaskRef(name="crawl", module="jobs", file="jobs.py", line=4,
                      options={"concurrency": 1})
        return DiscoveryReport(tasks=[ref], files_scanned=1, files_parsed=1), {}


@hookimpl
def nuvom_register_discoverers():
    return [Slow]
"""


def test_a_slow_discovery_lets_the_worker_start_and_writes_the_manifest_later(
        project: Path) -> None:
    """A worker started outside its project (a home folder) scanned all of it before it
    started; it waits WAIT_SECS, then starts and lets the scan finish beside it."""
    (project / "slow_discoverer.py").write_text(SLOW_DISCOVERER)
    (project / ".nuvom_plugins.toml").write_text('[plugins]\ndiscoverer = ["slow_discoverer"]\n')
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
           "NUVOM_DISABLE_PLUGINS": "discovery", "NUVOM_LOG_LEVEL": "INFO"}
    manifest = project / ".nuvom" / "manifest.json"
    worker = start_worker(project, env, "--workers", "1")
    later: list[str] = []
    try:
        seen = "".join(read_until_started(worker, timeout=discovery_run.WAIT_SECS + 50))
        assert " started: " in seen, seen
        assert (f"discovering the tasks under {project} takes more than "
                f"{discovery_run.WAIT_SECS:g} s: the worker starts now") in seen, seen
        assert not manifest.exists() and "concurrency limits" not in seen
        pump = threading.Thread(target=lambda: later.extend(worker.stdout or ()), daemon=True)
        pump.start()
        (project / "go").touch()
        wait_until(lambda: any("concurrency limits: crawl=1" in line for line in list(later)),
                   timeout=30, what="the running worker to apply the late manifest's limit")
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        finally:
            worker.kill()
    out = "".join(later)
    assert [t["name"] for t in json.loads(manifest.read_text())["tasks"]] == ["crawl"]
    assert "no manifest at " in out and ": discovered 1 task(s) under " in out, out
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
    assert "1 task file(s) changed after " in said and "(jobs.py): discovered 1 task(s) " \
        f"under {project / 'src'}" in said, said
    tasks = json.loads(manifest.read_text())["tasks"]
    assert [(t["name"], t["options"]) for t in tasks] == [("crawl", {"concurrency": 1})]
