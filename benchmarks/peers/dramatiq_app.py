"""The Redis benchmark's Dramatiq app (``dramatiq benchmarks.peers.dramatiq_app``), set up by
environment: ``BENCH_REDIS_URL``, ``BENCH_DRAMATIQ_NS`` (the broker's key namespace, one per
measurement), ``BENCH_RESULTS`` ("1": the Results middleware with its Redis backend, in database
``BENCH_DRAMATIQ_RESULTS_DB``: its keys are bare md5 digests with no namespace, so they get a
database of their own to be found and deleted afterwards).

Dramatiq's defaults otherwise (prefetch 2 x threads, its backoff polling). Why the worker
thread's logger is raised to ERROR: without the Results middleware Dramatiq logs a WARNING
for every job whose actor returns a value; the task must stay the same as on every other
side (``return x + y``), so the per-job log line is silenced instead.
"""

from __future__ import annotations

import logging
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from benchmarks.bench_tasks import mark, record_stamp

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS_URL = os.environ.get("BENCH_DRAMATIQ_RESULTS_URL", URL)
NAMESPACE = os.environ.get("BENCH_DRAMATIQ_NS", "nuvom-bench-dramatiq")
RESULTS = os.environ.get("BENCH_RESULTS", "0") == "1"

logging.getLogger("dramatiq.worker.WorkerThread").setLevel(logging.ERROR)

broker = RedisBroker(url=URL, namespace=NAMESPACE)
if RESULTS:
    broker.add_middleware(Results(backend=RedisBackend(url=RESULTS_URL,
                                                       namespace=NAMESPACE + "-results")))
if os.environ.get("BENCH_DRAMATIQ_ASYNC") == "1":  # async actors (the pools benchmark)
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)
_options = {"store_results": True} if RESULTS else {}


@dramatiq.actor(**_options)
def add(x: int, y: int) -> int:
    mark()
    return x + y


@dramatiq.actor
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)


@dramatiq.actor
async def wait_io(secs: float) -> None:
    import asyncio

    await asyncio.sleep(secs)
    mark()
