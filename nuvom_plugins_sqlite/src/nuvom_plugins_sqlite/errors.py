"""What can go wrong with the database file, and how each failure is told: the errors the
backends raise, the tests that classify an ``sqlite3`` error (busy, no room, damaged, too
big), and the one-line messages that name the file, the cause and what to do.

Why apart from :mod:`.connection`: that module opens connections and runs writes; these are
read only once something failed, and every message here must say the same thing whichever
write or open met the failure (a full disk is one text for a push, a purge and a settle).

Why a full disk is translated at all: every write of both backends goes through
:meth:`.connection.Database.write` and :meth:`~.connection.Database.transaction`, which
turn SQLite's bare "database or disk is full" into a :class:`DatabaseFullError` naming the
file and what to do. Raw, it came out of ``nuvom purge results`` (what a user runs to make
room), ``nuvom cancel`` and ``nuvom retry`` as a Python traceback (the CLI prints only Nuvom
errors as one line).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from nuvom_kernel.errors import EnqueueError, NuvomError, SerializationError, too_large
from nuvom_plugins_sqlite.access import READ_ONLY_FS, SQLITE_MAX_PATHNAME, path_too_long

__all__ = ["DatabaseBusyError", "DatabaseFullError", "SQLiteUnavailableError"]

_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_FULL_CODE = 13  # SQLITE_FULL: a write found no room (SQLite's unix VFS maps ENOSPC to it)
_FULL_TEXT = "database or disk is full"
_IOERR_CODE = 10  # SQLITE_IOERR: what a -shm that cannot grow, or a quota, comes out as
_LOW_SPACE = 1 << 20  # free bytes under which an SQLITE_IOERR is taken for a full disk
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full file system, a used-up quota
_PLACED = ("The file is placed by [plugins.sqlite] path / results_path in "
           ".nuvom_plugins.toml, or NUVOM_PLUGINS__SQLITE__PATH / "
           "NUVOM_PLUGINS__SQLITE__RESULTS_PATH (default: nuvom.db in the data folder, "
           "NUVOM_DATA_DIR, .nuvom).")


class DatabaseBusyError(NuvomError):
    """Another process held the database's write lock longer than ``busy_timeout_secs``."""


class DatabaseFullError(EnqueueError):
    """A write found no room: the file system holding the database is full, or the user's
    quota on it is used up. The message names what failed, the file, and what to do.

    Why an :class:`EnqueueError`: ``.delay()`` on a full disk raised one before (the kernel
    wrapped SQLite's raw error), and callers catch it; the kernel passes a Nuvom error from
    the backend through unwrapped. Why not a :class:`SerializationError`: the worker's
    settler takes anything else as "the store is down, try again later", which is right for
    a disk that will have room again; a ``SerializationError`` would fail the job for good.
    """


class SQLiteUnavailableError(EnqueueError):
    """The database file cannot be created or opened (its folder is missing, not a folder,
    or not writable; its path is too long), or this process may not write it or its
    ``-wal``/``-shm`` files; the message names the file, the cause and the setting that
    places it."""



def _too_big(path: Path, exc: sqlite3.DataError) -> SerializationError:
    """A value over SQLite's length limit (``SQLITE_MAX_LENGTH``, 1,000,000,000 bytes by
    default) as what it is: a :class:`SerializationError` of the job that holds it, which
    the worker's settler records as that job's failure (an error it cannot store), instead
    of a raw ``DataError`` that failed the whole settle batch as if the store were down
    (the job and its batch ran again at every lease, and were finally recorded as crashed),
    or an enqueue error advising to check free space. (Caught where it is raised, not by a
    context manager around every write: that cost a µs per ``.delay()``.)"""
    return SerializationError(too_large(
        f"{path}: a value", f"SQLite stores in one field ({exc}; the limit is "
        "SQLITE_MAX_LENGTH, 1,000,000,000 bytes unless SQLite was built otherwise)"))


def _no_room(exc: BaseException, real_path: Path) -> bool:
    """Whether ``exc`` failed for want of room on the disk holding ``real_path``.

    ``SQLITE_FULL`` (SQLite's name for ``ENOSPC``), ``ENOSPC`` or ``EDQUOT`` from our own
    file calls, or an ``SQLITE_IOERR`` while the file system has (almost) no space left:
    SQLite reports a ``-shm`` it cannot grow or create on a full disk (every process that
    opens the database maps it) as "disk I/O error" (``SQLITE_IOERR_SHMSIZE``), and a write
    refused by a quota (``EDQUOT``) as ``SQLITE_IOERR_WRITE``, without the ``errno``.
    Called on the error path only (a ``statvfs`` there costs nothing that matters).
    """
    if isinstance(exc, OSError):
        return exc.errno in _NO_ROOM
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # a Python before 3.11: the message is all there is
        return _FULL_TEXT in str(exc)
    if (code & 0xFF) == _FULL_CODE:
        return True
    return (code & 0xFF) == _IOERR_CODE and _free_bytes(real_path.parent) < _LOW_SPACE


def _free_bytes(folder: Path) -> float:
    """Bytes this process may still write on ``folder``'s file system (``inf``: unknown)."""
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):  # Windows; a folder that is not there
        return float("inf")
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return float(blocks * st.f_frsize)


