"""A queue backend whose ``claim`` returns what the kernel cannot read: a real ``nuvom
runworker`` process says so, naming the backend and its plugin, instead of losing its
dispatcher thread in silence (it stayed up, answered heartbeats and ran nothing)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import start_worker, stop_worker, wait_until

BAD_QUEUES = '''
import time

from nuvom_kernel.models import Lease, Message
from nuvom_kernel.testing.memory import MemoryJobQueue


class RowsQueue(MemoryJobQueue):
    """Hands out its own rows, not leases."""

    name = "rowsq"

    def claim(self, n, queues=None):
        return [{"id": "job-1", "token": "t"}]


class ListTokenQueue(MemoryJobQueue):
    """Hands out a lease whose token is a list: the kernel cannot even file it."""

    name = "listtokenq"

    def claim(self, n, queues=None):
        message = Message(id="job-1", body=b"{}")
        return [Lease(message=message, token=["t"], deliveries=1,
                      expires_at=time.time() + 60)]
'''


def _project(project: Path) -> None:
    (project / "bad_queues.py").write_text(BAD_QUEUES)
    (project / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["bad_queues:RowsQueue", "bad_queues:ListTokenQueue"]\n')


class _Output:
    """The worker's output as it comes, read on a thread (a blocking read would outwait
    any deadline)."""

    def __init__(self, worker: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(worker,), daemon=True)
        self._thread.start()

    def _pump(self, worker: subprocess.Popen[str]) -> None:
        for line in worker.stdout or ():
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def close(self) -> str:
        self._thread.join(30)
        return self.text()


def test_a_claim_that_returns_rows_is_named_and_retried_not_a_dead_dispatcher(
        project: Path) -> None:
    _project(project)
    worker = start_worker(project, {"NUVOM_QUEUE_BACKEND": "rowsq",
                                    "NUVOM_RESULT_BACKEND": "sqlite"}, "--workers", "1")
    output = _Output(worker)
    try:
        wait_until(lambda: output.text().count("from claim()") >= 2, timeout=30,
                   what="the bad claim reported twice (tried again after a pause)")
        assert worker.poll() is None, "a backend's bad answer must not end the worker"
    finally:
        worker.send_signal(2)
        worker.wait(30)
    text = output.close()
    assert "queue backend 'rowsq' (plugin 'bad_queues:RowsQueue') returned list holding dict" \
        in text, text
    assert "nuvom_kernel.models.Lease" in text and "nuvom plugin test rowsq" in text, text
    assert "Traceback" not in text, "the same contract error each time needs no traceback"
    assert "Exception in thread" not in text, text


def test_a_dispatcher_that_fails_stops_the_worker_with_status_1(project: Path) -> None:
    _project(project)
    worker = start_worker(project, {"NUVOM_QUEUE_BACKEND": "listtokenq",
                                    "NUVOM_RESULT_BACKEND": "sqlite"}, "--workers", "1")
    try:
        code = worker.wait(60)
    except subprocess.TimeoutExpired:
        out = stop_worker(worker)
        pytest.fail(f"the worker went on without a dispatcher:\n{out}")
    out = worker.stdout.read() if worker.stdout else ""
    assert code == 1, out
    assert "the worker's dispatcher failed, so it claims nothing more" in out, out
    assert "unhashable type: 'list'" in out, out
    assert "Exception in thread" not in out, out
