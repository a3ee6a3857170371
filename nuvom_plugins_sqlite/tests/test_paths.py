"""Where ``[plugins.sqlite] path`` points: resolved once, and the same file however named.

A relative path (``path = ".nuvom/nuvom.db"``, as docs/configuration.md shows) was opened
against the working directory of each new connection: after a task's ``os.chdir()`` a
worker's next connection made an empty database in the task's folder ("no such table:
nuvom_queue"). ``~`` made a folder named ``~``. And a producer naming the database through
a symlink sent its wake-ups to ``<symlink>-wake/``, where no worker listened.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from sqlite_helpers import msg, start_worker, stop_worker

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend, SQLiteSettings
from nuvom_plugins_sqlite.wakeup import WAKEUPS_SUPPORTED


def test_paths_are_made_absolute_once_when_parsed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative to the working directory when the settings are read (the project folder,
    as the data folder is); ``~`` expanded; the default's data folder made absolute too."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    parsed = SQLiteSettings.parse({"path": ".nuvom/nuvom.db", "results_path": "~/r.db"},
                                  BackendContext())
    assert parsed.path == tmp_path / ".nuvom" / "nuvom.db"
    assert parsed.results_path == home / "r.db"
    shared = SQLiteSettings.parse({"path": "~/q.db"}, BackendContext())
    assert shared.path == shared.results_path == home / "q.db"
    default = SQLiteSettings.parse({}, BackendContext(data_dir=Path("data")))
    assert default.path == tmp_path / "data" / "nuvom.db"


def test_a_tilde_path_is_the_home_folder_not_a_folder_named_tilde(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    queue = SQLiteJobQueue("~/q.db")
    try:
        queue.push([msg("a")])
    finally:
        queue.close()
    assert (home / "q.db").is_file()
    assert not (tmp_path / "~").exists()


def test_a_producer_that_changes_directory_keeps_its_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup from a new thread (a new connection) after ``os.chdir()`` read an empty
    file in the new folder while enqueues still went to the first one."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    queue = SQLiteJobQueue("q.db")
    results = SQLiteResultBackend("q.db")
    try:
        queue.push([msg("a")])
        monkeypatch.chdir(elsewhere)
        seen: list[object] = []

        def look() -> None:
            try:
                message = queue.peek("a")
                seen.append(None if message is None else message.id)
                seen.append(results.get("a"))
            except Exception as exc:  # the failure to report, not to lose in the thread
                seen.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        assert seen == ["a", None], seen
    finally:
        queue.close()
        results.close()
    assert os.listdir(elsewhere) == []


TASKS = """
import os

from nuvom_kernel import get_job, task


@task(store_result=True)
def work_in(folder):
    os.chdir(folder)  # e.g. a build step that works inside a checkout
    return os.getcwd()


@task(store_result=True)
def chdir_add(x, y):  # a name of its own: task names are one registry per test session
    return x + y


@task(store_result=True)
def status_of(job_id):
    return str(get_job(job_id).status)
"""


def test_a_worker_whose_task_changes_directory_keeps_its_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented relative path, a real ``nuvom runworker``: after one task's
    ``os.chdir()``, a later task's ``get_job()`` failed with "no such table: nuvom_queue",
    and ``.nuvom/nuvom.db`` and ``nuvom.db-wake/`` appeared in the task's folder."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / ".nuvom_plugins.toml").write_text('[plugins.sqlite]\npath = ".nuvom/nuvom.db"\n')
    (project / "chdir_tasks.py").write_text(TASKS)
    monkeypatch.chdir(project)  # the producer reads the same relative path from here
    monkeypatch.syspath_prepend(str(project))
    sys.modules.pop("chdir_tasks", None)
    from chdir_tasks import chdir_add, status_of, work_in  # type: ignore[import-not-found]

    worker = start_worker(project, "--workers", "1")
    kernel = Kernel(root=project, environ={})
    try:
        with use_kernel(kernel):
            assert work_in.delay(str(elsewhere)).get(timeout=60) == str(elsewhere)
            added = chdir_add.delay(1, 2)
            assert added.get(timeout=60) == 3
            assert status_of.delay(added.id).get(timeout=60) == "SUCCEEDED"
    finally:
        kernel.close()
        out = stop_worker(worker)
    assert os.listdir(elsewhere) == [], out
    assert (project / ".nuvom" / "nuvom.db").is_file()


@pytest.mark.skipif(not WAKEUPS_SUPPORTED, reason="cross-process wake-ups are Linux-only")
def test_a_producer_naming_the_database_through_a_symlink_wakes_its_waiters(
        tmp_path: Path) -> None:
    """The wake-up folder follows the file's real path: a worker naming the file and a
    producer naming a symlink to it meet in one folder (the pickup waited for the worker's
    timed claim: 10x slower)."""
    real = tmp_path / "data" / "real.db"
    link = tmp_path / "link.db"
    waiter_side = SQLiteJobQueue(real)
    waiter_side.qsize()  # the file exists before the link to it
    link.symlink_to(real)
    producer_side = SQLiteJobQueue(link)
    try:
        listener = waiter_side._waker.listener()
        assert listener is not None
        sock, _ = listener
        producer_side.push([msg("a")])
        producer_side.notify()
        assert waiter_side._waker.wait(sock, 10.0), "the waiter was not woken"
    finally:
        producer_side.close()
        waiter_side.close()
    assert not Path(f"{link}-wake").exists()
