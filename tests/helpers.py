"""Helpers shared by the kernel's tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.testing.contracts._support import wait_until as _wait_until

if TYPE_CHECKING:
    from nuvom_kernel.job import Job
    from nuvom_kernel.kernel import Kernel

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def installed_backends(hook: str = "nuvom_register_queue_backends") -> set[str]:
    pm = NuvomPluginManager()
    from nuvom_kernel.config import load_config

    pm.load(load_config(FIXTURES / "empty"), environ={})
    return set(pm.collect(hook))


#: Backends the end-to-end tests run on: every installed one of these joins automatically.
E2E_BACKENDS = [b for b in ("memory", "sqlite", "file", "redis", "postgres")
                if b in installed_backends()]
PERSISTENT_BACKENDS = [b for b in E2E_BACKENDS if b != "memory"]
#: Backends on a shared server: tests isolate themselves with a namespace.
SERVER_BACKENDS = [b for b in E2E_BACKENDS if b in ("redis", "postgres")]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
               ) -> object:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    return _wait_until(predicate, timeout, f"timed out waiting for {what}")




def run_worker_until(kernel: Kernel, done: Callable[[], object], what: str,
                     workers: int = 1, timeout: float = 20.0,
                     queues: Sequence[str] | None = None) -> None:
    """Start a worker pool in this process, wait until ``done()``, then stop it (drained)."""
    from nuvom_kernel import Worker

    worker = Worker(kernel, workers=workers, scheduler=False, poll_timeout_secs=0.05,
                    queues=queues)
    worker.start()
    try:
        wait_until(done, timeout, what)
    finally:
        worker.stop()
        worker.join()


def drain(kernel: Kernel, *jobs: Job) -> None:
    """Run a worker until every one of ``jobs`` has SUCCEEDED."""
    from nuvom_kernel import JobStatus

    run_worker_until(kernel, lambda: all(j.refresh().status is JobStatus.SUCCEEDED
                                         for j in jobs), "the jobs to finish")


def write_module(project: Path, name: str, source: str) -> str:
    """Write ``name``.py into the project and forget any stale import of it."""
    (project / f"{name}.py").write_text(source)
    sys.modules.pop(name, None)
    return name


#: The ``nuvom`` console script of the environment running the tests (``pip install``
#: puts it next to the interpreter): what a user types, with its own ``sys.path``.
NUVOM = Path(sys.executable).parent / ("nuvom.exe" if os.name == "nt" else "nuvom")


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no ``NUVOM_*`` left over from the test run and no
    ``PYTHONPATH`` (which would hide whether the project folder is importable on its own)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
    return {**env, **extra}


def run_nuvom(args: list[str], cwd: Path, timeout: float = 120, **env: str
              ) -> subprocess.CompletedProcess[str]:
    """Run the real ``nuvom`` command from ``cwd``, as a user would from a terminal."""
    assert NUVOM.exists(), f"{NUVOM} is missing: install the kernel (pip install -e .)"
    return subprocess.run([str(NUVOM), *args], cwd=cwd, env=user_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_worker(project: Path, environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``python -m nuvom_kernel runworker`` in ``project`` with only ``environ``'s ``NUVOM_*``
    settings (none left over from the test run); output and errors on one text pipe."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    full.update(environ)
    return subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker", *args],
                            cwd=project, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until_started(worker: subprocess.Popen[str], timeout: float = 60.0) -> list[str]:
    """The lines a :func:`start_worker` process prints up to its "started" line, its output's
    end (it exited) or ``timeout``; the caller asserts on them. Read on a thread: a blocking
    ``readline`` would outwait any deadline if the worker hung before its next line."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in worker.stdout or ():
            lines.put(line)
            if " started: " in line:
                return
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True, name="read-until-started").start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if " started: " in line or not line:
            break
    return seen


def worker_starts_and_stops(project: Path, environ: dict[str, str], *args: str) -> str:
    """Start ``nuvom runworker`` (:func:`start_worker`), wait for its "started" line, stop
    it with SIGINT; its whole output, once it is asserted that it started and exited 0."""
    worker = start_worker(project, environ, *args)
    seen: list[str] = []
    try:
        seen = read_until_started(worker)
    finally:
        out = "".join(seen) + stop_worker(worker)
    assert any(" started: " in line for line in seen), out
    assert worker.returncode == 0, out
    return out


def stop_worker(worker: subprocess.Popen[str]) -> str:
    """SIGINT a ``nuvom runworker`` process (a clean drain) and return its output; kill it
    if it has not stopped after 30 s, so a hung worker fails the test instead of hanging."""
    worker.send_signal(signal.SIGINT)
    try:
        out, _ = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, _ = worker.communicate()
    return out


#: The plugin author's guide; its marked code blocks are what the tests run.
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing_plugins.md"


def guide_block(marker: str, lang: str = "python") -> str:
    """The fenced block right after ``<!-- scaffold-test: marker -->`` in the guide."""
    match = re.search(rf"<!-- scaffold-test: {re.escape(marker)} -->\n```{lang}\n(.*?)\n```",
                      GUIDE.read_text(), re.S)
    assert match, f"docs/writing_plugins.md has no {lang or 'plain'} block marked {marker!r}"
    return match.group(1) + "\n"


def guide_code(path: str) -> str:
    """The guide's code for the file ``path`` of a scaffolded distribution."""
    return guide_block(path)


def fake_distribution(site: Path, plugin: str, source: str, version: str = "0.1") -> Path:
    """An installed plugin distribution ``nuvom-plugins-<plugin>`` in the folder ``site``:
    its module ``nuvom_fake_<plugin>`` holding ``source`` and a real ``.dist-info`` whose
    entry point ``<plugin>`` (group ``nuvom``) names it, exactly what ``pip install`` leaves.

    ``site`` joins ``sys.path`` through ``PYTHONPATH`` (a subprocess) or
    ``monkeypatch.syspath_prepend`` (this process), and ``importlib.metadata`` finds it like
    any installed distribution. Returns ``site``.
    """
    module = f"nuvom_fake_{plugin}"
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"nuvom_plugins_{plugin}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: nuvom-plugins-{plugin}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[nuvom]\n{plugin} = {module}\n")
    sys.modules.pop(module, None)
    return site


def edit_sqlite_cell(path: Path, table: str, column: str, row_id: str, value: object
                     ) -> Callable[[], None]:
    """Set one cell of the row ``id = row_id`` as a hand edit or a disk fault would (another
    connection, outside the backend); how to put it back as it was."""
    def write(cell: object) -> None:
        db = sqlite3.connect(path)
        with db:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (cell, row_id))
        db.close()

    db = sqlite3.connect(path)
    saved = db.execute(f"SELECT {column} FROM {table} WHERE id = ?", (row_id,)).fetchone()[0]
    db.close()
    write(value)
    return lambda: write(saved)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not reaped yet, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
