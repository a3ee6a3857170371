"""What the browse contract cannot see on Redis: a page read in several budgeted script calls
while other clients change the sets between them, damaged hashes skipped without a write,
and due or expired messages reported where they are, never promoted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_helpers import settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.testing.contracts import make_message
from nuvom_kernel.views import QueuedJob
from nuvom_plugins_redis import RedisJobQueue, browse


@pytest.fixture
def quiet(context: BackendContext) -> Iterator[RedisJobQueue]:
    """A queue whose reaper never ticks during a test: what is due stays where it is."""
    q = RedisJobQueue.from_settings(settings(reap_interval_secs=3600), context)
    yield q
    q.close()


def _listing(queue: RedisJobQueue, limit: int, **kw: Any) -> list[QueuedJob]:
    jobs: list[QueuedJob] = []
    after = None
    while True:
        page = queue.browse(after=after, limit=limit, **kw)
        jobs += page
        if len(page) < limit:
            return jobs
        after = page[-1].cursor


def _snapshot(client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the namespace with its whole value."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(prefix + "*"):
        kind = client.type(key)
        out[key] = {b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                    b"hash": client.hgetall, b"set": client.smembers,
                    b"string": client.get}[kind](key)
    return out


def test_a_page_read_in_slices_lists_what_stays_put_once_while_others_move(
        quiet: RedisJobQueue, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The smallest budget makes every call stop after a slice, and between calls other
    clients claim, cancel, push and promote: each message that stays put is listed exactly
    once, in order. A call resuming by index would skip messages after a claim took one
    from before it; one reading ready before delayed would miss a promotion."""
    base = time.time() - 500.0
    sent: list[Message] = []
    for i in range(300):  # bands of three priorities, two queues, runs of equal created_at
        at = base + (i // 3) * 0.5
        sent.append(make_message(f"{'aBä'[i % 3]}-{i:03d}", queue="ab"[i % 2],
                                 priority=i % 3 - 1, created_at=at,
                                 available_at=time.time() + 600 if i % 7 == 0 else 0.0))
    queue = quiet  # promotions below are the test's own, not a reaper thread's
    queue.push(sent)
    held = queue.claim(40)
    touched = {le.id for le in held[20:]}  # retried or released below
    for i, lease in enumerate(held[20:]):
        assert queue.retry(lease, delay_secs=300.0) if i % 2 else queue.release(lease)
    victims = iter([m.id for m in sent[200:]])
    # the oldest leases of queue a expire once each and are promoted (the claims below take
    # from queue b, so none is claimed again: they must be listed)
    expiring = iter([le for le in held[:20] if le.message.queue == "a"])
    steps = 0

    def meanwhile() -> None:  # one change by another client between two calls
        nonlocal steps
        steps += 1
        kind = steps % 4
        if steps > 400:  # enough: most messages stay put
            return
        if kind == 0:
            touched.update(le.id for le in queue.claim(1, ["b"]))
        elif kind == 1:
            victim = next(victims)
            touched.add(victim)
            queue.cancel(victim)
        elif kind == 2:
            late = make_message(f"late-{steps}", created_at=base + 60.0)
            touched.add(late.id)
            queue.push([late])
        else:  # a lease expires and the reaper promotes it: it moves, and is listed
            lease = next(expiring, None)
            if lease is not None and queue.extend(lease, 0):
                client.delete(queue.store.prefix + "reaper")  # the last tick's lock
                assert int(queue._run("REAP", [60_000, uuid.uuid4().hex], "reaping")) >= 1

    run = queue._run

    def interleaved(name: str, args: Any, what: str) -> Any:
        if name == "BROWSE" and args[7]:  # a call resuming where the one before stopped
            meanwhile()
        return run(name, args, what)

    monkeypatch.setattr(browse, "BUDGET", 12)  # a slice of one entry, two or so per call
    monkeypatch.setattr(queue, "_run", interleaved)
    jobs = _listing(queue, 100)
    assert steps > 400, "the pages were read in many calls"
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids)), "nothing is listed twice"
    assert [(j.created_at, j.id) for j in jobs] == sorted((j.created_at, j.id) for j in jobs)
    stayed = [m.id for m in sent if m.id not in touched]
    assert set(stayed) <= set(ids), "every message that stayed put is listed"


