"""Damaged keys (deleted by hand, evicted under a wrong ``maxmemory-policy``) never wedge the
queue: a ready entry whose job hash is gone is dropped by the claim, the jobs behind it
still run, and a stray hash that is no message reads as not queued."""

from __future__ import annotations

import redis
from redis_helpers import URL

from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.scripts import RANK_LEN


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
