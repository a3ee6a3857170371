"""A full disk, for real: a 2 MB tmpfs filled to the last byte (root only, else skipped).

What a user met before: ``nuvom purge results`` (what one runs to make room), ``nuvom cancel
job`` and ``nuvom retry job`` ended in a 34-37-line traceback of SQLite's bare "database or
disk is full", because the CLI prints only Nuvom errors as one line; a new database on a
full disk, or a ``path`` naming a folder, was met with "Make its folder writable".
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_helpers import msg, run_nuvom

from nuvom_kernel.errors import EnqueueError, NuvomError, SerializationError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend, SQLiteUnavailableError

TASKS = """
from nuvom_kernel import task


@task
def echo(x):
    return x
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 2 MB tmpfs: filling it gives the real ``ENOSPC`` a full disk gives."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # a straggler's file


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte with one file; delete that file to free the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bfree == 0
    return filler


def empty_wal(db: Path) -> None:
    """Copy the ``-wal`` into the database and cut it to 0 bytes, so that the next write
    must grow it (else it may reuse frames already on the disk); the backends' connections
    stay open, so the ``-shm`` stays (a process opening the database maps it)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    assert Path(f"{db}-wal").stat().st_size == 0


def assert_full_message(text: str, db: Path) -> None:
    assert f"database {db} is full, or your disk quota on it is used up" in text, text
    assert f"Free space on the file system of {db.parent} first" in text, text
    assert "`nuvom purge results --older-than ...` fails too until then" in text, text


def test_cli_commands_on_a_full_disk_print_one_error_line(small_disk: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """``purge results``, ``cancel job`` and ``retry job`` through the real ``nuvom``
    script: one ``Error:`` line naming the file, the cause and what to do; exit 1."""
    project = small_disk / "proj"
    project.mkdir()
    (project / "disk_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(project))
    sys.modules.pop("disk_tasks", None)
    from disk_tasks import echo  # type: ignore[import-not-found]

    kernel = Kernel(root=project, environ={})
    try:
        with use_kernel(kernel):
            finished = echo.delay("finished")
            assert kernel.cancel(finished)  # a CANCELLED record: to retry and to purge
            waiting = echo.delay("waiting")  # to cancel
        db = project / ".nuvom" / "nuvom.db"
        empty_wal(db)
        filler = fill(small_disk)
        for args in (["purge", "results", "--older-than", "0s"],
                     ["cancel", "job", waiting.id], ["retry", "job", finished.id]):
            done = run_nuvom(args, project)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1, (args, done)
            assert "Traceback" not in done.stderr, (args, done.stderr)
            assert len(lines) == 1 and lines[0].startswith("Error: "), (args, done.stderr)
            assert_full_message(lines[0], db)
        with use_kernel(kernel):  # the producer's error says whose jobs were refused too
            for enqueue in (lambda: echo.delay("x" * 10_000),
                            lambda: echo.map([("y" * 10_000,)] * 50)):
                with pytest.raises(NuvomError) as refused:
                    enqueue()
                assert type(refused.value).__name__ == "DatabaseFullError", refused.value
                assert_full_message(str(refused.value), db)
                assert any("job(s) of task 'echo'" in note
                           for note in refused.value.__notes__), refused.value.__notes__
        filler.unlink()
        done = run_nuvom(["purge", "results", "--older-than", "0s"], project)
        assert done.returncode == 0, done.stderr  # with room again, the purge runs
        assert "purged 1 job record(s)" in done.stdout, done.stdout
    finally:
        kernel.close()


def _record(job_id: str) -> JobRecord:
    return JobRecord(job_id=job_id, task="add", status=JobStatus.SUCCEEDED,
                     updated_at=time.time() - 60)


#: Writes of both backends: single statements (``Database.write``) and transactions.
WRITES: dict[str, Callable[[SQLiteJobQueue, SQLiteResultBackend], Any]] = {
    "push one": lambda q, r: q.push([msg("new")]),
    "push a batch": lambda q, r: q.push([msg("new1"), msg("new2")]),
    "claim": lambda q, r: q.claim(1),
    "cancel": lambda q, r: q.cancel("queued"),
    "clear": lambda q, r: q.clear(),
    "put": lambda q, r: r.put(_record("new")),
    "put_many": lambda q, r: r.put_many([_record("new1"), _record("new2")]),
    "purge": lambda q, r: r.purge(time.time()),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_on_a_full_disk_raises_one_clear_error(small_disk: Path,
                                                           write: str) -> None:
    """Each raises the plugin's :class:`DatabaseFullError` (an ``EnqueueError``, as a
    full disk's ``.delay()`` raised before), never a ``SerializationError`` (the worker's
    settler would fail the job for good instead of retrying once there is room), and the
    same call succeeds once space is freed."""
    db = small_disk / "nuvom.db"
    queue, results = SQLiteJobQueue(db), SQLiteResultBackend(db)
    try:
        queue.push([msg("queued")])
        results.put(_record("old"))
        empty_wal(db)
        filler = fill(small_disk)
        with pytest.raises(NuvomError) as full:
            WRITES[write](queue, results)
        assert type(full.value).__name__ == "DatabaseFullError", full.value
        assert isinstance(full.value, EnqueueError)
        assert not isinstance(full.value, SerializationError)
        assert isinstance(full.value.__cause__, sqlite3.OperationalError)
        assert_full_message(str(full.value), db)
        filler.unlink()
        WRITES[write](queue, results)
    finally:
        queue.close()
        results.close()


def _refusal(db: Path) -> str:
    """The message of the error a first read of ``db`` raises (it must raise)."""
    queue = SQLiteJobQueue(db)
    try:
        with pytest.raises(SQLiteUnavailableError) as refused:
            queue.qsize()
    finally:
        queue.close()
    return str(refused.value)


def test_a_new_database_on_a_full_disk_is_told_to_free_space(small_disk: Path) -> None:
    """Not "Make its folder writable": the folder was writable, the disk was full."""
    fill(small_disk)
    text = _refusal(small_disk / "data" / "nuvom.db")
    assert "The disk holding it is full, or your disk quota on it is used up. Free space " \
        f"on the file system of {small_disk}" in text, text
    assert "writable" not in text, text


def test_an_existing_database_on_a_full_disk_is_told_to_free_space(small_disk: Path) -> None:
    """Opened by the first process after every other closed it, a database needs a new
    ``-shm``, which SQLite reports on a full disk as "disk I/O error" (SQLITE_IOERR_SHMSIZE)."""
    db = small_disk / "nuvom.db"
    queue = SQLiteJobQueue(db)
    queue.push([msg("queued")])
    queue.close()
    assert not Path(f"{db}-shm").exists()
    fill(small_disk)
    text = _refusal(db)
    assert "The disk holding it is full" in text and "writable" not in text, text


def test_a_path_naming_a_folder_is_told_to_name_a_file(tmp_path: Path) -> None:
    """``NUVOM_PLUGINS__SQLITE__PATH`` set to the data folder instead of a file in it."""
    folder = tmp_path / "data"
    folder.mkdir()
    done = run_nuvom(["status"], tmp_path, NUVOM_PLUGINS__SQLITE__PATH=str(folder))
    assert done.returncode == 1, done
    assert done.stderr.startswith("Error: "), done.stderr
    assert f"{folder} is a folder: the setting must name a file (for example " \
        f"{folder / 'nuvom.db'})" in done.stderr, done.stderr
    assert "writable" not in done.stderr, done.stderr
