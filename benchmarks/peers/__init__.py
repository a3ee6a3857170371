"""The Redis benchmark's peers, one small module each (``python -m
benchmarks.redis_throughput --systems ...``).

Each ``*_peer.py`` holds the driver-side adapter (a :class:`benchmarks.throughput.System`:
enqueue one at a time, the peer's batch API if it has one, the latency job, the worker
command, the clean-up); each ``*_app.py`` is what the peer's worker process imports, set up
from ``BENCH_*`` environment variables so that every measurement gets fresh keys. The task is
the same everywhere (:mod:`benchmarks.bench_tasks`: append one byte to a marker file, return
``x + y``), and per-job logging is off on every side.
"""
