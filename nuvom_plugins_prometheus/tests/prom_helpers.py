"""Shared by the plugin's tests: a project directory, a real worker process, a scrape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

TASKS = """
import time
from nuvom_kernel import task

@task
def add(x, y):
    return x + y

@task(retries=1, retry_delay_secs=0)
def flaky():
    raise ValueError("always")

@task(timeout_secs=0.2)
def sleepy():
    time.sleep(1.0)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as cwd, importable, no ``NUVOM_*`` from the caller.
    (A fixture here, not in a conftest.py: test folders of several distributions run in
    one pytest process, and other folders' tests import their own ``conftest``.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in os.environ if k.startswith("NUVOM_")]:
        monkeypatch.delenv(key)
    return tmp_path


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, 0.2)


def start_worker(project: Path, env: dict[str, str], *args: str
                 ) -> tuple[subprocess.Popen[bytes], Path]:
    """``nuvom runworker`` in ``project``, its output going to a file (read while it runs)."""
    log = project / f"worker-{len(list(project.glob('worker-*.log')))}.log"
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(env)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker", *args],
                                cwd=project, env=full, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def served_port(log: Path, timeout: float = 30) -> int:
    found = wait_until(
        lambda: re.search(r"serving Prometheus metrics on http://[\d.]+:(\d+)/metrics",
                          log.read_text()), timeout, "the worker to serve /metrics")
    return int(found.group(1))  # type: ignore[attr-defined]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one real HTTP scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
