"""What the Redis benchmark's adapters share: the server, key clean-up, and a pickup/idle
measurement that counts a worker's whole process tree.

Why a second latency/idle function and not :func:`benchmarks.throughput.measure_idle_and_latency`:
Dramatiq and RQ's worker pool run their jobs in child processes of the command we start,
and that function reads only the started process's CPU time, which would make their idle
CPU look like zero.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis

from benchmarks.throughput import System, _pct, _stamps, _stop, _wait_for

URL = os.environ.get("NUVOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def url_with_db(db: int) -> str:
    """``URL`` with its database number replaced (RQ has no key prefix: it gets a db)."""
    base = URL.rsplit("/", 1)[0] if URL.count("/") > 2 else URL
    return f"{base}/{db}"


def delete_keys(pattern: str, url: str = URL) -> int:
    """Unlink every key matching ``pattern`` (``SCAN``, so the server never stalls)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
        return len(keys)
    finally:
        client.close()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its live descendants (Linux /proc)."""
    tree, total, todo = _children(), 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
        todo += tree.get(current, [])
    return total


def measure_idle_and_latency(system: System, jobs: int, idle_secs: float) -> dict[str, float]:
    """The method of :func:`benchmarks.throughput.measure_idle_and_latency` (4 warm-up jobs,
    1 s idle, ``jobs`` jobs 20 ms apart, then idle CPU), with the CPU of the whole tree."""
    proc = system.worker()
    stamps_file: Path = system.stamps
    try:
        for i in range(4):
            system.enqueue_stamp()
            _wait_for(lambda i=i: len(_stamps(stamps_file)) > i, 60, "warm-up", proc)
        time.sleep(1.0)
        next_at = time.perf_counter()
        for _ in range(jobs):
            next_at += 0.020
            system.enqueue_stamp()
            time.sleep(max(0.0, next_at - time.perf_counter()))
        _wait_for(lambda: len(_stamps(stamps_file)) >= jobs + 4, 60, "latency jobs", proc)
        time.sleep(1.0)
        cpu0, wall0 = tree_cpu_secs(proc.pid), time.perf_counter()
        time.sleep(idle_secs)
        idle_cpu = (tree_cpu_secs(proc.pid) - cpu0) / (time.perf_counter() - wall0) * 100
    finally:
        _stop(proc)
    stamps = _stamps(stamps_file)[4:]
    lat = sorted(stamps)
    return {"idle_cpu_pct": idle_cpu, "latency_p50_ms": _pct(lat, 50) * 1000,
            "latency_p99_ms": _pct(lat, 99) * 1000, "first_after_idle_ms": stamps[0] * 1000}
