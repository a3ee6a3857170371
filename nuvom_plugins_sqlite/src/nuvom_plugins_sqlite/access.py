"""Whether this process may write a database file, checked before SQLite touches it.

Why check ourselves: SQLite opens a file it may only read *read-only*, without an error, so
a database owned by another user (or ``chmod 444``) looked fine until the first write: the
worker logged "started" and then a claim traceback every 2 s for ever, and ``.delay()``
failed with a generic error. Worse, a read-only command (``nuvom status``) run by a second
user who may read but not write the file still created ``-wal`` and ``-shm`` next to it,
owned by that user with the database's mode (``0644``), and from then on the owner's own
writes failed ("attempt to write a readonly database") until someone deleted them. So the
database, the ``-wal``/``-shm`` files that exist, and (if SQLite must create any of them)
the folder are checked first, and nothing is created when one is not writable.

Why :func:`create_shared`: SQLite creates a new database with mode ``0644`` whatever the
umask, and the ``-wal``/``-shm`` files with the database's mode, so a team sharing a folder
through a group and ``umask 002`` still got files only their creator could write. Created
by us with ``0666`` minus the umask, the file (and so its ``-wal``/``-shm``) is
group-writable exactly when the umask says so.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

try:  # POSIX only: names in messages; Windows has no owners to name
    import grp
    import pwd
except ImportError:  # pragma: no cover - Windows
    grp = pwd = None  # type: ignore[assignment]

__all__ = ["READ_ONLY_FS", "WAL_SUFFIXES", "create_shared", "path_too_long", "unwritable"]

#: The files SQLite keeps next to a database in WAL mode.
WAL_SUFFIXES = ("-wal", "-shm")
#: SQLite's longest path (``SQLITE_MAX_PATHNAME``, 512 bytes by default), which the
#: ``-wal``/``-shm`` names must fit too: a longer path fails with the bare "unable to open
#: database file" (measured with SQLite 3.40: a 504-byte database path opens, 505 fails).
SQLITE_MAX_PATHNAME = 512

# Serialises create_shared() within the process: closing a descriptor drops every POSIX lock
# the process holds on that file, including SQLite's, so no connection of ours may open the
# file between our create and our close (see create_shared).
_CREATE_LOCK = threading.Lock()


def path_too_long(path: Path) -> int | None:
    """The length in bytes of ``path`` as SQLite sees it (absolute, symlinks resolved) if
    that is too long for SQLite once ``-wal`` is added, else ``None``."""
    size = len(os.fsencode(os.path.realpath(path)))
    return size if size + len("-wal") > SQLITE_MAX_PATHNAME - 4 else None


def _name(table: object, number: int, attr: str, getter: str) -> str:
    try:
        return f"{getattr(getattr(table, getter)(number), attr)}"
    except (AttributeError, KeyError):  # no such user/group (a container's uid), or Windows
        return str(number)


def _owner(st: os.stat_result) -> str:
    user = _name(pwd, st.st_uid, "pw_name", "getpwuid")
    group = _name(grp, st.st_gid, "gr_name", "getgrgid")
    return f"owned by {user}:{group} with mode {stat.S_IMODE(st.st_mode):04o} " \
           f"({stat.filemode(st.st_mode)})"


def _me() -> str:
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows
        return "this process"
    uid = os.geteuid()
    groups = sorted({os.getegid(), *os.getgroups()})
    names = ", ".join(_name(grp, g, "gr_name", "getgrgid") for g in groups)
    return (f"this process runs as {_name(pwd, uid, 'pw_name', 'getpwuid')} (uid {uid}, "
            f"groups {names})")


def _can_write(path: Path, mode: int = os.W_OK) -> bool:
    # Effective ids: what open() will be judged by (setuid launchers, runuser).
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)  # pragma: no cover - Windows, macOS without faccessat


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return False


#: How :func:`unwritable` says a file system is mounted read-only (the fix differs: no
#: permission mends it).
READ_ONLY_FS = "is on a read-only file system"


def unwritable(path: Path) -> str | None:
    """Why this process cannot use the database ``path`` in WAL mode, or ``None``.

    Checks, without creating or opening anything: the database file, its ``-wal`` and
    ``-shm`` files where they exist, and the folder where SQLite must create one of them.
    The answer names the file, its owner and mode, and who this process runs as.
    """
    real = Path(os.path.realpath(path))  # SQLite resolves symlinks: its -wal is beside this
    folder = real.parent
    missing = False
    for file in (real, *(Path(f"{real}{suffix}") for suffix in WAL_SUFFIXES)):
        try:
            st = file.stat()
        except FileNotFoundError:
            missing = True
            continue
        if _can_write(file):
            continue
        if _read_only_fs(file):
            return f"{file} {READ_ONLY_FS}"
        what = ("it" if file == real else
                f"its {file.name[len(real.name):]} file {file} (which SQLite creates with the "
                "database's mode, as whoever opens the database first)")
        return f"{what} is {_owner(st)}, and {_me()}, which may not write it"
    if missing and not folder.is_dir():  # a symlink to a folder that is not there
        return f"its folder {folder} (where {path} points) does not exist"
    if missing and not _can_write(folder, os.W_OK | os.X_OK):
        if _read_only_fs(folder):
            return f"its folder {folder} {READ_ONLY_FS}"
        return (f"its folder {folder}, where SQLite creates the database and its -wal and "
                f"-shm files, is {_owner(folder.stat())}, and {_me()}, which may not create "
                "files in it")
    return None


def create_shared(path: Path) -> None:
    """Create an empty database file at ``path`` (SQLite takes a 0-byte file as an empty
    database) with mode ``0666`` minus the umask, unless a file is there already."""
    with _CREATE_LOCK:
        try:
            fd = os.open(os.path.realpath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return
        os.close(fd)  # no connection of ours has it open yet: it did not exist
