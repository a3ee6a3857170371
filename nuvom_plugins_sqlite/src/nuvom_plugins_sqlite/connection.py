"""Settings, connections and write transactions shared by the queue and the result backend.

Why a read connection per thread: a ``sqlite3.Connection`` is not safe to share between
threads mid-transaction, and a connection per thread lets WAL readers run in parallel.
Writes all go through the process's one write connection per file (:mod:`.writer`), which
keeps its page cache warm across threads. Connections are opened lazily, re-opened in a
forked child (a connection must never cross ``fork()``), and closed when their thread ends or
the backend is closed.

Why an in-process write lock on top of SQLite's own: SQLite serialises writers with a busy
handler that *sleeps* (1, 2, 5, 10 ms ...) when the lock is taken, so two threads of one
worker racing for the write lock lose milliseconds per collision. Threads of one process
queue on a ``threading.Lock`` instead (cheap, FIFO-ish, no sleeping); only writers in other
processes ever meet SQLite's busy handler.

Why ``temp_store = MEMORY``: a multi-row UPDATE or an upsert inside ``BEGIN ... COMMIT`` keeps
a statement journal, by default in a temporary file created and deleted per statement; in
memory it is free (measured: that file tripled the cost of a claim in a transaction).

Why a full disk is translated here, in :meth:`Database.write` and :meth:`Database.transaction`:
every write of both backends goes through them, so one place turns SQLite's bare "database
or disk is full" into a :class:`DatabaseFullError` naming the file and what to do. Raw, it
came out of ``nuvom purge results`` (what a user runs to make room), ``nuvom cancel`` and
``nuvom retry`` as a Python traceback (the CLI prints only Nuvom errors as one line).

Why writes retry on ``SQLITE_BUSY`` with a warning: another process may hold the write lock
for seconds (a backup, a long ``purge``). The caller waits up to ``busy_timeout_secs``,
logging a warning each second it is still blocked, instead of failing the job at once.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import (
    ConfigError,
    EnqueueError,
    NuvomError,
    SerializationError,
    too_large,
)
from nuvom_kernel.plugin_settings import schema_of
from nuvom_kernel.values import RESULT_TTL_SECS, Retention, Seconds
from nuvom_plugins_sqlite.access import (
    SQLITE_MAX_PATHNAME,
    create_shared,
    path_too_long,
    unwritable,
)
from nuvom_plugins_sqlite.schema import migrate
from nuvom_plugins_sqlite.writer import Writer, autocheckpoint_pages, writer_for

__all__ = ["Database", "DatabaseBusyError", "DatabaseFullError", "SQLiteSettings",
           "SQLiteUnavailableError"]

log = logging.getLogger("nuvom.sqlite")

T = TypeVar("T")

_SYNCHRONOUS = ("NORMAL", "FULL")
_MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_FULL_CODE = 13  # SQLITE_FULL: a write found no room (SQLite's unix VFS maps ENOSPC to it)
_FULL_TEXT = "database or disk is full"
_IOERR_CODE = 10  # SQLITE_IOERR: what a -shm that cannot grow, or a quota, comes out as
_LOW_SPACE = 1 << 20  # free bytes under which an SQLITE_IOERR is taken for a full disk
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full file system, a used-up quota
_WRITING = "writing to the database"  # what a write does, unless its caller says
_BUSY_STEP_SECS = 1.0  # how long SQLite's own handler waits before we log and retry
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


@attrs.frozen
class SQLiteSettings:
    """The ``[plugins.sqlite]`` table, shared by the queue and the result backend.

    :param path: the queue's database file; default ``<data_dir>/nuvom.db``. Absolute once
        parsed: ``~`` expanded, a relative path joined to the working directory of the
        moment (see :func:`_absolute`).
    :param results_path: the result backend's database file; default ``path`` (one file for
        queue and job records). A separate file gives job records their own write lock.
        Made absolute as ``path`` is.
    :param synchronous: ``NORMAL`` (default: WAL commits survive a crash of the process,
        the last few may be lost on power loss) or ``FULL`` (fsync every commit).
    :param busy_timeout_secs: longest wait for another process's write lock before an
        operation fails with :class:`DatabaseBusyError`.
    :param visibility_timeout_secs: lease length for the queue; default from the kernel.
    :param result_ttl_secs: finished job records (and ended workflows) older than this are
        deleted by every running worker about once a minute (default 7 days, as every
        persistent result backend's; ``0`` keeps them until ``nuvom purge results``). A
        :data:`~nuvom_kernel.values.Retention`: at most 100 years.

    Both durations are :data:`~nuvom_kernel.values.Seconds` (finite, at most 366 days), as
    the kernel's own duration settings: ``inf`` made a lease that never expires (a crashed
    worker's job was never run again) and a busy wait with no end.
    """

    path: Path
    results_path: Path | None = None
    synchronous: str = "NORMAL"
    busy_timeout_secs: Seconds = 30.0
    visibility_timeout_secs: Seconds = 30.0
    result_ttl_secs: Retention = RESULT_TTL_SECS

    @classmethod
    def parse(cls, settings: Mapping[str, Any], context: BackendContext) -> SQLiteSettings:
        """Validate a settings table; every error names the key and what it accepts (the
        kernel's checks of the declared types, :meth:`PluginSchema.check`)."""
        values = schema_of("sqlite", cls).check(settings)
        path = _absolute(values.get("path") or Path(context.data_dir) / "nuvom.db")
        sync = values.get("synchronous", "NORMAL").strip().upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(
                f"[plugins.sqlite] synchronous={settings['synchronous']!r} is invalid: "
                f"use NORMAL (default) or FULL."
            )
        results = values.get("results_path")
        return cls(path=path, results_path=_absolute(results) if results else path,
                   synchronous=sync, busy_timeout_secs=values.get("busy_timeout_secs", 30.0),
                   visibility_timeout_secs=values.get("visibility_timeout_secs",
                                                      context.visibility_timeout_secs),
                   result_ttl_secs=values.get("result_ttl_secs", RESULT_TTL_SECS))


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory now.

    Why once, when the settings are read: SQLite opens a relative path against the working
    directory of the moment it connects, and connections open lazily (one per thread, again
    after a fork). After a task's ``os.chdir()`` a worker's next connection opened (and
    created) another, empty database there: "no such table: nuvom_queue", and stray
    ``.nuvom/nuvom.db`` and ``-wake/`` files in the task's folder. Resolved here, a relative
    path means what the documentation says: relative to the folder nuvom started in (the
    project folder, where ``.nuvom_plugins.toml`` and the data folder are). ``~`` is expanded
    as a shell would (SQLite does not: ``~/q.db`` created a folder named ``~``).
    ``Path.absolute`` keeps ``..`` as written (``abspath`` would fold it past a symlink).
    """
    return Path(os.path.expanduser(os.fspath(path))).absolute()


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


class _Handle:
    """A thread's connection plus the pid that opened it (weak-referenceable, unlike the
    connection itself, so :meth:`Database.close` can reach every thread's connection)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def __del__(self) -> None:  # the owning thread ended: close its connection
        if self.pid == os.getpid():
            try:
                self.conn.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


def _busy_ms(settings: SQLiteSettings) -> int:
    """SQLite's own busy wait per attempt: up to ``_BUSY_STEP_SECS``, then we log and retry."""
    return int(min(settings.busy_timeout_secs, _BUSY_STEP_SECS) * 1000)


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
    why ``nuvom purge results`` is no way out (see :meth:`Database._full`)."""
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


class Database:
    """Thread-local connections to one SQLite file, and its write discipline."""

    def __init__(self, settings: SQLiteSettings) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ConfigError(
                f"nuvom-plugins-sqlite needs SQLite >= 3.35 (for RETURNING); this Python "
                f"links SQLite {sqlite3.sqlite_version}. Use a newer Python build."
            )
        self.settings = settings
        self.path = settings.path
        self._local = threading.local()
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
        self._ready_pid: int | None = None
        self._init_lock = threading.Lock()
        self._writer = writer_for(self.path)
        self.real_path = self._writer.path  # the file's real path (symlinks resolved)
        self._mode = (settings.synchronous, _busy_ms(settings))
        self._background_checkpoints = settings.synchronous == "NORMAL"  # see .writer

    # --- connections ------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema checked) on first use."""
        handle = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid():
            conn: sqlite3.Connection = handle.conn
            return conn
        return self._open()

    def _ensure_ready(self) -> None:
        pid = os.getpid()
        if self._ready_pid != pid:
            with self._init_lock:
                if self._ready_pid != pid:
                    self._initialise()
                    self._ready_pid = pid

    def _open(self) -> sqlite3.Connection:
        self._ensure_ready()
        conn = self._connect()
        handle = _Handle(conn)
        self._local.handle = handle
        self._handles.add(handle)
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._mode[1] / 1000,
            isolation_level=None,  # autocommit: we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # only close() touches another thread's connection
            cached_statements=256,
        )
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        conn.execute("PRAGMA temp_store = MEMORY")  # statement journals (see above)
        conn.execute(f"PRAGMA wal_autocheckpoint = "
                     f"{autocheckpoint_pages(self.settings.synchronous)}")  # see .writer
        return conn

    def _initialise(self) -> None:
        """Create the directory, switch to WAL and migrate; once per process.

        :raises SQLiteUnavailableError: the file cannot be created or opened, or this process
            may not write it (see :mod:`.access`; SQLite would open it read-only). Why
            here: the raw ``PermissionError`` or "unable to open database file" named no
            setting, came out of ``nuvom status`` as a traceback, and from ``.delay()`` as
            advice about the data folder, which ``path`` may not be in.
        """
        try:
            if self.path.is_dir():  # said first: the checks below would blame its folder
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR),
                                        str(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            problem = unwritable(self.path)
            if problem is not None:  # before SQLite creates a -wal/-shm another user needs
                raise SQLiteUnavailableError(
                    f"the 'sqlite' backend's database {self.path} is not writable: {problem}; "
                    "every enqueue, claim and result would fail (SQLite opens such a file "
                    "read-only, without an error). Run nuvom as the user that owns the "
                    "database, or let every user of it write it: one shared group, chmod g+w "
                    "on the folder, the database and its -wal/-shm (nuvom creates them "
                    "group-writable under umask 002); chown a -wal/-shm left by another user "
                    "to the database's owner rather than deleting it (a -wal holds committed "
                    "jobs). "
                    f"{_PLACED}")
            if path_too_long(self.path) is None:  # else SQLite refuses it: see below
                create_shared(self.path)
            self._initialise_file()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                if _is_busy(exc):
                    raise
                raise self._unopenable(exc) from exc
            if not _is_damaged(exc):  # a bug (IntegrityError, ProgrammingError): as it is
                raise
            # never replaced here, since it may hold jobs
            raise SQLiteUnavailableError(
                f"the 'sqlite' backend's database {self.path} is damaged or is not an SQLite "
                f"database ({type(exc).__name__}: {exc}), so nothing can be enqueued, claimed "
                "or recorded. Nuvom does not replace it: it may hold jobs. Stop the workers "
                "and move it aside, its -wal and -shm files renamed alike (nuvom then creates "
                "a new one); `sqlite3 <the moved file> .recover` salvages what it held. Or "
                f"point the backend at another file. {_PLACED}") from exc
        except OSError as exc:
            raise self._unopenable(exc) from exc

    def _unopenable(self, exc: OSError | sqlite3.OperationalError) -> SQLiteUnavailableError:
        """The error for a database that could not be created or opened, naming the cause."""
        size = path_too_long(self.path)
        if size is not None:
            return SQLiteUnavailableError(
                f"the 'sqlite' backend's database {self.path} cannot be opened: its path "
                f"is {size} bytes long (absolute, symlinks resolved), and SQLite refuses "
                f"paths of {SQLITE_MAX_PATHNAME} bytes or more (SQLITE_MAX_PATHNAME), its "
                f"-wal and -shm files' names included ({type(exc).__name__}: {exc}). "
                "Put the database at a shorter path: [plugins.sqlite] path / "
                "results_path in .nuvom_plugins.toml, NUVOM_PLUGINS__SQLITE__PATH / "
                "NUVOM_PLUGINS__SQLITE__RESULTS_PATH, or a shorter data folder "
                "(NUVOM_DATA_DIR; default .nuvom in the project folder).")
        return SQLiteUnavailableError(
            f"the 'sqlite' backend's database {self.path} cannot be created or opened "
            f"({type(exc).__name__}: {exc}). {self._open_advice(exc)} {_PLACED}")

    def _open_advice(self, exc: OSError | sqlite3.OperationalError) -> str:
        """What to do about a database that could not be created or opened, by cause. Why
        not one sentence for all: "make its folder writable" sent the user of a full disk
        (or of a ``path`` naming a folder) after permissions that were fine."""
        blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return (f"{blocker} is a file, not a folder: move it, or put the database "
                    "elsewhere.")
        if self.path.is_dir():
            return (f"{self.path} is a folder: the setting must name a file (for example "
                    f"{self.path / 'nuvom.db'}), not the folder it goes in.")
        real = Path(os.path.realpath(self.path))
        if _no_room(exc, real):
            empty = real.is_file() and real.stat().st_size == 0
            return ("The disk holding it is full, or your disk quota on it is used up. "
                    f"{_free_space_advice(real, purge=False)}" + (
                        f" (The empty {real.name} left behind is harmless: nuvom sets it "
                        "up the next time it opens it.)" if empty else ""))
        return "Make its folder writable, or put the file where it can be."

    def _initialise_file(self) -> None:
        conn = self._connect()
        try:
            mode = self._retry_busy(
                lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            )
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not WAL (a network or read-only file "
                            "system?); concurrent workers will block each other", self.path,
                            mode)
            self._retry_busy(lambda: migrate(conn, self.path))
        finally:
            conn.close()

    def close(self) -> None:
        """Close every thread's connection (and the process's write connection if no other
        backend uses it); the next use opens fresh ones."""
        for handle in list(self._handles):
            if handle.pid == os.getpid():
                handle.conn.close()
        self._handles = weakref.WeakSet()
        self._local = threading.local()
        writer = self._writer
        if writer.pid == os.getpid():
            with writer.lock:
                writer.users.discard(self)
                writer.close_if_unused()

    def _write_conn(self) -> tuple[Writer, sqlite3.Connection]:
        """The process's write connection, in this database's mode; call with the lock."""
        writer = self._writer
        conn = writer.conn
        if conn is None:
            self._ensure_ready()
            conn = writer.conn = self._connect()
            writer.mode = self._mode
        elif writer.mode != self._mode:
            sync, busy_ms = self._mode
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint_pages(sync)}")
            writer.mode = self._mode
        if self not in writer.users:
            writer.users.add(self)
        return writer, conn

    def _lock(self) -> threading.Lock:
        if self._writer.pid != os.getpid():  # forked: this process has its own writer
            self._writer = writer_for(self.path)
        self.real_path = self._writer.path  # the file's real path (symlinks resolved)
        return self._writer.lock

    # --- writes -----------------------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection], T], what: str = _WRITING) -> T:
        """Run one autocommit write statement (``fn(conn)``) under the write discipline.

        :param what: what the write does, for the message of a :class:`DatabaseFullError`
            ("purging finished job records"); a constant, so it costs nothing per call.
        :raises DatabaseFullError: no room on the disk for the write (it stored nothing).
        """
        with self._lock():
            writer, conn = self._write_conn()
            started = time.monotonic()
            try:
                try:
                    value = fn(conn)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    value = self._retry_busy(lambda: fn(conn), started, exc)
            except sqlite3.OperationalError as exc:
                if _no_room(exc, self.real_path):
                    raise self._full(exc, what, "the statement that failed changed "
                                                "nothing") from exc
                raise
            except sqlite3.DataError as exc:
                raise _too_big(self.path, exc) from exc
            writer.committed(self._background_checkpoints)
            return value

    def transaction(self, fn: Callable[[sqlite3.Connection], T], what: str = _WRITING) -> T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, all or nothing.

        :param what: as for :meth:`write`.
        :raises DatabaseFullError: no room on the disk for the transaction (rolled back).
        """
        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return value

        with self._lock():
            writer, conn = self._write_conn()
            try:
                value = self._retry_busy(attempt)
            except sqlite3.OperationalError as exc:
                if _no_room(exc, self.real_path):
                    raise self._full(exc, what, "it was rolled back: nothing of it was "
                                                "stored") from exc
                raise
            except sqlite3.DataError as exc:
                raise _too_big(self.path, exc) from exc
            writer.committed(self._background_checkpoints)
            return value

    def _full(self, exc: sqlite3.OperationalError, what: str, undone: str
              ) -> DatabaseFullError:
        """SQLite's "database or disk is full" as one message: what failed, the file, the
        cause, and what frees room. Why the advice is to free space *elsewhere* first:
        every write (a purge's deletes too) is appended to the ``-wal`` journal before it
        changes the file, so ``nuvom purge results`` fails like any other write until the
        disk has room; and what it deletes is reused for new rows inside the file, it does
        not shrink the file."""
        return DatabaseFullError(
            f"{what} failed: the disk holding the 'sqlite' backend's database "
            f"{self.path} is full, or your disk quota on it is used up "
            f"({type(exc).__name__}: {exc}); {undone}. "
            f"{_free_space_advice(self.real_path)}")

    def _retry_busy(self, attempt: Callable[[], T], started: float | None = None,
                    failed: sqlite3.OperationalError | None = None) -> T:
        """Run ``attempt`` until it is not refused as busy (``failed``: the busy error of an
        attempt already made at ``started``)."""
        started = time.monotonic() if started is None else started
        limit = self.settings.busy_timeout_secs
        while True:
            if failed is None:
                try:
                    return attempt()
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    failed = exc
            busy, failed = failed, None
            waited = time.monotonic() - started
            if waited >= limit:
                raise DatabaseBusyError(
                    f"{self.path}: another process has held the write lock for "
                    f"{waited:.1f} s (busy_timeout_secs={limit:g}). Find the process "
                    f"holding it (a long transaction, a backup) or raise "
                    f"[plugins.sqlite] busy_timeout_secs."
                ) from busy
            if waited < _BUSY_STEP_SECS / 2:
                # SQLite gave up at once (e.g. a stale WAL snapshot), not after its
                # handler's wait: back off briefly instead of spinning.
                time.sleep(0.005)
                continue
            log.warning("%s: database locked by another writer for %.1f s; still "
                        "waiting (up to %g s)", self.path, waited, limit)
