"""The benchmark's Huey app (``huey_consumer benchmarks.bench_huey.huey``), configured by
environment: ``BENCH_DB`` (file), ``BENCH_RESULTS`` ("1"/"0"), ``BENCH_SYNC`` (NORMAL/FULL).

Huey's own ``fsync`` switch offers FULL (its default) or OFF; ``NORMAL`` is set by a
three-line storage subclass so both queues are compared at the same SQLite durability.
"""

from __future__ import annotations

import os

from huey import SqliteHuey
from huey.storage import SqliteStorage

from benchmarks.bench_tasks import mark, record_stamp


class NormalSyncStorage(SqliteStorage):
    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


_sync = os.environ.get("BENCH_SYNC", "FULL").upper()
huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_DB", "huey-bench.db"),
    results=os.environ.get("BENCH_RESULTS", "0") == "1",
    **({"storage_class": NormalSyncStorage} if _sync == "NORMAL" else {"fsync": True}),
)


@huey.task()
def add(x: int, y: int) -> int:
    mark()
    return x + y


@huey.task()
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)


@huey.task()
def burn(n: int) -> None:
    from benchmarks.bench_tasks import spin

    spin(n)
    mark()
