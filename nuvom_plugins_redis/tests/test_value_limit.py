"""Values longer than the server's ``proto-max-bulk-len`` are refused before they are sent.

Redis answers such a value (a result, an error text or an argument, encoded) by closing the
connection. redis-py resent it, the plugin reported "cannot reach Redis", and the worker's
settler took that for a server that is down: it retried the whole batch, and the job (and
every job settled beside it) ran again at each visibility timeout until the delivery limit
failed it as crashed; ``.delay()`` resent the argument and blamed the network. These tests
lower the limit of the machine's server to its minimum (1 MB) and put it back after, on
database 9 under a namespace of their own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from redis_helpers import PREFIX, URL

from nuvom_kernel import JobStatus, task
from nuvom_kernel.backends import BackendContext, ResultBackend
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import Settlement
from nuvom_kernel.testing.contracts import make_message, make_record, wait_until
from nuvom_kernel.worker import Worker
from nuvom_kernel.worker.landing import UNSTORABLE
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend
from nuvom_plugins_redis.connection import delete_prefix
from nuvom_plugins_redis.errors import ValueTooLargeError
from nuvom_plugins_redis.results import record_values

#: The machine's server, database 9 (the limit is the server's, whatever the database).
URL9 = URL.rsplit("/", 1)[0] + "/9"
LIMIT = 2**20  # the smallest proto-max-bulk-len Redis accepts ("1mb")


@pytest.fixture
def limit() -> Iterator[int]:
    """The server's ``proto-max-bulk-len`` lowered to 1 MB, its value before put back."""
    admin = redis.Redis.from_url(URL9)
    before = str(admin.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    admin.config_set("proto-max-bulk-len", str(LIMIT))
    try:
        yield LIMIT
    finally:
        admin.config_set("proto-max-bulk-len", before)
        admin.close()


@pytest.fixture
def ns() -> Iterator[str]:
    namespace = f"t-big-{uuid.uuid4().hex[:12]}"
    yield namespace
    delete_prefix(URL9, f"{PREFIX}:{namespace}:")


@pytest.fixture
def backends(limit: int, ns: str) -> Iterator[tuple[RedisJobQueue, RedisResultBackend]]:
    """A queue and a result backend on one store's server and prefix, built after the
    limit was lowered (they read it when they connect)."""
    context = BackendContext(visibility_timeout_secs=30.0, namespace=ns)
    settings = {"url": URL9, "key_prefix": PREFIX}
    queue = RedisJobQueue.from_settings(settings, context)
    results = RedisResultBackend.from_settings(settings, context)
    yield queue, results
    queue.close()
    results.close()


@pytest.fixture
def kernel(limit: int, ns: str, tmp_path: Path) -> Iterator[Kernel]:
    """A kernel on Redis (db 9, this test's namespace), installed as the process's own;
    short leases, so a job run again would show within the test."""
    environ = {"NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
               "NUVOM_NAMESPACE": ns, "NUVOM_PLUGINS__REDIS__URL": URL9,
               "NUVOM_PLUGINS__REDIS__KEY_PREFIX": PREFIX,
               "NUVOM_VISIBILITY_TIMEOUT_SECS": "4", "NUVOM_MAX_DELIVERIES": "3",
               "NUVOM_PLUGINS__REDIS__BLOCK_SECS": "0.2"}
    k = Kernel(root=tmp_path, environ=environ)
    try:
        with use_kernel(k):
            yield k
    finally:
        k.close()


def _name(what: str) -> str:
    """A task name of this test alone (the registry is the process's)."""
    return f"value_limit.{what}.{uuid.uuid4().hex[:8]}"


def _assert_clear(text: str, job_id: str) -> None:
    """The refusal names the job, the size in MB, the limit, and what to do; not a
    connection problem."""
    assert job_id in text, text
    assert " MiB" in text and "proto-max-bulk-len: 1.0 MiB" in text, text
    assert "reference" in text and "CONFIG SET proto-max-bulk-len" in text, text
    assert "cannot reach" not in text and "redis-server runs" not in text, text


# --- the backends -----------------------------------------------------------------------


def test_the_limit_is_read_from_the_server(backends: tuple[RedisJobQueue, RedisResultBackend],
                                           limit: int) -> None:
    queue, results = backends
    assert queue.store.max_bulk == limit and results.store.max_bulk == limit


def test_a_record_over_the_limit_is_refused_before_it_is_sent(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    _, results = backends
    record = make_record("big-1", result="x" * limit)
    started = time.monotonic()
    with pytest.raises(ValueTooLargeError) as info:
        results.put(record)
    assert time.monotonic() - started < 2, "the value was sent (and resent) first"
    assert isinstance(info.value, UNSTORABLE), "the settler must know it as unstorable"
    _assert_clear(str(info.value), "big-1")
    assert results.get("big-1") is None
    assert results.put(make_record("small-1")), "the connection is still in use"


def test_a_record_of_exactly_the_limit_is_stored_and_one_byte_more_is_not(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    _, results = backends
    base = make_record("edge-1", result="")  # one record: its timestamps' digits are fixed
    bare = len(record_values(base)[-1])
    fits = attrs.evolve(base, result="y" * (limit - bare))
    assert len(record_values(fits)[-1]) == limit
    assert results.put(fits)
    stored = results.get("edge-1")
    assert stored is not None and stored.result == fits.result
    over = attrs.evolve(base, job_id="edge-2", result="y" * (limit - bare + 1))
    assert len(record_values(over)[-1]) == limit + 1
    with pytest.raises(ValueTooLargeError):
        results.put(over)
    assert results.get("edge-2") is None


def test_put_many_stores_nothing_when_one_record_is_too_large(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    """Every record is checked before the first chunk goes: the settler stores such a batch
    again one by one, so a part stored before the refusal would be stored twice."""
    _, results = backends
    records = [make_record(f"many-{i}") for i in range(700)]  # two chunks of 500
    records.append(make_record("many-big", result="z" * limit))
    with pytest.raises(ValueTooLargeError, match="many-big"):
        results.put_many(records)
    assert results.get("many-0") is None and results.get("many-699") is None


def test_settle_many_sends_nothing_when_one_record_is_too_large(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    queue, results = backends
    small, big = make_message("settle-small"), make_message("settle-big")
    assert queue.push([small, big]) == [True, True]
    leases = {lease.id: lease for lease in queue.claim(2)}
    batch = [Settlement(leases["settle-small"], make_record(
                 "settle-small", token=leases["settle-small"].token)),
             Settlement(leases["settle-big"], make_record(
                 "settle-big", token=leases["settle-big"].token, result="r" * limit))]
    with pytest.raises(ValueTooLargeError) as info:
        queue.settle_many(batch, results)
    _assert_clear(str(info.value), "settle-big")
    assert results.get("settle-small") is None, "part of the batch was sent"
    assert queue.extend_many([leases["settle-small"], leases["settle-big"]], 30) == \
        [True, True], "a lease was acked"
    assert queue.settle_many(batch[:1], results) == [True]


def test_a_retry_body_over_the_limit_is_refused(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    queue, _ = backends
    assert queue.push([make_message("retry-1")]) == [True]
    lease = queue.claim(1)[0]
    with pytest.raises(ValueTooLargeError, match="retry-1"):
        queue.retry(lease, delay_secs=0, body=b"b" * (limit + 1))
    assert queue.extend(lease, 30), "the refused retry changed the lease"
    assert queue.retry(lease, delay_secs=0, body=b"b" * limit)


def test_a_message_over_the_limit_is_refused_and_nothing_of_its_chunk_stored(
        backends: tuple[RedisJobQueue, RedisResultBackend], limit: int) -> None:
    queue, _ = backends
    ok, big = make_message("push-ok"), make_message("push-big", b"m" * (limit + 1))
    started = time.monotonic()
    with pytest.raises(ValueTooLargeError) as info:
        queue.push([ok, big])
    assert time.monotonic() - started < 2, "the value was sent (and resent) first"
    assert isinstance(info.value, EnqueueError)
    _assert_clear(str(info.value), "push-big")
    assert queue.qsize() == 0 and queue.peek("push-ok") is None
    edge = make_message("push-edge", b"m" * limit)
    assert queue.push([edge]) == [True]
    claimed = queue.claim(1)
    assert [lease.message.body for lease in claimed] == [edge.body]


# --- end to end: .delay() and a worker ----------------------------------------------------


def test_delay_with_an_argument_over_the_limit_says_so_and_enqueues_nothing(
        kernel: Kernel, limit: int) -> None:
    @task(name=_name("size_of"))
    def size_of(data: str) -> int:
        return len(data)

    started = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        size_of.delay("a" * (limit + 1))
    assert time.monotonic() - started < 5, "the argument was resent before the error"
    text = str(info.value)
    assert "MiB" in text and "proto-max-bulk-len: 1.0 MiB" in text, text
    assert "reference" in text and "cannot reach" not in text, text
    assert kernel.queue.qsize() == 0


def test_values_just_under_the_limit_are_enqueued_run_and_stored(kernel: Kernel,
                                                                 limit: int) -> None:
    under = limit - 64 * 1024  # room for the rest of the message or record

    @task(name=_name("size_of"))
    def size_of(data: str) -> int:
        return len(data)

    @task(name=_name("make"))
    def make(n: int) -> str:
        return "r" * n

    sized, made = size_of.delay("a" * under), make.delay(under)
    worker = Worker(kernel, workers=2, scheduler=False, poll_timeout_secs=0.05)
    worker.start()
    try:
        assert sized.get(timeout=30) == under
        assert made.get(timeout=30) == "r" * under
    finally:
        worker.stop()
        worker.join()
    assert sized.refresh().status is JobStatus.SUCCEEDED
    assert made.refresh().status is JobStatus.SUCCEEDED


def test_a_result_over_the_limit_fails_its_job_once_and_spares_its_batch(
        kernel: Kernel, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job whose result is too large is FAILED after one run, saying why; the jobs
    settled in the same batch succeed, each run once."""
    runs: list[str] = []
    together = threading.Barrier(4, timeout=30)  # every job finishes at the same moment

    @task(name=_name("big"))
    def big() -> str:
        runs.append("big")
        together.wait()
        return "x" * (limit + 1)

    @task(name=_name("small"))
    def small(i: int) -> int:
        runs.append(f"small{i}")
        together.wait()
        return i

    batches: list[list[str]] = []
    settle_many = kernel.queue.settle_many

    def recorded(settlements: Sequence[Settlement], results: ResultBackend) -> Any:
        """The real call, each batch noted; the first held for a moment, so the outcomes
        that finish meanwhile are settled together in the next."""
        batches.append([s.record.job_id for s in settlements])
        if len(batches) == 1:
            time.sleep(0.5)
        return settle_many(settlements, results)

    monkeypatch.setattr(kernel.queue, "settle_many", recorded)
    bad = big.delay()
    smalls = [small.delay(i) for i in range(3)]
    jobs: list[Job[Any]] = [bad, *smalls]
    worker = Worker(kernel, workers=4, scheduler=False, poll_timeout_secs=0.05)
    worker.start()
    try:
        wait_until(lambda: all(j.refresh().status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
                               for j in jobs), 20,
                   "the jobs never finished (the big result read as a server that is down?)")
        time.sleep(0.5)  # a run again would start here if anything was left unsettled
    finally:
        worker.stop()
        worker.join()
    record = bad.refresh()
    assert record.status is JobStatus.FAILED
    error = record.error or ""
    _assert_clear(error, bad.id)
    assert "crash" not in error and "deliver" not in error, error
    assert all(j.refresh().status is JobStatus.SUCCEEDED for j in smalls)
    assert [j.get() for j in smalls] == [0, 1, 2]
    assert sorted(runs) == ["big", "small0", "small1", "small2"], runs
    small_ids = {j.id for j in smalls}
    assert any(bad.id in ids and small_ids & set(ids) for ids in batches), \
        f"the big job was never settled beside a small one: {batches}"
    assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0


def test_config_refused_falls_back_to_the_default_limit(
        backends: tuple[RedisJobQueue, RedisResultBackend],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed server with CONFIG renamed or denied: Redis's default, 512 MB, is
    assumed."""
    queue, _ = backends

    def refused(*args: object, **kwargs: object) -> Any:
        raise redis.ResponseError("unknown command 'CONFIG', with args beginning with: ")

    monkeypatch.setattr(queue.store.client, "config_get", refused)
    assert queue.store.read_max_bulk() == 512 * 2**20
