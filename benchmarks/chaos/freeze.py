"""Freezing a worker (SIGSTOP) at a moment it holds no SQLite write lock.

Why: SQLite has one writer at a time, and a process frozen inside a write transaction (a
claim, a lease extension, a heartbeat: a busy worker with a 1 s lease writes every third of
a second) holds the database's write lock for as long as it is frozen. Every other worker
then waits on it (and gives up after ``busy_timeout_secs``), so a take-over cannot happen,
whatever the fencing does: what the scenarios that freeze a worker test. So the freeze is
made while the harness holds the write lock itself. SQLite is where this matters most:
every claim there needs its one write lock; other backends are frozen plainly.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

from .outcome import wait_for

__all__ = ["freeze_outside_writes"]


def _stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (a SIGSTOP takes effect as each is scheduled)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
    except OSError:
        return False
    return bool(states) and all(state in ("T", "t") for state in states)


def write_lock_free(database: str) -> bool:
    """Whether a writer could begin on ``database`` now (nobody holds its write lock)."""
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        if not _begin(conn):
            return False
        conn.execute("ROLLBACK")
        return True
    finally:
        conn.close()


def freeze_outside_writes(pid: int, database: str | None, timeout: float = 60.0) -> None:
    """SIGSTOP ``pid`` and wait until it has stopped. Where ``database`` is a SQLite file
    (``None`` for any other backend), the freeze happens while this process holds its write
    lock, taken as soon as it is free: ``pid`` is then outside any write transaction (at
    most waiting for the lock, which holds nothing), and the lock is let go once it is
    frozen."""
    if database is None:
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: _stopped(pid), 10, f"pid {pid} to stop")
        return
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        # polled, not SQLite's busy wait (its sleeps grow to 100 ms): a busy writer lets
        # go of the lock for moments only
        wait_for(lambda: _begin(conn), timeout, f"the write lock of {database}", 0.001)
        try:
            os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: _stopped(pid), 10, f"pid {pid} to stop")
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def _begin(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError:  # "database is locked"
        return False
