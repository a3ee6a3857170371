"""``unique=``/``unique_for=``, ``job_id=`` dedup and ``eta=``, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from nuvom_kernel import JobStatus, task
from tests.helpers import drain


def test_unique_returns_the_unfinished_job_for_equal_arguments(kernel):
    @task(unique=True)
    def sync(account: int, full: bool = False) -> int:
        return account

    first = sync.delay(7)
    assert sync.delay(7).id == first.id
    assert sync.delay(account=7).id == first.id  # the same call, however it is spelled
    assert sync.apply_async(args=(7,)).id == first.id
    other = sync.delay(7, full=True)
    assert other.id != first.id
    assert kernel.queue.qsize() == 2
    mapped = sync.map([7, (7, True), 8])
    assert [j.id for j in mapped[:2]] == [first.id, other.id]
    assert kernel.queue.qsize() == 3
    drain(kernel, *mapped)
    again = sync.delay(7)  # finished: without unique_for, a new run starts
    assert again.id == first.id and again.run == 2
    assert kernel.queue.qsize() == 1
    drain(kernel, again)
    assert again.get(timeout=10) == 7 and again.refresh().run == 2


def test_unique_for_covers_finished_jobs_for_that_long(kernel):
    @task(unique_for=3600)
    def rebuild(name: str) -> str:
        return name

    first = rebuild.delay("index")
    drain(kernel, first)
    again = rebuild.delay("index")
    assert again.id == first.id and again.status is JobStatus.SUCCEEDED
    assert kernel.queue.qsize() == 0


def test_job_id_twice_gives_one_job(kernel):
    @task
    def charge(order: str) -> str:
        return order

    a = charge.apply_async(args=("o",), job_id="order-42")
    b = charge.apply_async(args=("o",), job_id="order-42")
    assert a.id == b.id == "order-42" and kernel.queue.qsize() == 1
    drain(kernel, a)
    assert charge.apply_async(args=("o",), job_id="order-42").status is JobStatus.SUCCEEDED
    assert kernel.queue.qsize() == 0


@pytest.mark.parametrize("job_id", ["x" * 256, "order\x0042", "order-\udcff"])
def test_a_job_id_no_backend_can_key_is_refused_before_anything_is_stored(kernel, job_id):
    """PostgreSQL's id index holds ~2,700 bytes an entry and no text holds a NUL: such an
    id failed there with a database error (a long one taken for a lost connection)."""
    @task
    def keyed() -> None: ...

    with pytest.raises(ValueError, match="job_id must be at most 255 characters of UTF-8"):
        keyed.apply_async(job_id=job_id)
    with pytest.raises(ValueError, match="job_id must be at most 255 characters of UTF-8"):
        keyed.map([()], job_ids=[job_id])
    assert kernel.queue.qsize() == 0
    assert keyed.apply_async(job_id="x" * 255).id == "x" * 255


def test_eta_delays_the_job_and_a_naive_eta_is_refused(kernel):
    @task
    def later() -> None: ...

    with pytest.raises(ValueError, match="zone"):
        later.apply_async(eta=datetime(2030, 1, 1, 9))
    with pytest.raises(ValueError, match="not both"):
        later.apply_async(eta=datetime.now(timezone.utc), delay_secs=5)
    job = later.apply_async(eta=datetime.now(timezone.utc) + timedelta(hours=1))
    assert job.refresh().status is JobStatus.QUEUED
    assert kernel.queue.claim(1) == []  # not before its time
    soon = later.apply_async(eta=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert [lease.id for lease in kernel.queue.claim(5)] == [soon.id]


@pytest.mark.parametrize("bad", [0, -3, 1.5, "2"])
def test_bad_concurrency_and_unique_for_are_refused(bad):
    with pytest.raises(ValueError, match="concurrency"):
        @task(concurrency=bad)
        def f() -> None: ...
    if not isinstance(bad, str) and bad <= 0:
        with pytest.raises(ValueError, match="unique_for"):
            @task(unique_for=bad)
            def g() -> None: ...