def _free_space_advice(real_path: Path, *, purge: bool = True) -> str:
    """What to do about a full disk holding the database at ``real_path``; ``purge``: say
    why ``nuvom purge results`` is no way out (see :func:`_full`)."""
    advice = (f"Free space on the file system of {real_path.parent} first (delete or move "
              "other files on it, or grow it), then try again")
    if not purge:
        return f"{advice}."
    return (f"{advice}: `nuvom purge results --older-than ...` fails too until then (it "
            "must write to the database's -wal journal before it deletes anything), and "
            "the room it frees is reused inside the file for new jobs, it does not shrink "
            "the file.")


def _is_damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file is not an SQLite database or is damaged (SQLITE_NOTADB,
    SQLITE_CORRUPT), not that a statement was wrong: only then is "move it aside" advice."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name is not None:
        return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
    text = str(exc)
    return "file is not a database" in text or "malformed" in text


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc)
    return "locked" in text or "busy" in text


def _not_writable(path: Path, problem: str) -> SQLiteUnavailableError:
    """The error for a database this process may not write (``problem``: why, from
    :func:`.access.unwritable`), said before SQLite creates a ``-wal``/``-shm`` another
    user needs."""
    fix = ("Mount it read-write (or point the path elsewhere): no permission lets a "
           "read-only file system be written. " if READ_ONLY_FS in problem else
           "Run nuvom as the user that owns the "
           "database, or let every user of it write it: one shared group, chmod g+w "
           "on the folder, the database and its -wal/-shm (nuvom creates them "
           "group-writable under umask 002); chown a -wal/-shm left by another user "
           "to the database's owner rather than deleting it (a -wal holds committed "
           "jobs). ")
    return SQLiteUnavailableError(
        f"the 'sqlite' backend's database {path} is not writable: {problem}; "
        "every enqueue, claim and result would fail (SQLite opens such a file "
        f"read-only, without an error). {fix}{_PLACED}")


def _damaged(path: Path, exc: sqlite3.DatabaseError) -> SQLiteUnavailableError:
    """The error for a file that is damaged or not an SQLite database (:func:`_is_damaged`);
    never replaced by Nuvom, since it may hold jobs."""
    return SQLiteUnavailableError(
        f"the 'sqlite' backend's database {path} is damaged or is not an SQLite "
        f"database ({type(exc).__name__}: {exc}), so nothing can be enqueued, claimed "
        "or recorded. Nuvom does not replace it: it may hold jobs. Stop the workers "
        "and move it aside, its -wal and -shm files renamed alike (nuvom then creates "
        "a new one); `sqlite3 <the moved file> .recover` salvages what it held. Or "
        f"point the backend at another file. {_PLACED}")


def _unopenable(path: Path, exc: OSError | sqlite3.OperationalError) -> SQLiteUnavailableError:
    """The error for a database that could not be created or opened, naming the cause."""
    size = path_too_long(path)
    if size is not None:
        return SQLiteUnavailableError(
            f"the 'sqlite' backend's database {path} cannot be opened: its path "
            f"is {size} bytes long (absolute, symlinks resolved), and SQLite refuses "
            f"paths of {SQLITE_MAX_PATHNAME} bytes or more (SQLITE_MAX_PATHNAME), its "
            f"-wal and -shm files' names included ({type(exc).__name__}: {exc}). "
            "Put the database at a shorter path: [plugins.sqlite] path / "
            "results_path in .nuvom_plugins.toml, NUVOM_PLUGINS__SQLITE__PATH / "
            "NUVOM_PLUGINS__SQLITE__RESULTS_PATH, or a shorter data folder "
            "(NUVOM_DATA_DIR; default .nuvom in the project folder).")
    return SQLiteUnavailableError(
        f"the 'sqlite' backend's database {path} cannot be created or opened "
        f"({type(exc).__name__}: {exc}). {_open_advice(path, exc)} {_PLACED}")


def _open_advice(path: Path, exc: OSError | sqlite3.OperationalError) -> str:
    """What to do about a database that could not be created or opened, by cause. Why
    not one sentence for all: "make its folder writable" sent the user of a full disk
    (or of a ``path`` naming a folder) after permissions that were fine."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return (f"{blocker} is a file, not a folder: move it, or put the database "
                "elsewhere.")
    if path.is_dir():
        return (f"{path} is a folder: the setting must name a file (for example "
                f"{path / 'nuvom.db'}), not the folder it goes in.")
    real = Path(os.path.realpath(path))
    if _no_room(exc, real):
        empty = real.is_file() and real.stat().st_size == 0
        return ("The disk holding it is full, or your disk quota on it is used up. "
                f"{_free_space_advice(real, purge=False)}" + (
                    f" (The empty {real.name} left behind is harmless: nuvom sets it "
                    "up the next time it opens it.)" if empty else ""))
    return "Make its folder writable, or put the file where it can be."


def _full(path: Path, real_path: Path, exc: sqlite3.OperationalError, what: str,
          undone: str) -> DatabaseFullError:
    """SQLite's "database or disk is full" as one message: what failed, the file, the
    cause, and what frees room. Why the advice is to free space *elsewhere* first:
    every write (a purge's deletes too) is appended to the ``-wal`` journal before it
    changes the file, so ``nuvom purge results`` fails like any other write until the
    disk has room; and what it deletes is reused for new rows inside the file, it does
    not shrink the file."""
    return DatabaseFullError(
        f"{what} failed: the disk holding the 'sqlite' backend's database "
        f"{path} is full, or your disk quota on it is used up "
        f"({type(exc).__name__}: {exc}); {undone}. "
        f"{_free_space_advice(real_path)}")
