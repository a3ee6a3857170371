"""The lease monitor of a worker whose lease another worker took over (after a stall, a
partition, a clock step): it logged "lost its lease while running" for the same job every
round, each second, until the job ended, and kept asking the queue to extend a lease that
was no longer its own. Said once now, and not extended again. A real SQLite file, two
queue instances as two workers."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import attrs
import pytest

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.job import Job
from nuvom_kernel.models import Message, TaskOptions
from nuvom_kernel.worker.monitor import LeaseMonitor
from nuvom_kernel.worker.settle import Running
from nuvom_plugins_sqlite import SQLiteJobQueue


def test_a_lost_lease_is_said_once_and_not_extended_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ours = SQLiteJobQueue(tmp_path / "q.db", visibility_timeout_secs=3)
    theirs = SQLiteJobQueue(tmp_path / "q.db", visibility_timeout_secs=3)
    try:
        envelope = Envelope.for_call("lost_lease_job", None, TaskOptions(), (), {})
        ours.push([Message(id=envelope.id, body=b"{}", task="lost_lease_job")])
        [lease] = ours.claim(1)
        assert ours.extend(lease, 0)  # expired: the next claim of any worker takes it over
        [taken] = theirs.claim(1)
        assert taken.token != lease.token
        job = Job(id=envelope.id, task="lost_lease_job")
        running = Running(job, lease, envelope, threading.current_thread(), time.time(),
                          time.monotonic(), None, extended_at=float("-inf"))
        monitor = LeaseMonitor(ours, {job.id: running}, lambda _: None, set())
        with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
            for _ in range(3):
                running.extended_at = float("-inf")  # due for extension at every round
                monitor.tick()
        lost = [r for r in caplog.records if "lost its lease while running" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in lost]
        assert running.lease_lost
        assert theirs.extend(taken, 3), "the new holder's lease is untouched"
    finally:
        ours.close()
        theirs.close()


def test_a_failed_extension_of_a_slow_settle_is_said_and_tried_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The batch being settled is extended on a thread of its own once its settle takes
    half a lease; a queue that fails that extension is said (on that thread, which ends),
    and the next round tries again."""
    queue = SQLiteJobQueue(tmp_path / "q.db", visibility_timeout_secs=30)
    envelope = Envelope.for_call("slow_settle_job", None, TaskOptions(), (), {})
    queue.push([Message(id=envelope.id, body=b"{}", task="slow_settle_job")])
    [lease] = queue.claim(1)
    job = Job(id=envelope.id, task="slow_settle_job")
    running = Running(job, lease, envelope, threading.current_thread(), time.time(),
                      time.monotonic(), None, extended_at=float("-inf"))
    monitor = LeaseMonitor(queue, {job.id: running}, lambda _: None, {job.id})
    running.lease = attrs.evolve(lease, expires_at=time.time() + 5)  # half a lease taken
    queue.close()  # the store fails every call from now on: its file is not a database
    db = tmp_path / "q.db"
    for path in tmp_path.glob("q.db*"):
        path.rename(path.with_name("kept-" + path.name))
    db.write_bytes(b"not a database " * 512)
    with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        monitor.tick()
        aside = monitor._aside
        assert aside is not None
        aside.join(10)
        assert not aside.is_alive()
    said = [r.getMessage() for r in caplog.records]
    assert any("failed to extend the leases of 1 job(s) whose outcomes are being stored" in m
               and "tried again in the next round" in m for m in said), said
    assert not running.lease_lost, "a failed call is not a lost lease"
    db.unlink()
    for path in tmp_path.glob("kept-q.db*"):
        path.rename(path.with_name(path.name.removeprefix("kept-")))
    with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        running.extended_at = float("-inf")
        monitor.tick()
        aside = monitor._aside
        assert aside is not None
        aside.join(10)
        assert running.lease.expires_at > time.time() + 20, "the next round extended it"
    queue.close()
