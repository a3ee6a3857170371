"""The chaos harness's freeze (:mod:`benchmarks.chaos.freeze`) against a real process that
holds a real SQLite file's write lock most of the time, as a busy worker with a 1 s lease
does: a plain SIGSTOP froze CI's worker inside a write, and the take-over the ``paused``
scenario waits for never came (every other writer waited on the frozen one's lock)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chaos.freeze import _stopped, freeze_outside_writes, write_lock_free
from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
print("ready", flush=True)
while True:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    time.sleep(0.2)  # the write lock held ~90 % of the time
    conn.execute("COMMIT")
    time.sleep(0.02)
"""


def test_a_freeze_lands_outside_the_write_lock(tmp_path: Path) -> None:
    database = str(tmp_path / "held.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database], text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        wait_until(lambda: not write_lock_free(database), timeout=10,
                   what="the holder to take the write lock")
        freeze_outside_writes(holder.pid, database)
        assert _stopped(holder.pid)
        assert write_lock_free(database), "frozen while holding the write lock"
        with sqlite3.connect(database, timeout=0) as conn:  # another writer goes on
            conn.execute("INSERT INTO t VALUES (2)")
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait(10)
