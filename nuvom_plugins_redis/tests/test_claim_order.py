"""A claim over several queues takes messages in push order, whatever the server's locale.

Why a server of its own: Redis calls ``setlocale(LC_COLLATE, "")``, and Lua's ``<`` on
strings is ``strcoll``, so under a locale such as ``en_US.UTF-8`` it puts ``a`` before
``B`` (and passes over ``-``) where the bytes, and a sorted set, do not. The claims merge
queues' members with ``<`` all the same (``limit_lua._CLAIMING`` says why: a member's rank
digits, unique per server, decide before its id is reached); the machine's shared server
runs in the C locale, where no test could tell, so this one runs under an ``en_US.UTF-8``
built for it with ``localedef`` (skipped where that cannot be done).
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


#: ids whose order by en_US collation is not their push order (nor their byte order)
IDS = ["b-2", "B-1", "a-9", "_z", "A-0", "a-1", "-c", "b1"]


@pytest.mark.parametrize("limited", [False, True], ids=["CLAIM", "CLAIM_LIMITED"])
def test_a_claim_over_queues_takes_jobs_in_push_order(collating_server: RedisServer,
                                                      limited: bool) -> None:
    context = BackendContext(visibility_timeout_secs=30.0, namespace=f"claim-order-{limited}")
    queue = RedisJobQueue.from_settings({"url": collating_server.url}, context)
    try:
        for i, job_id in enumerate(IDS):  # one push each: created µs and counter both grow
            queue.push([Message(id=job_id, body=b"x", queue=("one", "two")[i % 2], task="t")])
        if limited:
            queue.set_concurrency_limits({"t": len(IDS)})
        taken = [lease.id for _ in IDS for lease in queue.claim(1, ["one", "two"])]
        assert taken == IDS
    finally:
        queue.close()
