"""The short script path (``Store.run``): what it must survive besides the happy path — a
flushed script cache, a killed connection, a fork, many threads at once."""

from __future__ import annotations

import os
import threading

import redis
from redis_helpers import URL

from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue


def test_a_flushed_script_cache_is_reloaded(queue: RedisJobQueue) -> None:
    first = make_message()
    assert queue.push([first]) == [True]
    admin = redis.Redis.from_url(URL)
    try:
        admin.script_flush()  # what a restart or a failover to a fresh replica does
    finally:
        admin.close()
    second = make_message()
    assert queue.push([second]) == [True]
    assert {le.id for le in queue.claim(5)} == {first.id, second.id}


def test_a_killed_connection_falls_back_and_reconnects(queue: RedisJobQueue) -> None:
    assert queue.push([make_message()]) == [True]
    admin = redis.Redis.from_url(URL)
    try:
        live = {int(c["id"]) for c in admin.client_list()}
        assert queue.store._all, "the push went over a connection of the store's own"
        for conn in queue.store._all:  # the store's own connections, not the test's
            conn.send_command("CLIENT", "ID")
            conn_id = int(conn.read_response())
            assert conn_id in live
            admin.client_kill_filter(_id=str(conn_id))
    finally:
        admin.close()
    assert queue.push([make_message()]) == [True], "the script ran after the kill"
    assert queue.qsize() == 2


def test_a_forked_child_uses_connections_of_its_own(queue: RedisJobQueue) -> None:
    assert queue.push([make_message()]) == [True]
    parents = list(queue.store._all)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = False
        try:
            ok = queue.store._all == [] and queue.push([make_message()]) == [True] and \
                all(c not in parents for c in queue.store._all)
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert queue.push([make_message()]) == [True], "the parent's connection still works"
    assert queue.qsize() == 3


def test_concurrent_callers_never_share_a_connection(queue: RedisJobQueue) -> None:
    sent = [make_message() for _ in range(400)]
    errors: list[BaseException] = []

    def push(part: list) -> None:
        try:
            for m in part:
                assert queue.push([m]) == [True]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(sent[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert queue.qsize() == len(sent)
    assert len(queue.store._all) <= 8
