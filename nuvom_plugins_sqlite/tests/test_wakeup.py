"""Wake-up registry across network namespaces (containers sharing the database's folder).

Abstract Unix sockets are per network namespace: a producer in another one cannot reach a
waiter, and used to take it for dead and delete its registry file, after which no producer
could wake it for the rest of its life.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlite_helpers import msg

from nuvom_plugins_sqlite import SQLiteJobQueue
from nuvom_plugins_sqlite.wakeup import WAKEUPS_SUPPORTED

pytestmark = pytest.mark.skipif(not WAKEUPS_SUPPORTED, reason="wake-up sockets are Linux-only")


def _register(queue: SQLiteJobQueue) -> list[Path]:
    """Make this thread a registered waiter (its first wait only registers); its entries."""
    queue.wait_for_messages(0.01, queue._generation)
    entries = sorted(queue._waker.dir.iterdir())
    assert len(entries) == 1, entries
    return entries


def _woken_by_a_push(consumer: SQLiteJobQueue, db: Path, job_id: str) -> bool:
    """Whether a push from another instance (its own sender and registry listing, as in
    another process of this namespace) wakes this thread's waiter."""
    listener = consumer._waker.listener()
    assert listener is not None
    sock, _ = listener
    consumer._waker.wait(sock, 0)  # drain earlier wake-ups
    producer = SQLiteJobQueue(db)
    producer.enqueue(msg(job_id))
    producer.close()
    return consumer._waker.wait(sock, 10)  # a deadline, not a sleep: True once woken


def test_registry_names_carry_the_network_namespace(queue: SQLiteJobQueue) -> None:
    [entry] = _register(queue)
    assert entry.name.startswith(f"{os.stat('/proc/self/ns/net').st_ino}-"), entry.name


def test_entries_of_another_namespace_are_neither_woken_nor_pruned(
        queue: SQLiteJobQueue) -> None:
    """A refused send to another namespace's waiter proves nothing about it."""
    queue._waker.dir.mkdir(parents=True)
    foreign = queue._waker.dir / "1-0123456789abcdef"  # namespace inode 1: never ours
    foreign.touch()
    queue.enqueue(msg("a"))
    assert foreign.exists()


def test_a_producer_in_another_network_namespace_leaves_waiters_registered(
        db_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a second network namespace")
    consumer = SQLiteJobQueue(db_path)
    entries = _register(consumer)
    code = ("import sys\nfrom nuvom_kernel.models import Message\n"
            "from nuvom_plugins_sqlite import SQLiteJobQueue\n"
            "q = SQLiteJobQueue(sys.argv[1])\nq.enqueue(Message(id='far', body=b'x'))\n"
            "q.close()\n")
    far = subprocess.run(["unshare", "-n", sys.executable, "-c", code, str(db_path)],
                         capture_output=True, text=True, timeout=60)
    if far.returncode != 0 and "unshare failed" in far.stderr:
        pytest.skip(f"no new network namespace here: {far.stderr.strip()}")
    assert far.returncode == 0, far.stderr
    assert all(entry.exists() for entry in entries)
    assert _woken_by_a_push(consumer, db_path, "near")  # this namespace still wakes it
    assert consumer.qsize() == 2
    consumer.close()


def test_a_waiter_whose_entry_vanished_registers_again_on_its_next_timeout(
        db_path: Path) -> None:
    consumer = SQLiteJobQueue(db_path)
    [entry] = _register(consumer)
    entry.unlink()  # as an older version in another namespace did, or a clean-up by hand
    consumer.wait_for_messages(0.01, consumer._generation)  # times out: registers again
    assert entry.exists()
    assert _woken_by_a_push(consumer, db_path, "a")
    consumer.close()


def test_another_namespaces_entries_left_for_long_are_pruned_and_live_ones_kept(
        db_path: Path) -> None:
    """No process can reach another namespace's waiters to learn they are gone, so a
    container killed for good left its entries for ever (one more per restart). An entry
    not refreshed for ``_STALE_SECS`` goes at the next registration; a fresh one stays, and
    an idle waiter refreshes its own on its timeouts."""
    from nuvom_plugins_sqlite.wakeup import _REFRESH_SECS, _STALE_SECS

    folder = Path(f"{db_path}-wake")
    folder.mkdir(parents=True)
    stale, fresh = folder / "1-00000000000000aa", folder / "1-00000000000000bb"
    stale.touch()
    fresh.touch()
    old = os.stat(stale).st_mtime - _STALE_SECS - 1
    os.utime(stale, (old, old))
    consumer = SQLiteJobQueue(db_path)
    [mine] = [e for e in _register_any(consumer) if e not in (stale, fresh)]
    assert not stale.exists() and fresh.exists()
    aged = os.stat(mine).st_mtime - _REFRESH_SECS - 1
    os.utime(mine, (aged, aged))
    consumer.wait_for_messages(0.01, consumer._generation)  # a timeout refreshes it
    assert os.stat(mine).st_mtime > aged + _REFRESH_SECS
    consumer.close()


def _register_any(queue: SQLiteJobQueue) -> list[Path]:
    queue.wait_for_messages(0.01, queue._generation)
    return sorted(queue._waker.dir.iterdir())
