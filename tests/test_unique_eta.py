"""``unique=``/``unique_for=``, ``job_id=`` dedup and ``eta=``, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from nuvom_kernel import JobStatus, task
from tests.helpers import drain, run_worker_until


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

    with pytest.raises(ValueError, match="job_id must be at most 255 characters of UTF-8"
                       ) as info:
        keyed.apply_async(job_id=job_id)
    # a 7-character id with a NUL was told to use a shorter key
    assert ("use a shorter key" in str(info.value)) is (len(job_id) > 255)
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


@pytest.mark.parametrize("bad", [0, -3, 1.5, "2", True])
def test_bad_concurrency_and_unique_for_are_refused(bad):
    with pytest.raises(ValueError, match=r"@task\(concurrency=...\) takes a whole number "
                                         r">= 1 \(jobs of the task at once"):
        @task(concurrency=bad)
        def f() -> None: ...
    if not isinstance(bad, str | bool) and bad <= 0:
        with pytest.raises(ValueError, match=r"@task\(unique_for=...\) takes a number of "
                                             r"seconds above 0"):
            @task(unique_for=bad)
            def g() -> None: ...


def test_unique_false_beside_unique_for_is_refused():
    """``unique_for`` implies ``unique=True``, but an explicit ``unique=False`` won: the
    window was accepted and did nothing (two equal calls, two jobs)."""
    with pytest.raises(ValueError, match=r"unique_for=60 makes the task unique, but "
                                         r"unique=False says it is not"):
        @task(unique=False, unique_for=60)
        def g() -> None: ...
    @task(unique=True, unique_for=60)
    def h() -> None: ...
    assert h.options.unique and h.options.unique_for == 60


@pytest.mark.parametrize(("option", "value", "says"), [
    ("retries", "2", "@task(retries=...) takes a whole number >= 0"),
    ("retries", True, "@task(retries=...) takes a whole number >= 0"),
    ("unique", "yes", "@task(unique=...) takes True or False"),
    ("store_result", 1, "@task(store_result=...) takes True or False"),
    ("unique_for", "10", "@task(unique_for=...) takes a number of seconds"),
    ("unique_for", True, "@task(unique_for=...) takes a number of seconds"),
    ("unique_for", 10**12, "above 0 and at most 31622400 (366 days)"),
    ("timeout_secs", "5", "@task(timeout_secs=...) takes a number of seconds"),
    ("backoff_max_secs", None, "@task(backoff_max_secs=...) takes a number of seconds"),
    ("queue", "", "@task(queue=...): a queue name is a non-empty string"),
    ("queue", 123, "@task(queue=...): a queue name is a non-empty string"),
    ("queue", "a,b", "holds a comma"),
    ("queue", "caf\udce9", "holds a NUL or a lone surrogate"),
    ("backoff", "exp", "@task(backoff=...) takes 'fixed' or 'exponential'"),
    # a str was split into its letters, a number failed inside the decorator, a name that
    # was not text was accepted and failed each .delay() blaming the arguments
    ("tags", "email", '@task(tags=...) takes a list of strings, e.g. tags=["email"]'),
    ("tags", 5, "@task(tags=...) takes a list of strings"),
    ("description", 5, "@task(description=...) takes text"),
    ("name", 5, "@task(name=...) takes a non-empty string"),
    ("name", "", "@task(name=...) takes a non-empty string"),
])
def test_an_option_of_the_wrong_type_is_refused_by_name(option, value, says):
    """retries="2" failed with a bare "'<' not supported"; unique="yes", retries=True and a
    unique_for of 30,000 years were accepted as something else than meant."""
    with pytest.raises(ValueError) as info:
        task(**{option: value})(lambda: None)
    assert says in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(("option", "says"), [
    ("retry", "@task() has no option 'retry' (did you mean retries=?); it takes: name, "),
    ("timeout", "(did you mean timeout_secs=?)"),
    ("bogus", "@task() has no option 'bogus'; it takes: "),
])
def test_an_option_task_does_not_take_is_refused_with_the_closest_it_does(option, says):
    """``retry=3`` failed inside ``TaskOptions.__init__`` with a TypeError naming a class
    the user never wrote and no option of ``@task``."""
    with pytest.raises(TypeError) as info:
        task(**{option: 3})(lambda: None)
    assert says in str(info.value)
    assert "TaskOptions" not in str(info.value) and "retry_delay_secs" in str(info.value)


def test_a_stale_run_pushed_beside_the_next_runs_record_runs_as_that_run(kernel, monkeypatch):
    """Two producers race a unique job that just finished: one read "no record" before
    run 1 ended and pushes run 1 again; the other read run 1's outcome, stores run 2's
    QUEUED record, and its push finds the id held. The run-1 message's outcome was fenced
    out by run 2's record and never acked: it ran again at every visibility timeout until
    the delivery limit recorded FAILED. Its lease is the job's only one: it is run 2."""
    sync, first, done = _finished_unique_job(kernel)
    real_get = kernel.results.get
    monkeypatch.setattr(kernel.results, "get", lambda job_id: None)  # the stale read
    stale = sync.delay(7)
    monkeypatch.setattr(kernel.results, "get", real_get)
    assert stale.id == first.id and stale.run == 1 and kernel.queue.qsize() == 1
    _record_queued(kernel, done, run=2)
    run_worker_until(kernel, lambda: (r := kernel.results.get(first.id)) is not None
                     and r.status is JobStatus.SUCCEEDED,
                     "the stale message to be recorded as run 2")
    record = kernel.results.get(first.id)
    assert (record.run, record.result) == (2, 7)
    assert kernel.queue.qsize() == 0  # acked, not left to run again


