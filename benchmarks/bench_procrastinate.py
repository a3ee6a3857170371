"""The PostgreSQL benchmark's procrastinate app
(``procrastinate --app=benchmarks.bench_procrastinate.app worker``), configured by
environment: ``BENCH_PG_DSN`` (the throwaway database of one measurement).

The tasks do the same work as Nuvom's (``bench_tasks.py``). They are plain functions, so
procrastinate runs them in threads, as Nuvom's worker does; the worker LISTENs for new jobs
(its default), as Nuvom's does.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from benchmarks.bench_tasks import mark, record_stamp

app = App(connector=PsycopgConnector(
    conninfo=os.environ.get("BENCH_PG_DSN", "host=127.0.0.1 user=postgres dbname=postgres")))


@app.task(name="add")
def add(x: int, y: int) -> int:
    mark()
    return x + y


@app.task(name="stamp")
def stamp(enqueued_at: float) -> None:
    record_stamp(enqueued_at)
