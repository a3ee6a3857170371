"""The seed's result conveniences (``set_result``, ``set_error``, ``get_result``,
``get_error``, ``get_full``, ``list_jobs``) and the queue's per-lease ``extend_many``, tested
once on the base class.

They are built on the primitives every backend passes the contract for, so a plugin never
writes them and the contract suite does not test them again per backend. The stub result
backend (the kernel's in-memory reference) stands in for any backend here.
"""

from __future__ import annotations

import numbers
import time

import pytest

from nuvom_kernel.backends import QueueBackend, page_cursor
from nuvom_kernel.models import JobStatus, Lease
from nuvom_kernel.testing.contracts._support import make_message, make_record
from nuvom_kernel.testing.stubs import StubQueue, StubResults
from tests.helpers import wait_until


@pytest.fixture
def results() -> StubResults:
    return StubResults()


def test_set_result(results: StubResults) -> None:
    results.set_result("new-job", {"sum": [1, 2]}, task="tasks.add")
    got = results.get("new-job")
    assert got is not None and got.status is JobStatus.SUCCEEDED
    assert got.task == "tasks.add"
    assert results.get_result("new-job") == {"sum": [1, 2]}
    assert results.get_error("new-job") is None
    running = make_record(status=JobStatus.RUNNING, task="tasks.mul")
    results.put(running)
    assert results.set_result(running.job_id, 42) is True
    got = results.get(running.job_id)
    assert got is not None and (got.status, got.result) == (JobStatus.SUCCEEDED, 42)
    assert got.task == "tasks.mul" and got.args == running.args, \
        "set_result keeps what the record already held"


def test_set_error(results: StubResults) -> None:
    results.set_error("bad-job", "builtins.ValueError", "no", "Traceback ...",
                      task="tasks.div")
    assert results.get_error("bad-job") == {
        "type": "builtins.ValueError", "message": "no", "traceback": "Traceback ..."}
    assert results.get_result("bad-job") is None
    got = results.get("bad-job")
    assert got is not None and got.status is JobStatus.FAILED


def test_an_outcome_replaces_the_other_kind(results: StubResults) -> None:
    """A success set over a failure keeps no error beside it (``get_error`` read the old
    one, and ``get_full`` said SUCCEEDED with an ``error_type``), and the other way."""
    results.set_error("r2", "ValueError", "bad", "tb")
    assert results.set_result("r2", 5) is True
    assert results.get_error("r2") is None and results.get_result("r2") == 5
    full = results.get_full("r2")
    assert full is not None and (full["status"], full["error_type"]) == ("SUCCEEDED", None)
    results.set_error("r2", "KeyError", "gone")
    assert results.get_result("r2") is None
    assert results.get("r2").result is None  # type: ignore[union-attr]


def test_unknown_ids_are_none_everywhere(results: StubResults) -> None:
    assert results.get_result("never-seen") is None
    assert results.get_error("never-seen") is None
    assert results.get_full("never-seen") is None


def test_get_full(results: StubResults) -> None:
    record = make_record(status=JobStatus.FAILED)
    results.put(record)
    full = results.get_full(record.job_id)
    assert full == record.to_dict()
    assert full is not None and full["status"] == "FAILED"


def test_list_jobs_filters_and_pages(results: StubResults) -> None:
    base = time.time() - 1000
    shapes = [(JobStatus.SUCCEEDED, "tasks.add")] * 4 + [(JobStatus.FAILED, "tasks.add")] \
        + [(JobStatus.SUCCEEDED, "tasks.mul")] * 2 + [(JobStatus.RETRYING, "tasks.mul")]
    records = [make_record(status=s, task=f, updated_at=base + i)
               for i, (s, f) in enumerate(shapes)]
    for record in records:
        results.put(record)
    rows = results.list_jobs(status="FAILED")
    assert [r["job_id"] for r in rows] == [r.job_id for r in records
                                           if r.status is JobStatus.FAILED]
    assert rows[0]["status"] == "FAILED"
    by_task = results.list_jobs(status=JobStatus.SUCCEEDED, task="tasks.mul")
    assert len(by_task) == 2 and all(r["task"] == "tasks.mul" for r in by_task)
    first = results.list_jobs(limit=6)
    assert [r["job_id"] for r in first] == [r.job_id for r in reversed(records)][:6]
    rest = results.list_jobs(limit=6, after=page_cursor(first[-1]))
    assert [r["job_id"] for r in rest] == [r.job_id for r in reversed(records)][6:]


