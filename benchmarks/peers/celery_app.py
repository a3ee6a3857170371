"""The Redis benchmark's Celery app (``celery -A benchmarks.peers.celery_app worker``), set up
by environment: ``BENCH_REDIS_URL``, ``BENCH_CELERY_PREFIX`` (Kombu's ``global_keyprefix``
for the broker and the result backend, one per measurement), ``BENCH_RESULTS`` ("1": the
Redis result backend stores every return value; "0": no backend and ``ignore_result``).

Celery's defaults otherwise (prefetch multiplier 4, mingle, gossip, heartbeats); per-job
logging is off by ``--loglevel WARNING`` ("received"/"succeeded" are INFO lines).
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.bench_tasks import mark, record_stamp

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_CELERY_PREFIX", "nuvom-bench-celery:")
RESULTS = os.environ.get("BENCH_RESULTS", "0") == "1"

app = Celery("nuvom_bench", broker=URL, backend=URL if RESULTS else None)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_ignore_result=not RESULTS,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(ignore_result=not RESULTS)
def add(x: int, y: int) -> int:
    mark()
    return x + y


@app.task(ignore_result=True)
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)


@app.task(ignore_result=True)
def burn(n: int) -> None:
    from benchmarks.bench_tasks import spin

    spin(n)
    mark()
