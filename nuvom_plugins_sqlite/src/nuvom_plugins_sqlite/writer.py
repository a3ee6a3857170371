"""One write connection per database file and process, and a background checkpointer.

Why one connection for every write (all threads, all backend instances on the file): a
connection's page cache is dropped whenever another connection committed since its last
transaction, so threads writing through their own connections (a worker's dispatcher claims,
its settler acks) would re-read every b-tree page from the file each time. Writes are
serialised by :attr:`Writer.lock` anyway (see :mod:`.connection`), so sharing costs no
parallelism; reads keep their per-thread connections.

Why checkpoints in a background thread at ``synchronous=NORMAL``: in WAL mode every commit
appends pages to the ``-wal`` file, and a *checkpoint* copies them back into the database and
fsyncs twice. SQLite's automatic checkpoint runs inside the commit that crosses the
threshold, while that commit still holds the write lock: every writer of every process waits
for the copy and the fsyncs, though NORMAL commits themselves never fsync. Here a thread of
its own runs a ``PASSIVE`` checkpoint every :data:`CHECKPOINT_EVERY` NORMAL commits of this
process, which never blocks writers. The commit-time checkpoint stays as a backstop at
:data:`BACKSTOP_PAGES`: a ``PASSIVE`` checkpoint racing new commits never reaches the end of
the WAL, so only a commit-time one lets the WAL start over; as most pages are copied
already, it is short. At ``FULL`` every commit fsyncs anyway and the checkpoints' share is
small: those commits keep SQLite's default (measured: background checkpoints and a longer
WAL made FULL commits slower, not faster).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

__all__ = ["BACKSTOP_PAGES", "CHECKPOINT_EVERY", "Writer", "autocheckpoint_pages", "writer_for"]

log = logging.getLogger("nuvom.sqlite")

#: Commits by this process between two background checkpoints (~4 pages each: the WAL stays
#: around SQLite's default of 1000 pages).
CHECKPOINT_EVERY = 256
#: ``PRAGMA wal_autocheckpoint`` of NORMAL commits: the commit-time backstop (16 MB of WAL).
BACKSTOP_PAGES = 4000
#: ... and of FULL commits: SQLite's default.
FULL_AUTOCHECKPOINT_PAGES = 1000


def autocheckpoint_pages(synchronous: str) -> int:
    """``PRAGMA wal_autocheckpoint`` for commits at this ``synchronous`` level."""
    return BACKSTOP_PAGES if synchronous == "NORMAL" else FULL_AUTOCHECKPOINT_PAGES


class Writer:
    """This process's write connection to one database file, its lock and its checkpointer.

    ``conn`` is opened by the :class:`~nuvom_plugins_sqlite.connection.Database` that first
    writes (it knows the settings); ``mode`` is the ``(synchronous, busy timeout ms)`` the
    connection is in, switched per write by its caller.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.pid = os.getpid()
        self.mode: tuple[str, int] | None = None
        self.users: weakref.WeakSet[Any] = weakref.WeakSet()
        self._commits = 0
        self._wake = threading.Event()
        self._stop: threading.Event | None = None  # the running checkpointer's stop flag

    def committed(self, background: bool) -> None:
        """Count a commit (call with the lock held); every :data:`CHECKPOINT_EVERY` commits
        that want ``background`` checkpoints, wake the checkpointer."""
        if not background:
            return
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(target=self._checkpoint_loop, args=(self._stop,), daemon=True,
                                 name=f"nuvom-sqlite-checkpoint:{self.path.name}").start()
            self._wake.set()

    def close_if_unused(self) -> None:
        """Close the connection and stop the checkpointer once no open backend uses them
        (call with the lock held)."""
        if self.users or self.pid != os.getpid():
            return
        if self.conn is not None:
            self.conn.close()
            self.conn, self.mode = None, None
        if self._stop is not None:
            self._stop.set()
            self._wake.set()
            self._stop = None

    def _checkpoint_loop(self, stop: threading.Event) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if stop.is_set():
                    return
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None,
                                               check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, a read-only or vanished file: next time
                    log.debug("%s: background checkpoint failed: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()


_writers: dict[str, Writer] = {}
_guard = threading.Lock()
_inherited: list[Writer] = []


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the child, and a
    # connection must never cross fork(): the child opens its own. The parent's are kept
    # referenced, never closed here (closing could drop the parent's file locks).
    global _guard
    _inherited.extend(_writers.values())
    _writers.clear()
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def writer_for(path: Path) -> Writer:
    """This process's :class:`Writer` for the file at ``path`` (one per real path)."""
    key = os.path.realpath(path)
    with _guard:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = Writer(Path(key))
        return writer
