"""The Redis benchmark's Huey app (``huey_consumer benchmarks.bench_redis_huey.huey``),
configured by environment: ``BENCH_REDIS_URL``, ``BENCH_HUEY_NAME`` (its keys' name, one per
measurement), ``BENCH_RESULTS`` ("1"/"0"). ``RedisHuey`` blocks in ``BRPOP`` when idle
(``blocking=True``, its default), as Nuvom's Redis queue blocks in ``BZPOPMIN``.
"""

from __future__ import annotations

import os

from huey import RedisHuey

from benchmarks.bench_tasks import mark, record_stamp

huey = RedisHuey(
    os.environ.get("BENCH_HUEY_NAME", "bench"),
    url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    results=os.environ.get("BENCH_RESULTS", "0") == "1",
)


@huey.task()
def add(x: int, y: int) -> int:
    mark()
    return x + y


@huey.task()
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)
