"""A record larger than PostgreSQL stores fails its own job once, and no other.

Before: a result (or error text) whose record encoded past PostgreSQL's 1 GB limit on one
field and one protocol message was sent as it was; the server closed the connection, the
settler took that for a store that is down and tried the whole batch again, and the job,
with every job settled beside it, ran again at every visibility timeout until the delivery
limit recorded it as crashed. Now the backend measures the record before sending and
raises ``SerializationError``, which the settler stores as that job's failure.

A real 1 GB value is too heavy for a test run, so the one seam is the bound
(``results.MAX_RECORD_BYTES``), lowered with ``monkeypatch``; the server, the backends, the
settler and the worker are the real ones, on a schema of the test's own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from pg_support import DSN

from nuvom_kernel import JobStatus, Worker
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord, Settlement
from nuvom_kernel.testing.contracts import make_message, make_record
from nuvom_kernel.worker.settle import Settler
from nuvom_plugins_postgres import PostgresResultBackend
from nuvom_plugins_postgres import results as results_module
from nuvom_plugins_postgres.results import dumps

#: The lowered bound: a few hundred KB stand in for PostgreSQL's 1 GB.
BOUND = 200_000

TASKS = '''\
import pathlib

from nuvom_kernel import task

RUNS = pathlib.Path(__file__).with_name("runs.log")


@task
def sized(name, n):
    with RUNS.open("a") as f:
        f.write(name + "\\n")
    return "x" * n
'''


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> int:
    """The backend's record bound, lowered to :data:`BOUND` for this test."""
    monkeypatch.setattr(results_module, "MAX_RECORD_BYTES", BOUND)
    return BOUND


def _stored_size(record: JobRecord) -> int:
    """Bytes of ``record`` as the backend sends it (UTF-8 JSON)."""
    return len(dumps(record.to_dict()).encode())


def _settlements(kernel: Kernel, results: list[object]) -> list[Settlement]:
    """Real leases of the PostgreSQL queue, one per result, each with a SUCCEEDED record."""
    messages = [make_message() for _ in results]
    assert kernel.queue.push(messages) == [True] * len(messages)
    leases = sorted(kernel.queue.claim(len(messages)),
                    key=lambda le: [m.id for m in messages].index(le.id))
    assert [le.id for le in leases] == [m.id for m in messages]
    return [Settlement(le, make_record(le.id, token=le.token, attempts=le.deliveries,
                                       result=value))
            for le, value in zip(leases, results, strict=True)]


def _assert_refused_saying_why(record: JobRecord | None, job_id: str) -> None:
    assert record is not None and record.status is JobStatus.FAILED, record
    assert record.result is None
    assert record.error_type == "nuvom_kernel.errors.SerializationError"
    message = record.error_message or ""
    assert "cannot be stored by the 'postgres' result backend" in message
    assert f"job {job_id}" in message and "MiB" in message, message
    assert f"MiB ({BOUND:,} bytes) it stores in one record" in message, message
    assert "'result' field" in message and "pass a reference" in message, message
    assert record.history[-1]["kind"] == "unstorable"


def test_a_result_past_the_bound_fails_alone_in_its_settle_batch(
        kernel: Kernel, bound: int) -> None:
    """The settler's own batch of two (the one-statement settle on one database): the
    large result's job is FAILED saying why, the small one beside it SUCCEEDED, and both
    are acked, so neither runs again."""
    big, small = _settlements(kernel, ["x" * bound, "ok"])
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    assert settler.settle([big, small], patiently=True) == [True, True]
    _assert_refused_saying_why(kernel.results.get(big.record.job_id), big.record.job_id)
    done = kernel.results.get(small.record.job_id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "ok"
    assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0


def test_a_worker_runs_a_job_whose_result_is_too_large_once(
        tmp_path: Path, schema: str, bound: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a started worker pool; the large job ran once and is FAILED, the jobs
    enqueued beside it ran once and SUCCEEDED, and nothing is left leased to run again.
    A short visibility timeout and delivery limit: before, the job ran again at each
    expiry until the limit recorded it as crashed."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "t_size.py").write_text(TASKS)
    monkeypatch.delitem(sys.modules, "t_size", raising=False)
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
        "NUVOM_PLUGINS__POSTGRES__DSN": DSN, "NUVOM_PLUGINS__POSTGRES__SCHEMA": schema,
        "NUVOM_VISIBILITY_TIMEOUT_SECS": "2", "NUVOM_MAX_DELIVERIES": "3"})
    try:
        with use_kernel(kernel):
            from t_size import sized  # type: ignore[import-not-found]

            jobs = [sized.delay("small 0", 10), sized.delay("big", bound),
                    sized.delay("small 1", 10), sized.delay("small 2", 10)]
            ids = [j.id for j in jobs]
            worker = Worker(kernel, workers=2, scheduler=False, poll_timeout_secs=0.05)
            worker.start()
            try:
                deadline = time.monotonic() + 30
                while not all((r := kernel.results.get(i)) is not None
                              and r.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
                              for i in ids):
                    assert time.monotonic() < deadline, "the jobs did not finish in 30 s"
                    time.sleep(0.05)
            finally:
                worker.stop()
                worker.join()
            _assert_refused_saying_why(kernel.results.get(ids[1]), ids[1])
            for i in (ids[0], ids[2], ids[3]):
                record = kernel.results.get(i)
                assert record is not None and record.status is JobStatus.SUCCEEDED
                assert record.result == "x" * 10
            runs = (tmp_path / "runs.log").read_text().splitlines()
            assert sorted(runs) == ["big", "small 0", "small 1", "small 2"], runs
            assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0
    finally:
        kernel.close()


def test_put_refuses_a_record_one_byte_past_the_bound_naming_it(
        results: PostgresResultBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound counts UTF-8 bytes, not characters (``é`` is two): a record of exactly
    the bound is stored and reads back; one byte less of bound refuses it, and the batch
    holding it stores nothing."""
    record = make_record(result="é" * 50_000)
    size = _stored_size(record)
    assert size > len(dumps(record.to_dict())) + 49_000  # non-ASCII: bytes, not characters
    monkeypatch.setattr(results_module, "MAX_RECORD_BYTES", size - 1)
    other = make_record()
    with pytest.raises(SerializationError, match=f"job {record.job_id} .*MiB.*'result' field"):
        results.put_many([other, record])
    assert results.get(other.job_id) is None and results.get(record.job_id) is None
    monkeypatch.setattr(results_module, "MAX_RECORD_BYTES", size)
    assert results.put(record)
    assert results.get(record.job_id) == record


def test_records_under_the_bound_are_stored_and_settled(
        kernel: Kernel, results: PostgresResultBackend, bound: int) -> None:
    """Under the bound nothing changes: ``put`` stores a large record, and two that fit
    alone but not in one statement are each stored (``put_many`` refuses them together,
    saying so; the settler then stores them one by one, both SUCCEEDED)."""
    half = "x" * (bound // 2 + 1_000)
    record = make_record(result="y" * (bound - 1_000))
    assert _stored_size(record) <= bound
    assert results.put(record) and results.get(record.job_id) == record
    with pytest.raises(SerializationError, match="each fits alone"):
        results.put_many([make_record(result=half), make_record(result=half)])
    batch = _settlements(kernel, [half, half])
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    assert settler.settle(batch, patiently=True) == [True, True]
    for item in batch:
        stored = kernel.results.get(item.record.job_id)
        assert stored is not None and stored.status is JobStatus.SUCCEEDED
        assert stored.result == half
    assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0
