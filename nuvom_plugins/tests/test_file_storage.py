"""The file backends on storage that fails them: a full disk, a read-only mount, a path
that runs through a file. Real file systems throughout: a small tmpfs (mounting needs root;
the tests that need one are skipped without it) filled by the pushes themselves and
remounted read-only, and ``nuvom`` run as a separate process for what a user sees."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel.errors import ConfigError, EnqueueError
from nuvom_kernel.models import JobRecord, JobStatus, Message
from nuvom_plugins.file import (
    FileJobQueue,
    FileResultBackend,
    FileStorePathError,
    FileStoreUnavailableError,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file systems")

#: Wall-clock bound on one ``nuvom`` command (a worker that wrongly started would run on).
CLI_TIMEOUT = 60.0


@contextlib.contextmanager
def mounted_tmpfs(target: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` at ``target`` (skips the test where this process cannot
    mount one), unmounted afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (these tests fill and remount a real one)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): "
                    f"{done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only(mount: Path) -> Iterator[None]:
    """``mount`` remounted read-only for the block, read-write again after."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mount:
        yield mount


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def markers(queue: FileJobQueue) -> list[str]:
    return sorted(n for n in os.listdir(queue.path / "ids") if not n.startswith("."))


# --- a full disk ---------------------------------------------------------------------------


def test_a_batch_refused_for_lack_of_space_leaves_nothing_and_frees_its_space(
        tmpfs: Path) -> None:
    """All or none includes the disk space: a refused ``.map()`` used to leave a hard-linked
    id marker per message it had written, holding their bytes, so the disk stayed full and
    the next ``.delay()`` failed too, although nothing was enqueued."""
    queue = FileJobQueue(tmpfs / "q", fsync=False)
    assert queue.push([Message(id="kept", body=b"k" * 4096)]) == [True]  # an earlier push
    before = free_bytes(tmpfs)
    batch = [Message(id="kept", body=b"again"),  # queued already: not this push's marker
             *(Message(id=f"m{i}", body=bytes([i]) * 8192) for i in range(200))]  # > 1 MiB
    with pytest.raises(FileStoreUnavailableError) as refused:  # the folder named, not a
        queue.push(batch)  # raw OSError the kernel could only blame on .nuvom in general
    assert isinstance(refused.value.__cause__, OSError)
    assert refused.value.__cause__.errno == errno.ENOSPC
    assert f"folder {queue.path}" in str(refused.value), refused.value
    assert "No space left on device (ENOSPC)" in str(refused.value), refused.value
    assert markers(queue) == ["kept"], "the refused push left markers behind"
    assert os.stat(queue.path / "ids" / "kept").st_nlink == 2, "another push's marker went"
    assert os.listdir(queue.path / "staging") == [] and os.listdir(queue.path / "batches") == []
    assert free_bytes(tmpfs) >= before - 16 * 1024, \
        f"the refused push still holds {before - free_bytes(tmpfs):,} bytes"
    assert queue.qsize() == 1 and queue.peek_state("m0") is None
    # The space is usable at once, by anyone, and the refused ids are free.
    assert FileJobQueue(tmpfs / "q", fsync=False).push(
        [Message(id="later", body=b"l" * 65536)]) == [True]
    assert queue.push(batch[:40]) == [False] + [True] * 39
    assert sorted(lease.id for lease in queue.claim(100)) == sorted(
        ["kept", "later", *(f"m{i}" for i in range(39))])


# --- a read-only mount ---------------------------------------------------------------------