def test_a_stale_message_failed_unrun_leaves_the_newer_runs_outcome(kernel, monkeypatch):
    """A stale run-1 message that hit the delivery limit (it never ran) recorded FAILED
    over run 2's SUCCEEDED. It has no outcome to add: it is dropped, the record stands."""
    from nuvom_kernel import Worker
    from nuvom_kernel.errors import LeaseLostError

    sync, first, done = _finished_unique_job(kernel)
    assert kernel.results.put(attrs.evolve(done, run=2, attempts=1))  # run 2 SUCCEEDED
    real_get = kernel.results.get
    monkeypatch.setattr(kernel.results, "get", lambda job_id: None)  # the stale read
    sync.delay(7)
    monkeypatch.setattr(kernel.results, "get", real_get)
    (lease,) = kernel.queue.claim(1)
    settler = Worker(kernel, workers=1).settler
    failed = settler.without_envelope(lease, LeaseLostError("delivered 20 times"), "dead")
    assert failed.record.run == 1  # fenced by the message's own run
    settler.settle([failed])
    record = kernel.results.get(first.id)
    assert (record.run, record.status, record.result) == (2, JobStatus.SUCCEEDED, 7)
    assert kernel.queue.qsize() == 0 and kernel.queue.peek_state(first.id) is None


def test_a_run_whose_push_was_lost_is_pushed_as_that_run(kernel):
    """Its QUEUED record landed but its push did not (a rolled-back transaction, a crash):
    the next call pushed run 1 under run 2's record, whose outcome was fenced out."""
    sync, first, done = _finished_unique_job(kernel)
    _record_queued(kernel, done, run=2)
    again = sync.delay(7)
    assert again.id == first.id and again.run == 2
    assert kernel._queued(first.id)[1].run == 2  # the message itself
    drain(kernel, again)
    assert (again.refresh().run, again.get(timeout=10)) == (2, 7)


def _finished_unique_job(kernel):
    """A unique task, and its job run once to the end: the task, the handle, the record."""
    @task(unique=True)
    def sync(account: int) -> int:
        return account

    first = sync.delay(7)
    drain(kernel, first)
    return sync, first, kernel.results.get(first.id)


def _record_queued(kernel, done, run: int) -> None:
    """What a producer starting run ``run`` stores before its push."""
    assert kernel.results.put(attrs.evolve(done, status=JobStatus.QUEUED, run=run, attempts=0,
                                           result=None, token=None, finished_at=None))
