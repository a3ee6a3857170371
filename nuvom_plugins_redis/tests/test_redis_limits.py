"""Concurrency limits on Redis beyond the shared contract: where a held-back message goes
(its task's held set of its queue, see ``scripts``' "Concurrency limits") and that every
reader of a message's whereabouts still finds it there — browse, ``peek_state``, stats,
cancel, clear — that it keeps its place in claim order, survives a worker that dies, and
that a claim reaches past a backlog of 100,000 of them; limits across instances, claimers
without limits, and the per-task counts read in several budgeted calls."""

from __future__ import annotations

import time
from collections.abc import Iterator

import attrs
import pytest
import redis
from redis_helpers import settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import JobStatus, Lease, Message
from nuvom_kernel.testing.contracts import make_message
from nuvom_kernel.testing.contracts._support import wait_until
from nuvom_plugins_redis import RedisJobQueue, browse, limit_scripts

LIMITED = "tasks.crawl"
FREE = "tasks.add"


def _limited(n: int, **fields: object) -> list[Message]:
    return [make_message(task=LIMITED, **fields) for _ in range(n)]  # type: ignore[arg-type]


@pytest.fixture
def other(context: BackendContext) -> Iterator[RedisJobQueue]:
    """A second instance on the same server and namespace: another worker process."""
    q = RedisJobQueue.from_settings(settings(), context)
    yield q
    q.close()


def _held_key(queue: RedisJobQueue, q: str, task: str) -> str:
    return f"{queue.store.prefix}q:{q}:held:{task}:{len(task)}"


def _hold_back(queue: RedisJobQueue, n: int, limit: int = 1
               ) -> tuple[list[Message], list[Lease]]:
    """``n`` limited messages pushed, ``limit`` of them leased, the rest held back."""
    messages = _limited(n)
    queue.enqueue_many(messages)
    queue.set_concurrency_limits({LIMITED: limit})
    leases = queue.claim(10)
    assert [le.id for le in leases] == [m.id for m in messages[:limit]]
    return messages, leases


def test_held_messages_are_moved_aside_and_still_queued_everywhere(
        queue: RedisJobQueue, client: redis.Redis) -> None:
    messages, _ = _hold_back(queue, 4)
    held = _held_key(queue, "default", LIMITED)
    assert client.zcard(held) == 3, "the claim moved the 3 held back to the task's held set"
    assert client.zcard(queue.store.prefix + "q:default:ready") == 0
    for m in messages[1:]:
        assert queue.peek_state(m.id) is JobStatus.QUEUED
        assert queue.peek(m.id) is not None
    listed = {j.id: j.state for j in queue.browse(limit=10)}
    assert listed == {messages[0].id: JobStatus.RUNNING,
                      **{m.id: JobStatus.QUEUED for m in messages[1:]}}
    assert [j.id for j in queue.browse(states=[JobStatus.QUEUED], limit=10)] == \
        [m.id for m in messages[1:]]
    counts = queue.stats().queues["default"]
    assert (counts.ready, counts.running) == (3, 1)
    assert counts.oldest_ready_age_secs is not None
    assert queue.qsize() == 3
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 3)}
    assert queue.cancel(messages[2].id) is True
    assert queue.peek_state(messages[2].id) is None
    assert client.zcard(held) == 2
    assert queue.clear() == 3  # the lease and the two still held
    assert client.exists(held, queue.store.prefix + "q:default:held",
                         queue.store.prefix + f"running:{LIMITED}") == 0
    assert client.smembers(queue.store.prefix + "queues") == set()


def test_a_queue_holding_only_held_messages_stays_listed_and_is_claimed_later(
        queue: RedisJobQueue, other: RedisJobQueue, client: redis.Redis) -> None:
    """``P queues`` must list a queue while it holds anything, held sets included: a worker
    serving every queue walks it, and the ack, the reaper and ``forget_empty`` drop a name
    whose queue they think empty."""
    messages, leases = _hold_back(queue, 3)
    assert queue.ack(leases[0]) is True  # now the queue holds only held messages
    assert client.exists(queue.store.prefix + "q:default:ready",
                         queue.store.prefix + "q:default:leased") == 0
    assert queue._run("REAP", [1000, "test"], "reaping") >= 0
    assert client.smembers(queue.store.prefix + "queues") == {b"default"}
    other.set_concurrency_limits({LIMITED: 1})
    assert [le.id for le in other.claim(5)] == [messages[1].id]


