"""Files this process may not write, file modes, and paths too long for SQLite.

SQLite opens a file it may only read *read-only*, silently: these tests check that the
plugin refuses such a file by name before SQLite creates anything beside it. Root may write
any file, so as root the refused side runs in a forked child as another user.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_helpers import msg, run_as

from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteUnavailableError

posix = pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners and modes")


def _user(name: str) -> str:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no user {name!r} on this machine")
    return name


def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: acts as two users on one database")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user may enter and create files in (pytest's own are 0700): the
    folder a team shares a queue through."""
    folder = Path(tempfile.mkdtemp(prefix="nuvom-shared-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def _make_db(path: Path) -> None:
    queue = SQLiteJobQueue(path)
    queue.enqueue(msg("a"))
    queue.close()  # the last connection closed: SQLite removes -wal and -shm


def _wal_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(("-wal", "-shm")))


@posix
def test_a_read_only_database_file_is_refused_naming_owner_mode_and_remedy(
        shared_dir: Path) -> None:
    """``chmod 444`` on the file: a worker used to start and log a claim traceback every 2 s
    for ever, and ``.delay()`` raised a generic EnqueueError."""
    db = shared_dir / "nuvom.db"
    _make_db(db)
    db.chmod(0o444)

    def enqueue() -> None:
        SQLiteJobQueue(db).enqueue(msg("b"))

    if os.geteuid() == 0:  # root writes anything: be the file's (non-root) owner instead
        import pwd

        os.chown(db, pwd.getpwnam(_user("nobody")).pw_uid, -1)
        outcome = run_as("nobody", enqueue)
    else:
        try:
            enqueue()
            outcome = "ok"
        except SQLiteUnavailableError as exc:
            outcome = f"SQLiteUnavailableError: {exc}"
    assert outcome.startswith("SQLiteUnavailableError: "), outcome
    assert str(db) in outcome and "not writable" in outcome, outcome
    assert "mode 0444 (-r--r--r--)" in outcome and "chmod g+w" in outcome, outcome
    assert "NUVOM_PLUGINS__SQLITE__PATH" in outcome, outcome
    assert _wal_files(shared_dir) == []


@posix
def test_a_user_who_may_only_read_is_refused_and_leaves_no_wal_or_shm(
        shared_dir: Path) -> None:
    """The group-shared folder: a second user's ``nuvom status`` opened the file read-only
    and left ``-wal``/``-shm`` owned by that user, mode 0644, after which the owner's own
    enqueues failed until someone deleted them."""
    _as_root()
    other = _user("nobody")
    db = shared_dir / "nuvom.db"
    _make_db(db)
    db.chmod(0o644)
    outcome = run_as(other, lambda: SQLiteJobQueue(db).qsize())  # what `nuvom status` reads
    assert outcome.startswith("SQLiteUnavailableError: "), outcome
    assert "owned by root:" in outcome and f"runs as {other}" in outcome, outcome
    assert _wal_files(shared_dir) == []  # nothing created: the owner is unharmed
    owner = SQLiteJobQueue(db)
    owner.enqueue(msg("b"))
    assert owner.qsize() == 2
    owner.close()


@posix
@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_wal_or_shm_left_by_another_user_is_named(shared_dir: Path, suffix: str) -> None:
    """What a read-only user's open left behind before the fix: the owner is told which file
    blocks it and whose it is, instead of "attempt to write a readonly database"."""
    _as_root()
    import pwd

    owner, intruder = _user("nobody"), _user("daemon")
    db = shared_dir / "nuvom.db"
    _make_db(db)
    os.chown(db, pwd.getpwnam(owner).pw_uid, -1)
    left = Path(f"{db}{suffix}")
    left.touch(mode=0o644)
    os.chown(left, pwd.getpwnam(intruder).pw_uid, -1)
    outcome = run_as(owner, lambda: SQLiteJobQueue(db).enqueue(msg("b")))
    assert outcome.startswith("SQLiteUnavailableError: "), outcome
    assert f"its {suffix} file {left}" in outcome and f"owned by {intruder}:" in outcome
    assert "rather than deleting it" in outcome, outcome


@posix
def test_new_files_follow_the_umask_so_a_group_can_share_them(tmp_path: Path) -> None:
    """SQLite creates a database 0644 whatever the umask, and its -wal/-shm with the
    database's mode: under ``umask 002`` a group sharing the folder could still not write."""
    for umask, mode in ((0o002, 0o664), (0o022, 0o644)):
        db = tmp_path / f"umask-{umask:03o}" / "nuvom.db"
        previous = os.umask(umask)
        try:
            queue = SQLiteJobQueue(db)
            queue.enqueue(msg("a"))
        finally:
            os.umask(previous)
        modes = {name: stat.S_IMODE(Path(f"{db}{name}").stat().st_mode)
                 for name in ("", "-wal", "-shm")}  # -wal and -shm exist while it is open
        queue.close()
        assert modes == {"": mode, "-wal": mode, "-shm": mode}, f"umask {umask:03o}"


def test_a_path_longer_than_sqlite_takes_says_so(tmp_path: Path) -> None:
    """A deep CI workspace: SQLite's bare "unable to open database file" came out as "Make
    its folder writable" for a folder that was writable."""
    folder = tmp_path.joinpath(*["d" * 150] * 4)  # each name within the 255-byte limit
    folder.mkdir(parents=True)
    db = folder / "nuvom.db"
    queue = SQLiteJobQueue(db)
    with pytest.raises(SQLiteUnavailableError) as refused:
        queue.qsize()
    text = str(refused.value)
    size = len(os.fsencode(os.path.realpath(db)))
    assert f"its path is {size} bytes long" in text and "512 bytes" in text, text
    assert "NUVOM_DATA_DIR" in text and "NUVOM_PLUGINS__SQLITE__PATH" in text, text
    assert "writable" not in text, text
    assert list(folder.iterdir()) == []  # no empty database left behind


def test_a_database_linked_into_a_missing_folder_says_so(tmp_path: Path) -> None:
    """A symlink to a database in a folder that is not there: the check read the missing
    folder's owner and ended in a bare "Make its folder writable"."""
    db = tmp_path / "nuvom.db"
    db.symlink_to(tmp_path / "gone" / "nuvom.db")
    with pytest.raises(SQLiteUnavailableError) as refused:
        SQLiteJobQueue(db).qsize()
    assert f"its folder {tmp_path / 'gone'} (where {db} points) does not exist" in str(
        refused.value)


def test_a_database_under_a_file_says_the_file_is_in_the_way(tmp_path: Path) -> None:
    """``path = "afile/x.db"`` with ``afile`` a file: the advice was "Make its folder
    writable", which cannot help."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(SQLiteUnavailableError) as refused:
        SQLiteJobQueue(tmp_path / "afile" / "x.db").qsize()
    text = str(refused.value)
    assert f"{tmp_path / 'afile'} is a file, not a folder" in text, text
    assert "writable" not in text, text


def test_a_database_gone_after_it_opened_is_named_on_the_next_connection(
        tmp_path: Path) -> None:
    """A thread's first connection after the folder was replaced by a file raised a bare
    ``sqlite3.OperationalError: unable to open database file``: the dashboard's 500, a
    worker's traceback naming no file."""
    import threading

    queue = SQLiteJobQueue(tmp_path / "data" / "nuvom.db")
    assert queue.qsize() == 0
    (tmp_path / "data").rename(tmp_path / "moved")
    (tmp_path / "data").write_text("")
    raised: list[BaseException] = []

    def other_thread() -> None:  # a connection of its own: opened now
        try:
            queue.qsize()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(raised) == 1 and isinstance(raised[0], SQLiteUnavailableError), raised
    assert f"{tmp_path / 'data'} is a file, not a folder" in str(raised[0])
    queue.close()


@posix
def test_a_database_on_a_read_only_mount_is_told_to_mount_it_read_write(
        tmp_path: Path) -> None:
    """A read-only file system was told to chmod g+w and run as the owner, which no
    permission mends."""
    import subprocess

    _as_root()
    source, mounted = tmp_path / "data", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    _make_db(source / "q.db")
    done = subprocess.run(["mount", "--bind", str(source), str(mounted)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], check=True)
        queue = SQLiteJobQueue(mounted / "q.db")
        with pytest.raises(SQLiteUnavailableError) as info:
            queue.enqueue(msg("b"))
        queue.close()
        text = str(info.value)
        assert "is on a read-only file system" in text, text
        assert "Mount it read-write" in text and "chmod g+w" not in text, text
    finally:
        subprocess.run(["umount", str(mounted)], check=False)
