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