def test_held_messages_keep_their_place_in_claim_order(queue: RedisJobQueue) -> None:
    low = _limited(3)
    queue.enqueue_many(low)
    queue.set_concurrency_limits({LIMITED: 1})
    first = queue.claim(5)
    assert [le.id for le in first] == [low[0].id]
    urgent = make_message(task=LIMITED, priority=5)  # pushed later, ahead in claim order
    late = make_message(task=LIMITED)  # pushed later, behind the held ones
    queue.enqueue_many([urgent, late])
    assert queue.claim(5) == []
    order = []
    lease = first[0]
    for _ in range(4):
        assert queue.ack(lease) is True
        got = queue.claim(5)
        assert len(got) == 1
        lease = got[0]
        order.append(lease.id)
        assert lease.deliveries == 1
    assert order == [urgent.id, low[1].id, low[2].id, late.id]


def test_a_held_message_survives_a_worker_that_dies(context: BackendContext) -> None:
    dead = RedisJobQueue.from_settings(settings(visibility_timeout_secs=0.5), context)
    alive = RedisJobQueue.from_settings(settings(), context)
    try:
        messages, _ = _hold_back(dead, 3)
        dead.close()  # its lease is never acked nor extended: the process is gone
        alive.set_concurrency_limits({LIMITED: 1})
        seen: dict[str, int] = {}
        for _ in range(3):  # each one, once the lease before it expired or was acked
            got = wait_until(lambda: alive.claim(5), 10.0, f"claimed only {seen}")
            assert len(got) == 1
            seen[got[0].id] = got[0].deliveries
            assert alive.ack(got[0]) is True
        # the dead worker's job first (its second delivery), then the held ones, never
        # delivered before
        assert seen == {messages[0].id: 2, messages[1].id: 1, messages[2].id: 1}
        assert list(seen) == [m.id for m in messages]
        assert alive.qsize() == 0 and alive.claim(5) == []
    finally:
        alive.close()


def test_a_claim_reaches_past_100000_held_back_messages(queue: RedisJobQueue,
                                                         client: redis.Redis) -> None:
    """A saturated task's backlog ahead of other work: one ``claim`` call finds the work
    behind it (in budgeted script calls) and later claims read nothing of the backlog."""
    # created a minute before the one behind: a push this long takes over a second, and its
    # later chunks are stamped by the server's clock as they run (scripts.PUSH,
    # REF_TOLERANCE), which could otherwise put the last ones after the message pushed next
    start = time.time() - 60
    backlog = [attrs.evolve(m, created_at=start + i * 1e-4)
               for i, m in enumerate(_limited(100_000))]
    queue.enqueue_many(backlog)
    behind = attrs.evolve(make_message(task=FREE), created_at=time.time())
    queue.enqueue(behind)
    queue.set_concurrency_limits({LIMITED: 1})
    got = queue.claim(2)
    assert sorted(le.id for le in got) == sorted([backlog[0].id, behind.id])
    assert client.zcard(_held_key(queue, "default", LIMITED)) == 99_999
    assert queue.claim(10) == []
    late = attrs.evolve(make_message(task=FREE), created_at=time.time())
    queue.enqueue(late)
    assert [le.id for le in queue.claim(10)] == [late.id]
    assert queue.qsize() == 99_999


def test_a_claim_stopped_by_its_hold_budget_goes_on(queue: RedisJobQueue,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limit_scripts, "HOLD_BUDGET", 7)
    backlog = _limited(50)
    behind = [make_message(task=FREE) for _ in range(3)]
    queue.enqueue_many([*backlog, *behind])
    queue.set_concurrency_limits({LIMITED: 2})
    got = queue.claim(5)
    assert sorted(le.id for le in got) == sorted([m.id for m in backlog[:2] + behind])


