"""Damaged keys (deleted by hand, evicted under a wrong ``maxmemory-policy``) never wedge the
queue: a ready entry whose job hash is gone is dropped by the claim, the jobs behind it
still run, and a stray hash that is no message reads as not queued. A message hash with a
field missing or unreadable (a hand edit) is quarantined: kept aside whole, listed by
``nuvom status``, never run, and the jobs claimed with it still run."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
from redis_helpers import URL

from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.lua import RANK_LEN


def test_a_ready_entry_without_its_job_is_dropped(queue: RedisJobQueue) -> None:
    good = make_message(queue="default")
    assert queue.push([good]) == [True]
    client = redis.Redis.from_url(URL)
    try:
        prefix = queue.store.prefix
        client.zadd(f"{prefix}q:default:ready", {"0" * RANK_LEN + "gone": -1})  # first
        client.zadd(f"{prefix}q:default:leased", {"gone-too": 0})  # an expired lease
        leases = queue.claim(5)
        assert [le.id for le in leases] == [good.id], "the good job behind the damage runs"
        assert client.zcard(f"{prefix}q:default:ready") == 0
        assert not client.exists(f"{prefix}j:gone"), "a dropped entry creates no hash"
        assert queue.claim(5) == [] and queue.qsize() == 0
        client.hset(f"{prefix}j:stray", "s", "l")  # a hash that is no message
        assert queue.peek_state("stray") is None
        assert queue.ack(leases[0]) is True
    finally:
        client.close()


# --- a message hash with a field missing or unreadable: quarantined, kept, listed ---------


def _quarantined_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return [f"{prefix}quarantine:{n.decode()}".encode()
            for n in client.zrange(f"{prefix}quarantine", 0, -1)]


def _assert_quarantined(queue: RedisJobQueue, client: redis.Redis, bad: Message,
                        why: str) -> None:
    """``bad`` is kept whole under a quarantine key, listed by ``stats``, and nowhere
    else: not ready, not leased, not queued."""
    prefix = queue.store.prefix
    keys = _quarantined_keys(client, prefix)
    assert len(keys) == 1, "the damaged message is kept, not dropped"
    kept = client.hgetall(keys[0])
    assert kept[b"xi"] == bad.id.encode() and kept[b"b"] == bad.body, "kept as it was found"
    lines = queue.stats().quarantined
    assert len(lines) == 1 and bad.id in lines[0] and why in lines[0], lines
    assert not client.exists(f"{prefix}j:{bad.id}")
    assert client.zscore(f"{prefix}q:default:leased", bad.id) is None
    assert queue.peek_state(bad.id) is None and queue.peek(bad.id) is None
    assert queue.qsize() == 0 and queue.claim(5) == []


@pytest.mark.parametrize(("field", "value", "why"), [
    ("p", b"high", "field p (priority)"),  # parsed by the client after the claim
    ("c", b"yesterday", "field c (created_at)"),
    ("a", b"soon", "field a (available_at)"),
    ("f", b"x", "field f (failures)"),
    ("t", b"\xff\xfe", "field t (task)"),
    ("d", b"many", "field d (deliveries)"),  # added to by the claim script itself
])
@pytest.mark.parametrize("queues", [None, ["default"]])
def test_a_field_that_does_not_parse_quarantines_that_job_only(
        queue: RedisJobQueue, field: str, value: bytes, why: str,
        queues: list[str] | None) -> None:
    before = make_message(queue="default")
    bad = make_message(queue="default")
    after = make_message(queue="default")
    other = make_message(queue="other")  # queues=None claims from two queues at once
    assert queue.push([before, bad, after, other]) == [True] * 4
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{queue.store.prefix}j:{bad.id}", field, value)
        leases = queue.claim(5, queues)
        want = {before.id, after.id} | ({other.id} if queues is None else set())
        assert {le.id for le in leases} == want, "the rest of the claim is delivered"
        assert queue.ack_many(leases) == [True] * len(leases)
        queue.clear(["other"])
        _assert_quarantined(queue, client, bad, why)
    finally:
        client.close()


@pytest.mark.parametrize(("fields", "why"), [
    (["b"], "missing field b (body)"),
    (["t", "c"], "missing field c (created_at)"),  # the first the claim needs
    (["p"], "missing field p (priority)"),
    (["q"], "missing field q (queue)"),  # was leased, and its settle failed for good
])
def test_a_hash_missing_a_field_is_quarantined_not_called_gone(
        queue: RedisJobQueue, fields: list[str], why: str,
        caplog: pytest.LogCaptureFixture) -> None:
    bad, good = make_message(queue="default"), make_message(queue="default")
    assert queue.push([bad, good]) == [True, True]
    client = redis.Redis.from_url(URL)
    try:
        client.hdel(f"{queue.store.prefix}j:{bad.id}", *fields)
        with caplog.at_level(logging.WARNING, logger="nuvom.redis"):
            leases = queue.claim(5)
        assert [le.id for le in leases] == [good.id]
        assert "is gone" not in caplog.text and "quarantined 1 damaged" in caplog.text
        assert queue.ack(leases[0])
        keys = _quarantined_keys(client, queue.store.prefix)
        assert len(keys) == 1 and client.hget(keys[0], "xi") == bad.id.encode()
        lines = queue.stats().quarantined
        assert len(lines) == 1 and why in lines[0], lines
        assert queue.peek_state(bad.id) is None and queue.qsize() == 0
    finally:
        client.close()


def test_a_lease_whose_hash_lost_its_queue_is_refused_then_quarantined(
        queue: RedisJobQueue) -> None:
    """Every script acting on a lease finds its queue by the hash's ``q``: without it each
    ack, retry and extension failed with a Lua error, and a worker tried its settle again
    for good, claiming nothing meanwhile. Now the lease reads as lost, and once it expires
    the claim quarantines the message."""
    bad = make_message(queue="default")
    assert queue.push([bad]) == [True]
    [lease] = queue.claim(1)
    client = redis.Redis.from_url(URL)
    try:
        client.hdel(f"{queue.store.prefix}j:{bad.id}", "q")
        assert queue.extend_many([lease], 30) == [False]
        assert queue.ack_many([lease]) == [False]
        assert queue.retry(lease, delay_secs=0) is False
        client.zadd(f"{queue.store.prefix}q:default:leased", {bad.id: 0})  # it expired
        good = make_message(queue="default")
        assert queue.push([good]) == [True]
        assert [le.id for le in queue.claim(5)] == [good.id]
        lines = queue.stats().quarantined
        assert len(lines) == 1 and "missing field q (queue)" in lines[0], lines
    finally:
        client.close()


def test_an_expired_lease_whose_priority_went_bad_is_quarantined(
        queue: RedisJobQueue) -> None:
    """Promotion (claim and reaper) reads the priority to put a job back: a bad one must
    not fail every claim of the queue from then on."""
    bad = make_message(queue="default")
    assert queue.push([bad]) == [True]
    lease = queue.claim(1)[0]
    good = make_message(queue="default")
    assert queue.push([good]) == [True]
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{queue.store.prefix}j:{bad.id}", "p", "high")
        assert queue.extend(lease, 0)  # the lease expires: the next claim promotes it
        assert [le.id for le in queue.claim(5)] == [good.id]
        assert queue.ack(lease) is False, "a quarantined job's old lease is lost"
        assert len(_quarantined_keys(client, queue.store.prefix)) == 1
        assert "field p (priority)" in queue.stats().quarantined[0]
    finally:
        client.close()


@pytest.mark.parametrize("how", ["retry", "release"])
def test_a_requeue_of_a_job_whose_priority_went_bad_quarantines_it(
        queue: RedisJobQueue, how: str) -> None:
    bad = make_message(queue="default")
    assert queue.push([bad]) == [True]
    lease = queue.claim(1)[0]
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{queue.store.prefix}j:{bad.id}", "p", "")
        if how == "retry":
            assert queue.retry(lease, delay_secs=0)
        else:
            assert queue.release(lease)
        assert queue.claim(5) == [] and queue.qsize() == 0
        assert "field p (priority)" in queue.stats().quarantined[0]
    finally:
        client.close()


def test_a_damaged_retrying_job_reads_without_error(queue: RedisJobQueue) -> None:
    """``peek_state`` of a delayed job whose failures or due time are not numbers."""
    bad = make_message(queue="default", available_at=time.time() + 60)
    assert queue.push([bad]) == [True]
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{queue.store.prefix}j:{bad.id}", mapping={"f": "x", "a": "later"})
        assert queue.peek_state(bad.id) is JobStatus.QUEUED
        assert queue.peek(bad.id) is None
    finally:
        client.close()


def test_the_jobs_beside_a_damaged_one_run_even_if_quarantining_it_fails(
        queue: RedisJobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    bad, good = make_message(queue="default"), make_message(queue="default")
    assert queue.push([bad, good]) == [True, True]
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{queue.store.prefix}j:{bad.id}", "p", "high")
        run = queue._run

        def failing(name: str, args: Any, what: str) -> Any:
            if name == "QUARANTINE":
                raise redis.ConnectionError("gone for a moment")
            return run(name, args, what)

        monkeypatch.setattr(queue, "_run", failing)
        leases = queue.claim(5)
        assert [le.id for le in leases] == [good.id]
        monkeypatch.undo()
        client.zadd(f"{queue.store.prefix}q:default:leased", {bad.id: 0})  # its lease expires
        assert queue.claim(5) == [] and "field p" in queue.stats().quarantined[0]
    finally:
        client.close()


def test_the_readmes_repair_of_a_quarantined_job_runs_it_again(queue: RedisJobQueue) -> None:
    """The README's recipe, step by step: without ``SADD …:queues`` (the quarantine emptied
    the queue, so its name left that set) the repaired job read QUEUED and was never
    claimed."""
    bad = make_message(queue="default")
    assert queue.push([bad]) == [True]
    prefix = queue.store.prefix
    client = redis.Redis.from_url(URL)
    try:
        client.hset(f"{prefix}j:{bad.id}", "p", b"high")
        assert queue.claim(5) == []
        [n] = client.zrange(f"{prefix}quarantine", 0, -1)
        kept = f"{prefix}quarantine:{n.decode()}"
        client.hset(kept, "p", 0)  # repair the field
        client.rename(kept, f"{prefix}j:{bad.id}")
        client.hdel(f"{prefix}j:{bad.id}", "k", "u", "xi", "xq", "xw", "xt")
        client.hset(f"{prefix}j:{bad.id}", "s", "r")
        rank = client.hget(f"{prefix}j:{bad.id}", "r")
        client.zadd(f"{prefix}q:default:ready", {rank: -0})
        client.sadd(f"{prefix}queues", "default")
        client.zrem(f"{prefix}quarantine", n)
        [lease] = queue.claim(5)
        assert lease.id == bad.id and lease.message.body == bad.body
        assert queue.ack(lease) is True and queue.stats().quarantined == []
    finally:
        client.close()


def test_a_copy_to_quarantine_of_a_hash_of_thousands_of_fields_is_whole(
        queue: RedisJobQueue) -> None:
    """A message hash grown by hand or by another tool: one ``HSET`` of ``unpack()`` of all
    its fields overflowed Lua's stack ("too many results to unpack") past ~8,000 values,
    and the copy failed."""
    client = redis.Redis.from_url(URL)
    try:
        message = make_message(body=b"\xff not an envelope")
        queue.enqueue(message)
        [lease] = queue.claim(1)
        prefix = queue.store.prefix
        client.hset(f"{prefix}j:{message.id}", mapping={f"extra{i}": i for i in range(5000)})
        assert queue.copy_to_quarantine(lease, "its body is not an envelope") is True
        [key] = _quarantined_keys(client, prefix)
        kept = client.hgetall(key)
        assert kept[b"extra4999"] == b"4999" and kept[b"xi"] == message.id.encode()
        assert queue.ack(lease) is True
    finally:
        client.close()
