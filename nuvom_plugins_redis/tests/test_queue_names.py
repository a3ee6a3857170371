"""``P queues`` lists the queues that hold something, nothing more (``scripts``' module docs).

Why it matters: a claim or reap over every queue walks that set inside one script, so each
queue name ever used (per-tenant or per-run names) used to cost every claim, reaper tick and
``nuvom status`` for good. Each script that empties a queue drops it, in the same atomic
step; a push lists it again; delayed messages and leases keep it listed; the reaper drops the
names an earlier release left. Real server, one namespace per test (its keys deleted
afterwards).
"""

from __future__ import annotations

import time
from typing import cast

import redis
from redis_helpers import URL

from nuvom_kernel.models import Settlement
from nuvom_kernel.testing.contracts import make_message, make_record, wait_until
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend


def _listed(queue: RedisJobQueue) -> set[str]:
    client = redis.Redis.from_url(URL)
    try:
        members = cast("set[bytes]", client.smembers(queue.store.prefix + "queues"))
        return {m.decode() for m in members}
    finally:
        client.close()


def _reap(queue: RedisJobQueue) -> int:
    """One reaper tick, as the reaper thread runs it (a fresh owner, so the lock is ours
    once the last tick's has lapsed)."""
    return int(wait_until(lambda: int(queue._run("REAP", [50, "test-owner"], "reaping")) + 1,
                          5.0, "the reaper lock never came free")) - 1


def test_a_queue_drained_by_acks_leaves_the_set(queue: RedisJobQueue) -> None:
    """Per-tenant queues, each acked empty: none stays listed, in the set or in stats."""
    queue.enqueue_many([make_message(queue=f"tenant-{i}") for i in range(20)])
    assert _listed(queue) == {f"tenant-{i}" for i in range(20)}
    leases = queue.claim(20)
    assert len(leases) == 20
    assert _listed(queue) == {f"tenant-{i}" for i in range(20)}, "leases keep their queue"
    assert all(queue.ack_many(leases[:10]))
    assert _listed(queue) == {lease.message.queue for lease in leases[10:]}
    assert all(queue.ack(lease) for lease in leases[10:])
    assert _listed(queue) == set()
    assert queue.stats().queues == {}


def test_settle_cancel_and_quarantine_drop_the_queue_they_empty(
        queue: RedisJobQueue, results: RedisResultBackend) -> None:
    """Every other way out of a queue: a settled ack (records on the same server), a
    cancelled waiting job, a claimed job whose hash cannot be read (quarantined), a ready
    entry whose hash is gone (dropped)."""
    queue.enqueue(make_message(queue="settled"))
    [lease] = queue.claim(1)
    assert queue.settle_many([Settlement(lease, make_record(lease.id))], results) == [True]
    assert "settled" not in _listed(queue)

    waiting = make_message(queue="cancelled")
    queue.enqueue(waiting)
    assert queue.cancel(waiting.id) is True
    assert "cancelled" not in _listed(queue)

    damaged, gone = make_message(queue="damaged"), make_message(queue="gone")
    queue.enqueue_many([damaged, gone])
    client = queue.store.client
    client.hdel(f"{queue.store.prefix}j:{damaged.id}", "t")
    client.delete(f"{queue.store.prefix}j:{gone.id}")
    assert queue.claim(5) == []
    assert _listed(queue) == set()
    assert len(queue.stats().quarantined) == 1


def test_a_push_after_its_queue_emptied_is_claimed_over_every_queue(
        queue: RedisJobQueue) -> None:
    """The queue is listed again by the push that refills it: a worker serving every queue
    finds the job."""
    queue.enqueue(make_message(queue="again"))
    [lease] = queue.claim(1)
    assert queue.ack(lease) and _listed(queue) == set()
    again = make_message(queue="again")
    queue.enqueue(again)
    assert [le.id for le in queue.claim(5)] == [again.id]


def test_delayed_jobs_leases_retries_and_releases_keep_their_queue(
        queue: RedisJobQueue) -> None:
    """A queue holding only a delayed job, only a lease, or only a retried or released job
    stays listed, and a claim over every queue takes each when it is due."""
    later = make_message(queue="eta", available_at=time.time() + 0.3)
    queue.enqueue_many([later, make_message(queue="leased"), make_message(queue="retried"),
                        make_message(queue="released")])
    leases = {le.message.queue: le for le in queue.claim(5)}
    assert set(leases) == {"leased", "retried", "released"}
    assert queue.retry(leases["retried"], delay_secs=0.3) is True
    assert queue.release(leases["released"], delay_secs=0.3) is True
    assert queue.extend(leases["leased"], 0) is True  # an expired lease, not moved yet
    _reap(queue)  # moves the expired lease back to ready; nothing is due otherwise
    assert _listed(queue) == {"eta", "leased", "retried", "released"}
    taken = wait_until(lambda: [le for le in queue.claim(5) if le.message.queue == "leased"],
                       5.0, "the expired lease was not claimed again")
    assert queue.ack_many(taken) == [True]
    got: list[str] = []
    deadline = time.monotonic() + 5.0
    while len(got) < 3 and time.monotonic() < deadline:
        for le in queue.claim(5):
            got.append(le.message.queue)
            assert queue.ack(le)
        time.sleep(0.02)
    assert sorted(got) == ["eta", "released", "retried"]
    assert _listed(queue) == set()


def test_the_reaper_drops_names_an_earlier_release_left(queue: RedisJobQueue) -> None:
    """Names listed while their queue holds nothing (an earlier release never dropped one):
    ``stats`` skips them at once, the next reaper tick drops them, and a live queue stays."""
    queue.enqueue(make_message(queue="live"))
    queue.store.client.sadd(queue.store.prefix + "queues", *[f"old-{i}" for i in range(50)])
    assert list(queue.stats().queues) == ["live"]
    _reap(queue)
    assert _listed(queue) == {"live"}
    assert [le.message.queue for le in queue.claim(5)] == ["live"]
