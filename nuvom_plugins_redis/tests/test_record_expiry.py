"""Index entries of records whose TTL ran out are removed, without a purge.

Redis deletes a final record when ``result_ttl_secs`` runs out, but not its entries in the
three indexes (``ri``, ``ri:s:<status>``, ``ri:t:<task>``): a soak at 9.5 jobs/s grew them
by ~14 MB an hour, and ``nuvom status`` kept counting the expired records. Now each final
record's expiry is scheduled in ``rx`` and the heartbeat (and ``counts()``) removes the
entries of those that are gone, judged by the record itself: records kept until purged
(TTL 0), records of a process with a longer TTL and records written again keep theirs.

Real server, one namespace per test (its keys deleted afterwards); TTLs of 50 ms, waited
for with a deadline on the condition (the record gone), never a fixed sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from redis_helpers import settings

from nuvom_kernel.backends import BackendContext, WorkerInfo
from nuvom_kernel.models import JobStatus, Settlement
from nuvom_kernel.testing.contracts import make_message, make_record, wait_until
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend
from nuvom_plugins_redis import results as results_module

SHORT = 0.05  # seconds: each test waits this long at least, with a deadline of seconds


@pytest.fixture
def short(context: BackendContext) -> Iterator[RedisResultBackend]:
    """A result backend whose final records live 50 ms."""
    r = RedisResultBackend.from_settings(settings(result_ttl_secs=SHORT), context)
    yield r
    r.close()


def _members(client: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in cast("list[bytes]", client.zrange(key, 0, -1))}


def _indexes(client: redis.Redis, results: RedisResultBackend) -> dict[str, set[str]]:
    """Every non-empty index of the namespace, by its key after the prefix."""
    p = results.store.prefix
    keys = [k.decode() for k in cast("list[bytes]", client.scan_iter(match=p + "ri*"))]
    return {k[len(p):]: _members(client, k) for k in keys if client.zcard(k)}


def _wait_gone(client: redis.Redis, results: RedisResultBackend, ids: list[str]) -> None:
    p = results.store.prefix
    wait_until(lambda: client.exists(*[p + "r:" + i for i in ids]) == 0, 10.0,
               "the records' TTL did not run out")


def _beat(results: RedisResultBackend) -> None:
    results.heartbeat(WorkerInfo(id="test-worker", host="here", pid=1), 15.0)


def test_a_heartbeat_removes_the_index_entries_of_expired_records(
        short: RedisResultBackend, client: redis.Redis) -> None:
    """What the soak showed: every final record gone, its three index entries left."""
    final = [make_record(task=f"tasks.t{i % 3}", status=status)
             for i, status in enumerate([JobStatus.SUCCEEDED, JobStatus.FAILED,
                                         JobStatus.CANCELLED] * 20)]
    waiting = make_record(task="tasks.t0", status=JobStatus.QUEUED)  # no TTL: never expires
    running = make_record(task="tasks.t1", status=JobStatus.RUNNING)
    assert all(short.put_many([*final, waiting, running]))
    _wait_gone(client, short, [r.job_id for r in final])

    _beat(short)

    assert _indexes(client, short) == {
        "ri": {waiting.job_id, running.job_id},
        "ri:s:QUEUED": {waiting.job_id}, "ri:s:RUNNING": {running.job_id},
        "ri:t:tasks.t0": {waiting.job_id}, "ri:t:tasks.t1": {running.job_id}}
    assert client.exists(short.store.prefix + "rx") == 0, "the schedule is emptied too"


def test_counts_agree_with_the_live_records(short: RedisResultBackend,
                                           client: redis.Redis) -> None:
    """``nuvom status`` prints ``counts()`` as job records: expired ones are not counted,
    also when no worker has beaten since they expired."""
    gone = [make_record(status=JobStatus.SUCCEEDED) for _ in range(30)]
    assert all(short.put_many([*gone, make_record(status=JobStatus.RUNNING)]))
    _wait_gone(client, short, [r.job_id for r in gone])
    assert short.counts() == {"RUNNING": 1}


def test_records_kept_until_purged_or_longer_keep_their_entries(
        short: RedisResultBackend, context: BackendContext, client: redis.Redis) -> None:
    """``result_ttl_secs`` may differ between processes: a record is judged by its own
    expiry, not by the trimming process's TTL. A record stored with TTL 0 (kept until
    ``nuvom purge``) and one stored with an hour keep their entries when a 50 ms process
    trims; its own expired record does not."""
    kept = RedisResultBackend.from_settings(settings(result_ttl_secs=0), context)
    hour = RedisResultBackend.from_settings(settings(result_ttl_secs=3600), context)
    try:
        forever, long = make_record(task="tasks.k"), make_record(task="tasks.k")
        expired = make_record(task="tasks.k")
        assert kept.put(forever) and hour.put(long) and short.put(expired)
        _wait_gone(client, short, [expired.job_id])

        assert short.trim_expired() == 1
        _beat(short)

        both = {forever.job_id, long.job_id}
        assert _indexes(client, short) == {"ri": both, "ri:s:SUCCEEDED": both,
                                           "ri:t:tasks.k": both}
        assert {r.job_id for r in short.query(task="tasks.k")} == both
        assert short.counts() == {"SUCCEEDED": 2}
        assert short.purge(float("inf")) == 2, "purge still finds what it keeps"
    finally:
        kept.close()
        hour.close()


def test_a_record_written_again_is_judged_as_it_is_now(
        short: RedisResultBackend, context: BackendContext, client: redis.Redis) -> None:
    """A final record written again before its expiry: as a new run still running (no
    TTL), or final under another task by a process with a longer TTL. Its first expiry
    comes due; the record is there, so its entries stay, and the later expiry is kept."""
    hour = RedisResultBackend.from_settings(settings(result_ttl_secs=3600), context)
    try:
        rerun, moved = make_record(task="tasks.a"), make_record(task="tasks.a")
        assert short.put_many([rerun, moved]) == [True, True]
        assert short.put(make_record(rerun.job_id, task="tasks.a", run=2,
                                     status=JobStatus.RUNNING))
        assert hour.put(make_record(moved.job_id, task="tasks.b", run=2))
        rx = short.store.prefix + "rx"
        wait_until(lambda: len(client.zrange(rx, "-inf", f"{time.time() * 1000:.0f}",
                                             byscore=True, offset=0, num=10)) == 2, 10.0,
                   "the first expiries never came due")

        assert short.trim_expired() == 0, "both records are still there"

        later = cast(float, client.zscore(rx, f"7:tasks.b{moved.job_id}"))
        assert later > (time.time() + 3000) * 1000, "the longer TTL's own expiry"
        assert client.zscore(rx, f"7:tasks.a{moved.job_id}") == pytest.approx(later, abs=5), \
            "the first entry now comes due with the record"
        assert _indexes(client, short) == {
            "ri": {rerun.job_id, moved.job_id}, "ri:s:RUNNING": {rerun.job_id},
            "ri:s:SUCCEEDED": {moved.job_id}, "ri:t:tasks.a": {rerun.job_id},
            "ri:t:tasks.b": {moved.job_id}}
        assert client.zscore(rx, f"7:tasks.a{rerun.job_id}") is None, \
            "a record that no longer expires leaves the schedule"
    finally:
        hour.close()


def test_settled_records_are_scheduled_too(queue: RedisJobQueue, context: BackendContext,
                                          client: redis.Redis) -> None:
    """``settle_many`` stores the record in the queue's script: the same schedule."""
    short = RedisResultBackend.from_settings(settings(result_ttl_secs=SHORT), context)
    try:
        queue.enqueue(make_message())
        [lease] = queue.claim(1)
        record = make_record(lease.id, status=JobStatus.FAILED)
        assert queue.settle_many([Settlement(lease, record)], short) == [True]
        _wait_gone(client, short, [lease.id])
        _beat(short)
        assert _indexes(client, short) == {}
    finally:
        short.close()


def test_each_trim_call_is_bounded(short: RedisResultBackend, client: redis.Redis,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog is worked off a chunk per script call, ``max_calls`` calls at most: the
    server is never held for the whole backlog, and a heartbeat never runs unbounded."""
    monkeypatch.setattr(results_module, "_TRIM_CHUNK", 4)
    records = [make_record() for _ in range(10)]
    assert all(short.put_many(records))
    _wait_gone(client, short, [r.job_id for r in records])
    assert short.trim_expired(max_calls=1) == 4
    assert len(_indexes(client, short)["ri"]) == 6
    assert short.trim_expired(max_calls=5) == 6
    assert _indexes(client, short) == {}
