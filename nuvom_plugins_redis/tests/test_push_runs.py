"""The push script's argument layout and its per-chunk writes (``scripts.PUSH``): messages
travel in runs that share their routing, ready and delayed entries go in with one ZADD per
set, and ``d`` is not stored until a claim. A chunk mixing every routing field, repeated
ids and ids already queued must come out exactly as pushed."""

from __future__ import annotations

import time

import attrs
import pytest
import redis

from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.lua import RANK_LEN
from nuvom_plugins_redis.queue import _push_call


def test_a_created_at_that_is_no_finite_number_stores_nothing(queue: RedisJobQueue) -> None:
    good, bad = make_message(), make_message(created_at=float("nan"))
    with pytest.raises(redis.ResponseError, match="BADARGS"):
        queue.push([good, bad])
    assert queue.qsize() == 0
    assert queue.push([good]) == [True], "nothing of the failed chunk was left behind"


def test_runs_share_routing_and_every_field_comes_back(queue: RedisJobQueue) -> None:
    later = time.time() + 60
    a1, a2 = make_message(queue="a", task="t.one"), make_message(queue="a", task="t.one")
    hi = make_message(queue="a", priority=5, task="t.one")
    b1 = make_message(queue="b", task="t.two")
    held = make_message(queue="a", available_at=later, task="t.one")
    a3 = make_message(queue="a", task="t.one")
    old = make_message(queue="c")
    assert queue.push([old]) == [True]
    again = attrs.evolve(old, queue="d")  # queued already: stores nothing, not even in "d"
    sent = [a1, a2, hi, b1, held, attrs.evolve(a1, body=b"twin"), a3, again]
    args = _push_call("P:", sent, "", 0)
    assert args[:5] == ["P:", len(sent), "", 0, ""]
    runs, at = [], 5
    while at < len(args):  # each run: count, queue, priority, delay, task, messages
        runs.append(args[at:at + 5])
        at += 5 + 3 * args[at]
    assert at == len(args)
    assert [(r[0], r[1], r[2], r[4]) for r in runs] == [
        (2, "a", 0, "t.one"), (1, "a", 5, "t.one"), (1, "b", 0, "t.two"),
        (1, "a", 0, "t.one"), (2, "a", 0, "t.one"), (1, "d", 0, "tasks.add")], \
        "one run per change of routing, in the order of the messages"
    assert float(runs[3][3]) == pytest.approx(60, abs=5), "a delay, not a time"

    assert queue.push(sent) == [True] * 5 + [False, True, False]
    client, prefix = queue.store.client, queue.store.prefix
    assert not client.hexists(prefix + "j:" + a1.id, "d"), "no delivery yet, none stored"
    assert client.smembers(prefix + "queues") == {b"a", b"b", b"c"}
    assert client.zcard(prefix + "q:a:ready") == 4
    assert client.zrange(prefix + "q:a:delayed", 0, -1) == [held.id.encode()]
    assert queue.peek_state(held.id) is JobStatus.QUEUED
    counts = queue.stats().queues
    assert (counts["a"].ready, counts["a"].delayed, counts["b"].ready) == (4, 1, 1)

    leases = queue.claim(10, ["a"])
    assert [le.id for le in leases] == [hi.id, a1.id, a2.id, a3.id], \
        "higher priority first, then FIFO across runs"
    for lease, m in zip(leases, [hi, a1, a2, a3], strict=True):
        got = lease.message
        assert attrs.evolve(got, created_at=m.created_at, available_at=m.available_at) == m, \
            "every field as pushed"
        # the times are the server's clock (scripts.PUSH): this host's, within the skew
        # estimated at startup and the push's latency
        assert got.created_at == pytest.approx(m.created_at, abs=0.01)
        assert (lease.deliveries, lease.message.failures) == (1, 0)
    assert queue.release(leases[1]) is True
    assert queue.claim(1, ["a"])[0].deliveries == 1, "a release takes its delivery back"
    assert queue.retry(leases[2], delay_secs=0) is True
    again_leased = queue.claim(1, ["a"])[0]
    assert (again_leased.id, again_leased.deliveries, again_leased.message.failures) == \
        (a2.id, 2, 1)
    assert queue.claim(10, ["b"])[0].message.id == b1.id
    assert queue.cancel(held.id) is True
    assert queue.cancel(old.id) is True
    assert queue.qsize() == 0


def test_the_rank_holds_created_microseconds_in_17_digits(queue: RedisJobQueue) -> None:
    """The script works the rank's created µs out of created_at (as stored: the push's
    moment on the server's clock minus the message's age): the digits Python's
    ``int(created * 1e6)`` gives, clamped to 17 digits, so the id always starts at
    ``RANK_LEN`` (claims and clear cut it there)."""
    created = [0.0, 1e-7, 0.5e-6, 1700000000.123456, 1764770000.9999995, 1764770001.25,
               123456789.000001, -5.0, 1e12, float("inf")]
    sent = [make_message(created_at=c) for c in created[:-1]]
    assert queue.push(sent) == [True] * len(sent)
    client, prefix = queue.store.client, queue.store.prefix
    for m in sent:
        rank = client.hget(prefix + "j:" + m.id, "r").decode()
        stored = float(client.hget(prefix + "j:" + m.id, "c"))
        assert stored == pytest.approx(m.created_at, abs=0.01)
        micros = min(max(int(stored * 1_000_000), 0), 10**17 - 1)
        expected = f"{micros:017d}" if micros < 10**17 - 16 else "99999999999999984"
        assert rank[:RANK_LEN - 12] == expected, m.created_at
        assert rank[RANK_LEN:] == m.id
    with pytest.raises(redis.ResponseError, match="BADARGS"):
        queue.push([make_message(created_at=created[-1])])