def test_ties_page_on_by_the_ids_code_points(queue: RedisJobQueue,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal ``created_at`` across a page boundary and a call boundary: ids in Python's
    order (``'B' < 'a' < 'ä'``), whatever the server's locale says of Lua's ``<``."""
    at = time.time() - 100.0
    ids = ["a", "B", "ä", "a-", "ab", "0", "é", "A"]
    queue.push([make_message(i, created_at=at, priority=n % 2) for n, i in enumerate(ids)])
    monkeypatch.setattr(browse, "BUDGET", 1)
    for limit in (1, 2, 3, 100):
        assert [j.id for j in _listing(queue, limit)] == sorted(ids)


def test_damaged_hashes_are_skipped_and_the_page_still_filled(
        queue: RedisJobQueue, client: redis.Redis) -> None:
    """A hash with a field Lua cannot read is skipped in the script; one whose field Lua
    reads but Python cannot (a fractional priority, a task that is not UTF-8, a hex time) is
    skipped by a second read; a ready entry whose hash is gone is skipped. None is moved:
    quarantining is the claim's job."""
    sent = [make_message(queue="default") for _ in range(10)]
    assert queue.push(sent) == [True] * 10
    prefix = queue.store.prefix
    client.hset(f"{prefix}j:{sent[0].id}", "c", "yesterday")
    client.hset(f"{prefix}j:{sent[1].id}", "p", "1.5")
    client.hset(f"{prefix}j:{sent[2].id}", "t", b"\xff\xfe")
    client.hset(f"{prefix}j:{sent[3].id}", "a", "0x10")
    client.delete(f"{prefix}j:{sent[4].id}")
    client.hdel(f"{prefix}j:{sent[5].id}", "p")
    before = _snapshot(client, prefix)
    good = [m.id for m in sent[6:]]
    assert [j.id for j in queue.browse(limit=3)] == good[:3], "a full page past the damage"
    assert [j.id for j in _listing(queue, 1)] == good
    assert _snapshot(client, prefix) == before, "browse moved and wrote nothing"
    assert not client.exists(f"{prefix}quarantine")


def test_due_and_expired_messages_are_reported_where_they_are(
        quiet: RedisJobQueue, client: redis.Redis) -> None:
    """A due delayed message and an expired lease read QUEUED, as ``peek_state`` says, and
    stay in their sets: browse promotes nothing (the next claim or the reaper does)."""
    expired, retrying = make_message(), make_message()
    assert quiet.push([expired, retrying]) == [True, True]
    leases = {le.id: le for le in quiet.claim(2)}
    assert quiet.extend(leases[expired.id], 0)
    assert quiet.retry(leases[retrying.id], delay_secs=600.0)
    due = make_message(available_at=time.time() + 600)
    assert quiet.push([due]) == [True]
    prefix = quiet.store.prefix
    client.zadd(f"{prefix}q:default:delayed", {due.id: 1.0})  # its time has come
    client.hset(f"{prefix}j:{due.id}", "a", "1.0")
    before = _snapshot(client, prefix)
    jobs = {j.id: j for j in quiet.browse()}
    assert _snapshot(client, prefix) == before, "nothing promoted, nothing written"
    assert {i: (j.state, j.deliveries, j.lease_expires_at) for i, j in jobs.items()} == {
        due.id: (JobStatus.QUEUED, 0, None),
        expired.id: (JobStatus.QUEUED, 1, None),
        retrying.id: (JobStatus.RETRYING, 1, None)}
    for job in jobs.values():
        assert job.state is quiet.peek_state(job.id)
    assert [j.id for j in quiet.browse(states=[JobStatus.RETRYING])] == [retrying.id]
