"""The benchmark's Nuvom tasks: the same tiny work as the Huey side (``bench_huey.py``).

Every job writes one byte to a marker file (``O_APPEND``, so the driver counts finished jobs
with ``stat()`` and needs no result backend) and returns ``x + y``. ``stamp`` records its
pickup latency: start time minus the enqueue time it was given.
"""

from __future__ import annotations

import os
import time

from nuvom_kernel import task

_fds: dict[str, int] = {}


def mark() -> None:
    """Append one byte to ``$BENCH_MARK`` (the fd is opened once per process)."""
    path = os.environ["BENCH_MARK"]
    fd = _fds.get(path)
    if fd is None:
        fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b".")


def record_stamp(enqueued_at: float) -> None:
    """Append this job's pickup latency (seconds) to ``$BENCH_STAMPS``."""
    latency = time.time() - enqueued_at  # first thing: the job has started
    with open(os.environ["BENCH_STAMPS"], "a") as fh:
        fh.write(f"{latency!r}\n")


@task(store_result=True)
def add(x: int, y: int) -> int:
    mark()
    return x + y


@task(store_result=False)
def add_nr(x: int, y: int) -> int:
    mark()
    return x + y


@task(store_result=False)
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)


def spin(n: int) -> int:
    """Pure-Python CPU work (holds the GIL): what only processes run in parallel."""
    total = 0
    for i in range(n):
        total += i * i
    return total


@task(store_result=False)
def burn(n: int) -> None:
    spin(n)
    mark()


@task(store_result=False)
async def wait_io(secs: float) -> None:
    """An ``async def`` job that awaits I/O (a sleep) and does nothing else."""
    import asyncio

    await asyncio.sleep(secs)
    mark()


@task(store_result=False)
def wait_io_sync(secs: float) -> None:
    """The same wait in a plain function, for the thread and process pools."""
    time.sleep(secs)
    mark()


@task(store_result=True)
def tsum(xs: list[int]) -> int:
    """The join of ``benchmarks/workflows.py``: one call with every member's result."""
    mark()
    return sum(xs)
