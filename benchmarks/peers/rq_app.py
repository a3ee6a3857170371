"""The Redis benchmark's RQ tasks: plain functions, imported by RQ's workers by dotted name
(``benchmarks.peers.rq_app.add``)."""

from __future__ import annotations

from benchmarks.bench_tasks import mark, record_stamp


def add(x: int, y: int) -> int:
    mark()
    return x + y


def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)