def test_a_read_only_store_can_be_looked_at_but_not_worked_on(tmpfs: Path) -> None:
    """A store that exists opens on a read-only mount, and every look works (``status``,
    ``inspect``, ``history``); a worker's check refuses it, naming the folder, the cause
    and the setting, and it is no configuration error (the setting is right)."""
    queue = FileJobQueue(tmpfs / "q", fsync=False)
    queue.push([Message(id="a", body=b"body-a", task="limited"),
                Message(id="b", body=b"body-b", available_at=4e9)])
    queue.set_concurrency_limits({"limited": 1})
    results = FileResultBackend(tmpfs / "r")
    results.put(JobRecord(job_id="done", task="add", status=JobStatus.SUCCEEDED))
    queue.close()
    results.close()
    with read_only(tmpfs):
        queue = FileJobQueue(tmpfs / "q", fsync=False)
        results = FileResultBackend(tmpfs / "r")
        try:
            assert queue.qsize() == 2 and queue.peek_state("a") is JobStatus.QUEUED
            peeked = queue.peek("a")
            assert peeked is not None and peeked.body == b"body-a"
            stats = queue.stats()
            assert (stats.queues["default"].ready, stats.queues["default"].delayed) == (1, 1)
            assert queue.task_counts(["limited"]) == {"limited": (0, 1)}
            assert queue.waiting_steps() == 0
            found = results.get("done")
            assert found is not None and found.status is JobStatus.SUCCEEDED
            assert [r.job_id for r in results.query()] == ["done"]
            assert results.live_workers() == []
            for backend, setting in ((queue, "NUVOM_PLUGINS__FILE__PATH"),
                                     (results, "NUVOM_PLUGINS__FILE__RESULTS_PATH")):
                with pytest.raises(FileStoreUnavailableError) as refused:
                    backend.check_writable()
                text = str(refused.value)
                assert f"folder {backend.path} is not writable" in text, text
                assert "Read-only file system (EROFS)" in text and setting in text, text
                assert ".tmp-" not in text, "names a temp file the user never saw"
                assert not isinstance(refused.value, ConfigError)
                assert isinstance(refused.value.__cause__, OSError)
        finally:
            queue.close()
            results.close()


def test_a_store_that_cannot_be_created_is_one_error_naming_path_cause_and_setting(
        tmpfs: Path) -> None:
    """Opening a store whose folder is missing on a read-only mount raised the bare
    ``OSError`` (a traceback from every command); now an ``EnqueueError`` (``.delay()``
    callers catch it) that is no configuration error, with the raw error as its cause."""
    with read_only(tmpfs):
        for make, path, setting in (
                (lambda p: FileJobQueue(p, fsync=False), tmpfs / "q",
                 "[plugins.file] path (or queue_path) in .nuvom_plugins.toml, or "
                 "NUVOM_PLUGINS__FILE__PATH"),
                (FileResultBackend, tmpfs / "r",
                 "[plugins.file] results_path in .nuvom_plugins.toml, or "
                 "NUVOM_PLUGINS__FILE__RESULTS_PATH")):
            with pytest.raises(FileStoreUnavailableError) as refused:
                make(path)
            text = str(refused.value)
            assert text.startswith(f"the 'file' {'queue' if path.name == 'q' else 'result'} "
                                   f"backend's folder {path} cannot be created or opened: ")
            assert "Read-only file system (EROFS)" in text and setting in text, text
            assert "remount it read-write" in text
            assert isinstance(refused.value, EnqueueError)
            assert not isinstance(refused.value, ConfigError)
            assert isinstance(refused.value.__cause__, OSError)


# --- a path through a file -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["the folder itself", "a parent", "a sub-folder"])
def test_a_path_through_a_file_is_a_configuration_error_naming_the_file(
        tmp_path: Path, where: str) -> None:
    """``path`` naming a file (a typo) is a setting to fix: a ``ConfigError``, which the CLI
    exits with status 2 for, naming the file in the way; it was a ``NotADirectoryError``
    traceback."""
    typo = tmp_path / "jobs.txt"
    typo.write_text("not a folder")
    queue_path = {"the folder itself": typo, "a parent": typo / "queue",
                  "a sub-folder": tmp_path / "q"}[where]
    if where == "a sub-folder":  # the queue folder exists, but ready/ in it is a file
        queue_path.mkdir()
        (queue_path / "ready").write_text("")
        typo = queue_path / "ready"
    for make, path, setting in (
            (lambda p: FileJobQueue(p, fsync=False), queue_path, "NUVOM_PLUGINS__FILE__PATH"),
            (FileResultBackend, queue_path if where != "a sub-folder" else typo / "r",
             "NUVOM_PLUGINS__FILE__RESULTS_PATH")):
        with pytest.raises(FileStorePathError) as refused:
            make(path)
        text = str(refused.value)
        assert f"folder {path} cannot be created or opened" in text, text
        assert f"{typo} is a file, not a folder" in text and setting in text, text
        assert isinstance(refused.value, ConfigError)
        assert isinstance(refused.value, FileStoreUnavailableError)
        assert isinstance(refused.value, EnqueueError)
    assert typo.is_file(), "the file in the way was left as it was"