def test_list_jobs_takes_a_status_in_any_case(results: StubResults) -> None:
    record = make_record(status=JobStatus.FAILED)
    results.put(record)
    assert [r["job_id"] for r in results.list_jobs(status="failed")] == [record.job_id]
    with pytest.raises(ValueError, match=r"status 'broken' is not a job status; use one of "
                                         r"QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, "
                                         r"CANCELLED$"):
        results.list_jobs(status="broken")


class _Int64:
    """An integer that is no ``int``, as numpy's ``int64`` is not."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __int__(self) -> int:
        return self.value

    def __le__(self, other: int) -> bool:
        return self.value <= other

    def __gt__(self, other: int) -> bool:
        return self.value > other


numbers.Integral.register(_Int64)


class _Float(float):
    """A float subclass, as numpy's ``float64`` is."""


def test_pop_batch_refuses_what_it_cannot_read() -> None:
    """A ``nan`` timeout waited forever on an empty queue; ``"2"`` and ``2.5`` failed
    deep in a comparison or a backend's claim."""
    queue = StubQueue()
    for n in ("2", 2.5, True):
        with pytest.raises(TypeError, match=r"pop_batch: n is how many messages to lease"):
            queue.pop_batch(n)  # type: ignore[arg-type]
    for timeout, error in ((float("nan"), ValueError), ("1", TypeError), (None, TypeError)):
        with pytest.raises(error, match=r"timeout is how many seconds to wait"):
            queue.pop_batch(1, timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got nan"):
        queue.dequeue(timeout=float("nan"))
    assert queue.dequeue(timeout=None) is None and queue.pop_batch(1, 0) == []
    assert queue.pop_batch(_Int64(1), _Float(0.0)) == []  # numbers of other types (numpy's)


def test_counts_default_pages_through_every_status(results: StubResults) -> None:
    for i in range(1005):
        results.put(make_record(status=JobStatus.SUCCEEDED if i % 5 else JobStatus.FAILED))
    assert results.counts() == {"SUCCEEDED": 804, "FAILED": 201}


def test_checked_body_names_the_message_and_what_is_wrong():
    from nuvom_kernel.models import Message

    assert Message(id="a", body=bytearray(b"x")).checked_body() == b"x"
    with pytest.raises(TypeError, match=r"message 'a': body must be bytes, got str"):
        Message(id="a", body="x").checked_body()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message id must be a non-empty string, got ''"):
        Message(id="", body=b"x").checked_body()


class _OneBadLease(StubQueue):
    """The base class's per-lease ``extend_many`` (the file backend's), over an ``extend``
    that fails for one job id, as a busy file or a dropped connection would."""

    extend_many = QueueBackend.extend_many
    bad = ""

    def extend(self, lease: Lease, secs: float) -> bool:
        if lease.id == self.bad:
            raise OSError("injected: the lease's file is busy")
        return StubQueue.extend_many(self, [lease], secs)[0]  # the stub's extend calls it


def test_extend_many_extends_every_lease_before_raising_the_first_error() -> None:
    queue = _OneBadLease(visibility_timeout_secs=0.3)
    queue.enqueue_many([make_message() for _ in range(4)])
    leases = queue.claim(4)
    queue.bad = leases[1].id
    with pytest.raises(OSError, match="injected"):
        queue.extend_many(leases, 600.0)
    lapsed = wait_until(lambda: queue.claim(4), timeout=5, what="the unextended lease to lapse")
    assert [le.id for le in lapsed] == [leases[1].id], \
        "only the lease whose extend failed may lapse; the ones after it must be extended"
