"""Connections and write transactions shared by the queue and the result backend.

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
or disk is full" into a :class:`~.errors.DatabaseFullError` naming the file and what to do.
The errors and their messages live in :mod:`.errors`, the settings in :mod:`.settings`.

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
from collections.abc import Callable
from typing import TypeVar

from nuvom_kernel.errors import ConfigError
from nuvom_plugins_sqlite.access import create_shared, path_too_long, unwritable
from nuvom_plugins_sqlite.errors import (
    DatabaseBusyError,
    _damaged,
    _full,
    _is_busy,
    _is_damaged,
    _no_room,
    _not_writable,
    _too_big,
    _unopenable,
)
from nuvom_plugins_sqlite.schema import migrate
from nuvom_plugins_sqlite.settings import SQLiteSettings
from nuvom_plugins_sqlite.writer import Writer, autocheckpoint_pages, writer_for

__all__ = ["Database"]

log = logging.getLogger("nuvom.sqlite")

T = TypeVar("T")

_MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
_WRITING = "writing to the database"  # what a write does, unless its caller says
_BUSY_STEP_SECS = 1.0  # how long SQLite's own handler waits before we log and retry


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
        """A new connection. A file that cannot be opened any more (its folder moved or
        replaced by a file since this process opened it) is :func:`_unopenable`'s error,
        as at the first open: raw, it was the dashboard's bare 500 and a worker's
        "unable to open database file" naming no file."""
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._mode[1] / 1000,
                isolation_level=None,  # autocommit: we issue BEGIN IMMEDIATE ourselves
                check_same_thread=False,  # only close() touches another thread's connection
                cached_statements=256,
            )
            conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise
            raise _unopenable(self.path, exc) from exc
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
                raise _not_writable(self.path, problem)
            if path_too_long(self.path) is None:  # else SQLite refuses it: see _unopenable
                create_shared(self.path)
            self._initialise_file()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                if _is_busy(exc):
                    raise
                raise _unopenable(self.path, exc) from exc
            if not _is_damaged(exc):  # a bug (IntegrityError, ProgrammingError): as it is
                raise
            raise _damaged(self.path, exc) from exc  # never replaced: it may hold jobs
        except OSError as exc:
            raise _unopenable(self.path, exc) from exc

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

        :param what: what the write does, for the message of a
            :class:`~.errors.DatabaseFullError`
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
                    raise _full(self.path, self.real_path, exc, what,
                                "the statement that failed changed nothing") from exc
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
                    raise _full(self.path, self.real_path, exc, what,
                                "it was rolled back: nothing of it was stored") from exc
                raise
            except sqlite3.DataError as exc:
                raise _too_big(self.path, exc) from exc
            writer.committed(self._background_checkpoints)
            return value

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
