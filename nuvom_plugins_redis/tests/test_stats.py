"""``STATS``' oldest ready age past the contract (``admin_scripts.STATS``): a message keeps its due
time (``a``) once a claim promotes it; a ready set sorts by enqueue, so the message due first
may sit behind delayed or retried ones, found up to ``STATS_WALK`` reads into its band; an
expired lease the reaper has not moved yet waits like any ready message. Real server, one
namespace per test (its keys deleted afterwards)."""

from __future__ import annotations

import time

from nuvom_kernel.testing.contracts import make_message, wait_until
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.admin_scripts import STATS_WALK


def test_a_promoted_retry_waits_from_its_due_time(queue: RedisJobQueue) -> None:
    """Promotion keeps the rank (the old enqueue, at the head of its band) and ``a``: the
    age counts from the retry's due time, not the first enqueue 40 s ago."""
    now = time.time()
    retried = make_message(created_at=now - 40)
    queue.enqueue(retried)
    [lease] = queue.claim(1)
    assert queue.retry(lease, delay_secs=0.2, body=b"v2") is True
    queue.enqueue(make_message(priority=5))
    wait_until(lambda: queue.stats().queues["default"].ready == 2, 5.0,
               "the retry never came due")
    [first] = queue.claim(1)  # promotes the due retry, takes the higher priority
    assert first.id != retried.id
    state = queue.store.client.hget(f"{queue.store.prefix}j:{retried.id}", "s")
    assert state == b"r", "the claim moved the due retry to its ready set"
    counts = queue.stats().queues["default"]
    assert counts.ready == 1 and counts.oldest_ready_age_secs is not None
    assert 0 <= counts.oldest_ready_age_secs < 10, counts


def _late_then_waiting(queue: RedisJobQueue, late: int) -> float:
    """``late`` messages enqueued 100 s ago and due 1 s ago lead the band; behind them one
    waiting since its enqueue 50 s ago. Returns the time they were made at."""
    now = time.time()
    queue.enqueue_many([make_message(created_at=now - 100 + i * 1e-3, available_at=now - 1)
                        for i in range(late)] + [make_message(created_at=now - 50)])
    return now


def test_the_message_due_first_is_found_behind_delayed_ones(queue: RedisJobQueue) -> None:
    """The band's head and ``STATS_WALK`` more reads reach the waiting message."""
    _late_then_waiting(queue, STATS_WALK)
    age = queue.stats().queues["default"].oldest_ready_age_secs
    assert age is not None and 49.5 <= age < 58, age


def test_past_the_walk_the_earliest_due_found_stands(queue: RedisJobQueue) -> None:
    """One delayed message more and the walk stops before the waiting message: the age
    reads low (the earliest due time read), never higher than the truth."""
    _late_then_waiting(queue, STATS_WALK + 1)
    age = queue.stats().queues["default"].oldest_ready_age_secs
    assert age is not None and 0.5 <= age < 9, age


def test_an_expired_lease_not_yet_moved_waits_from_its_due_time(
        queue: RedisJobQueue) -> None:
    """An expired lease counts ready before the reaper or a claim moves it back, with the
    age of its message (enqueued 30 s ago), not none."""
    queue.enqueue(make_message(created_at=time.time() - 30))
    [lease] = queue.claim(1)
    assert queue.extend(lease, 0) is True
    counts = queue.stats().queues["default"]
    assert (counts.ready, counts.running) == (1, 0)
    assert counts.oldest_ready_age_secs is not None
    assert 29.5 <= counts.oldest_ready_age_secs < 38, counts
