"""A claim over several queues takes messages in Redis's own order of a ready set (score,
then member byte by byte), whatever the server's locale.

Why a server of its own: Redis calls ``setlocale(LC_COLLATE, "")``, and Lua's ``<`` on
strings is ``strcoll``, so under a locale such as ``en_US.UTF-8`` it puts ``a`` before
``B`` where the bytes (and a sorted set) put ``B`` first. The machine's shared server runs
in the C locale, where the two agree and no test could tell them apart; this one runs
under an ``en_US.UTF-8`` built for it with ``localedef`` (skipped where that cannot be
done). Members of two queues share their 29 digits only when written so, which the test
does by hand: ranks from one server never do (their sequence numbers differ).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from redis_server import RedisServer

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import Message
from nuvom_plugins_redis import RedisJobQueue
from nuvom_plugins_redis.lua import RANK_LEN

LOCALE = "en_US.UTF-8"


@pytest.fixture(scope="module")
def collating_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway server whose Lua compares strings by ``en_US.UTF-8`` collation."""
    if shutil.which("localedef") is None or shutil.which("redis-server") is None:
        pytest.skip("needs localedef and redis-server")
    root = tmp_path_factory.mktemp("collate")
    locales = root / "locales"
    locales.mkdir()
    built = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8",
                            str(locales / LOCALE)], capture_output=True, timeout=120)
    if built.returncode != 0 or not (locales / LOCALE).exists():
        pytest.skip(f"localedef could not build {LOCALE}: {built.stderr[-200:]!r}")
    env = {**os.environ, "LOCPATH": str(locales), "LC_ALL": LOCALE}
    server = RedisServer(root, "127.0.0.1", env=env).start()
    try:
        client = server.client()
        if not client.eval("return ('a' < 'B') and 1 or 0", 0):
            pytest.skip(f"redis-server's Lua does not collate by {LOCALE} here")
        client.close()
        yield server
    finally:
        server.stop()


def _same_digits(queue: RedisJobQueue, ids_by_queue: dict[str, str]) -> None:
    """Give each queue's one ready member the same 29 digits (the first one's), so only
    the ids order them, and the job hashes the ranks their members now are."""
    client, prefix = queue.store.client, queue.store.prefix
    digits = None
    for name, job_id in ids_by_queue.items():
        key = f"{prefix}q:{name}:ready"
        [(member, score)] = client.zrange(key, 0, -1, withscores=True)
        digits = digits or member[:RANK_LEN]
        rank = digits + job_id.encode()
        client.zrem(key, member)
        client.zadd(key, {rank: score})
        client.hset(f"{prefix}j:{job_id}", "r", rank)


@pytest.mark.parametrize("limited", [False, True], ids=["CLAIM", "CLAIM_LIMITED"])
def test_a_claim_over_queues_merges_in_byte_order(collating_server: RedisServer,
                                                  limited: bool) -> None:
    context = BackendContext(visibility_timeout_secs=30.0, namespace=f"claim-order-{limited}")
    queue = RedisJobQueue.from_settings({"url": collating_server.url}, context)
    try:
        queue.push([Message(id="a-job", body=b"a", queue="one", task="t"),
                    Message(id="B-job", body=b"b", queue="two", task="t")])
        _same_digits(queue, {"one": "a-job", "two": "B-job"})
        if limited:
            queue.set_concurrency_limits({"t": 5})
        # bytes: 'B' (66) before 'a' (97); en_US collation: a before B
        assert [lease.id for lease in queue.claim(1, ["one", "two"])] == ["B-job"]
        assert [lease.id for lease in queue.claim(1, ["one", "two"])] == ["a-job"]
    finally:
        queue.close()