# --- what `nuvom` prints ---------------------------------------------------------------------


def nuvom(project: Path, *args: str, **env: str) -> tuple[int, list[str]]:
    """Run ``nuvom`` in ``project`` with the file backends; its exit status and its output
    lines (stdout and stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    environ.update(NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", **env)
    done = subprocess.run([sys.executable, "-m", "nuvom_kernel", *args], cwd=project,
                          env=environ, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def test_nuvom_on_a_read_only_store_looks_and_a_worker_refuses_in_one_line(
        tmp_path: Path) -> None:
    """The hunter's case, through the CLI: every command on a read-only mount was a ~40-line
    traceback. Looks now work; ``runworker`` refuses in one line (status 1); a store that
    cannot be created is one line (status 1); a path through a file one line (status 2)."""
    with mounted_tmpfs(tmp_path / "mnt", "4m") as mount:
        project = mount / "proj"
        project.mkdir()
        (project / "tasks.py").write_text(textwrap.dedent("""
            from nuvom_kernel import task

            @task(store_result=True)
            def echo(s):
                return s
        """))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        produced = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
             "from tasks import echo; print(echo.delay('x').id, echo.delay('y').id)"],
            cwd=project,
            env={**environ, "NUVOM_QUEUE_BACKEND": "file", "NUVOM_RESULT_BACKEND": "file"},
            capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True)
        job_id, cancelled = produced.stdout.split()
        assert nuvom(project, "status")[0] == 0  # opens (creates) the result folder too
        assert nuvom(project, "cancel", "job", cancelled)[0] == 0  # a record to purge
        with read_only(mount):
            code, out = nuvom(project, "status")
            assert code == 0 and "ready: default=1   delayed: 0   in flight: 0" in out, out
            code, out = nuvom(project, "inspect", "job", job_id)
            assert code == 0 and any("QUEUED" in line for line in out), out
            code, out = nuvom(project, "history", "recent", "--status", "succeeded")
            assert code == 0 and out == ["No job records match."], out
            code, out = nuvom(project, "runworker", "--workers", "1")
            assert code == 1 and len(out) == 1, out
            assert out[0].startswith("Error: "), out
            assert f"folder {project / '.nuvom' / 'queue'} is not writable" in out[0], out
            assert "Read-only file system" in out[0], out
            # the writing commands too: each was a raw OSError traceback
            for command, folder in [(("cancel", "job", job_id), "queue"),
                                    (("purge", "results", "--older-than", "0s"), "results")]:
                code, out = nuvom(project, *command)
                assert code == 1 and len(out) == 1, (command, out)
                assert out[0].startswith("Error: "), (command, out)
                assert f"{project / '.nuvom' / folder} is not writable" in out[0], (command, out)
                assert "Read-only file system (EROFS)" in out[0], (command, out)
        code, out = nuvom(project, "inspect", "job", job_id)
        assert code == 0 and any("QUEUED" in line for line in out), "the job is still there"
        shutil.rmtree(project / ".nuvom" / "results")
        with read_only(mount):
            code, out = nuvom(project, "history", "recent")
            assert code == 1 and len(out) == 1, out
            assert out[0].startswith(f"Error: the 'file' result backend's folder "
                                     f"{project / '.nuvom' / 'results'} cannot be created"), out
            assert "NUVOM_PLUGINS__FILE__RESULTS_PATH" in out[0], out
    typo = tmp_path / "jobs.txt"
    typo.write_text("")
    code, out = nuvom(tmp_path, "status", NUVOM_PLUGINS__FILE__PATH=str(typo))
    assert code == 2 and len(out) == 1, out
    assert out[0].startswith(f"Error: the 'file' queue backend's folder {typo} cannot be "), out
    assert f"{typo} is a file, not a folder" in out[0], out
