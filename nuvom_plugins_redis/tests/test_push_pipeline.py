"""A batch of several push chunks goes out pipelined (``Store.run_many``): the same result
as chunk after chunk — every new id stored once, flags in order, and after a failed chunk
only the chunks before it stored."""

from __future__ import annotations

import attrs
import pytest
import redis
from redis_helpers import URL

from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.queue import PUSH_CHUNK, _push_call


def test_a_batch_of_several_chunks_is_stored_once_in_order(queue: RedisJobQueue) -> None:
    sent = [make_message() for _ in range(2 * PUSH_CHUNK + 7)]
    again = sent[5]  # an id earlier in the batch, in another chunk
    flags = queue.push([*sent, attrs.evolve(again, body=b"other")])
    assert flags == [True] * len(sent) + [False]
    assert queue.push(sent[PUSH_CHUNK - 1:PUSH_CHUNK + 1]) == [False, False]
    assert queue.qsize() == len(sent)
    claimed = queue.claim(len(sent) + 1)
    assert [le.id for le in claimed] == [m.id for m in sent], "FIFO across the chunks"
    assert claimed[5].message.body == again.body


def test_a_flushed_script_cache_is_reloaded_mid_batch(queue: RedisJobQueue) -> None:
    admin = redis.Redis.from_url(URL)
    try:
        admin.script_flush()
    finally:
        admin.close()
    sent = [make_message() for _ in range(3 * PUSH_CHUNK)]
    assert queue.push(sent) == [True] * len(sent)
    assert queue.qsize() == len(sent)


def test_a_failed_chunk_stops_the_chunks_after_it(queue: RedisJobQueue) -> None:
    """The guard in the push script, run as ``push`` runs it: the second chunk fails (a
    priority the script cannot read, half-way through it), so nothing of it is stored, not
    even the messages before the bad one, and the third chunk must not be stored."""
    sent = [make_message() for _ in range(3 * PUSH_CHUNK)]
    middle = PUSH_CHUNK + PUSH_CHUNK // 2
    sent[middle] = attrs.evolve(sent[middle], priority=3)  # a run of its own, mid-chunk
    store = queue.store
    calls = [_push_call(store.prefix, sent[i * PUSH_CHUNK:(i + 1) * PUSH_CHUNK], "batch-1", i)
             for i in range(3)]
    head = calls[1].index(sent[middle].id) - 5  # its run: count, queue, priority, ...
    assert calls[1][head:head + 3] == [1, "default", 3]
    calls[1][head + 2] = "not a number"
    replies = store.run_many(queue._scripts["PUSH"], calls)
    assert replies[0][:-1] == [1] * PUSH_CHUNK  # then the push's moment (scripts.PUSH)
    assert isinstance(replies[1], redis.ResponseError) and "BADARGS" in str(replies[1])
    assert isinstance(replies[2], redis.ResponseError) and "SKIPPED" in str(replies[2])
    assert queue.qsize() == PUSH_CHUNK
    for m in (sent[PUSH_CHUNK], sent[middle - 1], sent[2 * PUSH_CHUNK]):
        assert not store.client.exists(store.prefix + "j:" + m.id)
    # the third chunk, pushed again, is stored: nothing of it was left behind
    assert queue.push(sent[2 * PUSH_CHUNK:]) == [True] * PUSH_CHUNK


def test_a_killed_connection_mid_batch_runs_the_unanswered_chunks_again(
        queue: RedisJobQueue) -> None:
    assert queue.push([make_message()]) == [True]  # opens the store's own connection
    admin = redis.Redis.from_url(URL)
    try:
        for conn in queue.store._all:
            conn.send_command("CLIENT", "ID")
            admin.client_kill_filter(_id=str(int(conn.read_response())))
    finally:
        admin.close()
    sent = [make_message() for _ in range(3 * PUSH_CHUNK)]
    assert queue.push(sent) == [True] * len(sent)
    assert queue.qsize() == len(sent) + 1


def test_a_message_that_cannot_go_stops_the_batch_after_the_chunks_before_it(
        queue: RedisJobQueue) -> None:
    """Chunks are built as they are sent, so a bad message in the third chunk is found after
    two chunks went out: those two are stored (each chunk is atomic, the batch is not), the
    error names the message and says how much was stored, and the connection stays usable."""
    sent = [make_message() for _ in range(3 * PUSH_CHUNK)]
    sent[2 * PUSH_CHUNK + 5] = attrs.evolve(sent[2 * PUSH_CHUNK + 5], body="text")
    with pytest.raises(TypeError, match="body must be bytes") as failed:
        queue.push(sent)
    assert getattr(failed.value, "__notes__", [""])[0].startswith(
        f"{2 * PUSH_CHUNK} job(s) of this batch were enqueued before the failure")
    assert queue.qsize() == 2 * PUSH_CHUNK
    assert not queue.store.client.exists(queue.store.prefix + "j:" + sent[2 * PUSH_CHUNK].id)
    assert queue.push([make_message()]) == [True]