def test_limits_hold_across_instances_and_queues(queue: RedisJobQueue,
                                                 other: RedisJobQueue) -> None:
    queue.enqueue_many([*_limited(3, queue="a"), *_limited(3, queue="b")])
    for q in (queue, other):
        q.set_concurrency_limits({LIMITED: 2})
    one = queue.claim(5, ["a"])
    assert len(one) == 2
    assert other.claim(5, ["b"]) == [] and other.claim(5) == []
    assert queue.task_counts([LIMITED]) == {LIMITED: (2, 4)}
    assert queue.ack(one[0]) is True
    two = other.claim(5)
    assert len(two) == 1 and two[0].message.queue == "a", "claim order: a's third was first"
    assert other.claim(5) == []
    assert other.retry(two[0], delay_secs=0.0) is True
    assert queue.release(one[1]) is True
    assert len(other.claim(5, ["b"])) == 2


def test_a_claimer_without_limits_claims_what_others_held_back(
        queue: RedisJobQueue, other: RedisJobQueue) -> None:
    messages, _ = _hold_back(queue, 3)
    free = make_message(task=FREE)
    other.enqueue(free)  # behind the held ones in claim order
    got = other.claim(1)  # no limits: the held ones are ready to it, first in order
    assert [le.id for le in got] == [messages[1].id]
    assert [le.id for le in other.claim(5)] == [messages[2].id, free.id]


def test_a_lapsed_lease_extended_by_its_holder_counts_again(
        context: BackendContext, other: RedisJobQueue) -> None:
    """A lease whose deadline passed stops counting (a limited claim prunes it from its
    task's ``running`` set); if its holder was only slow and extends it before another
    claim takes the job over, it is live again and counts again."""
    short = RedisJobQueue.from_settings(settings(visibility_timeout_secs=0.3), context)
    try:
        _, leases = _hold_back(short, 3)
        wait_until(lambda: short.peek_state(leases[0].id) is JobStatus.QUEUED, 10.0,
                   "the lease never lapsed")
        other.set_concurrency_limits({LIMITED: 1})
        assert other.claim(5, ["elsewhere"]) == []  # a limited claim: prunes the lapsed one
        assert short.extend(leases[0], 30.0) is True  # its holder was only slow
        assert short.peek_state(leases[0].id) is JobStatus.RUNNING
        assert other.claim(5) == [], "an extended lease must count against the limit again"
        assert short.ack(leases[0]) is True
        assert len(other.claim(5)) == 1
    finally:
        short.close()


def test_task_counts_read_in_budgeted_calls(queue: RedisJobQueue,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limit_scripts, "COUNT_BUDGET", 3)
    now = time.time()
    queue.enqueue_many([*_limited(5, queue="a"), *_limited(4, queue="b"),
                        *[make_message(task=FREE, queue=q) for q in ("a", "b", "c")],
                        *_limited(2, queue="c", available_at=now + 3600)])
    queue.set_concurrency_limits({LIMITED: 2})
    assert len(queue.claim(10)) == 5  # 2 limited and the 3 free; 7 limited held back
    assert queue.task_counts([LIMITED, FREE, "tasks.none"]) == {
        LIMITED: (2, 7), FREE: (3, 0), "tasks.none": (0, 0)}


def test_browse_pages_through_held_sets_in_budgeted_calls(
        queue: RedisJobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browse, "BUDGET", 12)
    limited = _limited(6, queue="a")
    others = [make_message(task=t, queue="a") for t in ("tasks.x", "tasks.y") for _ in range(4)]
    queue.enqueue_many([*limited, *others])
    queue.set_concurrency_limits({LIMITED: 1, "tasks.x": 1, "tasks.y": 1})
    assert len(queue.claim(20)) == 3
    seen: list[str] = []
    after = None
    while True:
        page = queue.browse(limit=4, after=after)
        seen += [j.id for j in page]
        if len(page) < 4:
            break
        after = page[-1].cursor
    assert sorted(seen) == sorted(m.id for m in [*limited, *others])
    assert len(seen) == len(set(seen))
