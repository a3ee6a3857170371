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


class AwayQueue(MemoryJobQueue):
    """A store that is away, saying so as the server plugins do (an EnqueueError)."""

    name = "awayq"

    def claim(self, n, queues=None):
        from nuvom_kernel.errors import EnqueueError
        raise EnqueueError("the store at awayq://here is not answering: check it is up")


class BuggyQueue(MemoryJobQueue):
    """A claim with a bug of its own: its traceback is what its author needs."""

    name = "buggyq"

    def claim(self, n, queues=None):
        return {}["no such key"]


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
        '[plugins]\nqueue_backend = ["bad_queues:RowsQueue", "bad_queues:ListTokenQueue", '
        '"bad_queues:AwayQueue", "bad_queues:BuggyQueue"]\n')


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


def _worker_ends(project: Path, backend: str) -> tuple[int, str]:
    """A worker on ``backend`` that must stop by itself: its exit status and output."""
    _project(project)
    worker = start_worker(project, {"NUVOM_QUEUE_BACKEND": backend,
                                    "NUVOM_RESULT_BACKEND": "sqlite"}, "--workers", "1")
    try:
        code = worker.wait(60)
    except subprocess.TimeoutExpired:
        out = stop_worker(worker)
        pytest.fail(f"the worker went on after its backend broke:\n{out}")
    return code, worker.stdout.read() if worker.stdout else ""


def test_a_claim_that_returns_rows_is_named_and_stops_the_worker(project: Path) -> None:
    """Not tried again: each claim would take jobs nobody can run, every one of them back
    after its visibility timeout one delivery nearer ``max_deliveries``."""
    code, text = _worker_ends(project, "rowsq")
    assert code == 1, text
    assert "queue backend 'rowsq' (plugin 'bad_queues:RowsQueue') returned list holding dict" \
        in text, text
    assert "nuvom_kernel.models.Lease, so this worker claims nothing more" in text, text
    assert "nuvom plugin test rowsq" in text and "stopping the worker (exit status 1)" in text
    assert text.count("from claim()") == 1, "said once, not at every retry"
    assert "Traceback" not in text, "the contract error says all: no traceback"
    assert "Exception in thread" not in text, text


def test_a_dispatcher_that_fails_stops_the_worker_with_status_1(project: Path) -> None:
    code, out = _worker_ends(project, "listtokenq")
    assert code == 1, out
    assert "the worker's dispatcher failed, so it claims nothing more" in out, out
    assert "unhashable type: 'list'" in out, out
    assert "Exception in thread" not in out, out


@pytest.mark.parametrize("backend", ["awayq", "buggyq"])
def test_a_failing_claim_is_one_line_when_the_backend_explains_it(project: Path,
                                                                  backend: str) -> None:
    """A store outage logged ~70 lines of traceback per retry, for an error whose message
    already named the server and what to check; a backend's own error (a NuvomError) is
    now one line, an unexpected one keeps its traceback."""
    _project(project)
    worker = start_worker(project, {"NUVOM_QUEUE_BACKEND": backend,
                                    "NUVOM_RESULT_BACKEND": "sqlite"}, "--workers", "1")
    output = _Output(worker)
    try:
        wait_until(lambda: output.text().count("failed to claim jobs") >= 2, timeout=30,
                   what="the failing claim logged twice")
    finally:
        worker.send_signal(2)
        worker.wait(30)
    text = output.close()
    if backend == "awayq":
        assert ("failed to claim jobs; retrying in 0.10 s: nuvom_kernel.errors.EnqueueError: "
                "the store at awayq://here is not answering: check it is up") in text, text
        assert "Traceback" not in text, text
    else:
        assert "failed to claim jobs; retrying in 0.10 s: KeyError: 'no such key'" in text
        assert text.count("Traceback") >= 2, text
