"""A settle held up by its store never stops the worker's other leases from being extended.

Before: the settler and the lease monitor shared one lock, held for the whole settle. A
settle waiting on the server (``nuvom.results`` locked by an ``ALTER TABLE``, a ``VACUUM
FULL``, a ``REINDEX``) held it, so no lease of the worker was extended meanwhile, and a
job still running here was claimed and run by another worker once its lease lapsed (an
operator saw one job run three times at once). A real server, a real worker, the table
locked by a connection of the test's own for twice the visibility timeout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel import JobStatus, Worker
from nuvom_kernel.kernel import Kernel, use_kernel

TASKS = '''\
import pathlib
import time

from nuvom_kernel import task

RUNS = pathlib.Path(__file__).with_name("runs.log")


@task
def work(name, secs):
    with RUNS.open("a") as f:
        f.write(name + "\\n")
    time.sleep(secs)  # the job's own work: a long one, and a short one
    return name
'''

VISIBILITY = 2.0


def _lease_left(admin: psycopg.Connection[tuple[object, ...]], schema: str, job_id: str
                ) -> float:
    """Seconds until the job's lease expires, by the server's clock."""
    row = admin.execute(sql.SQL(
        "SELECT extract(epoch FROM lease_expires_at - clock_timestamp()) FROM {}.jobs "
        "WHERE id = %s").format(sql.Identifier(schema)), (job_id,)).fetchone()
    assert row is not None and row[0] is not None, f"job {job_id} is not leased"
    return float(row[0])  # type: ignore[arg-type]


def test_a_running_job_keeps_its_lease_while_another_jobs_settle_waits(
        tmp_path: Path, schema: str, admin: psycopg.Connection[tuple[object, ...]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "t_blocked.py").write_text(TASKS)
    monkeypatch.delitem(sys.modules, "t_blocked", raising=False)
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
        "NUVOM_PLUGINS__POSTGRES__DSN": DSN, "NUVOM_PLUGINS__POSTGRES__SCHEMA": schema,
        "NUVOM_VISIBILITY_TIMEOUT_SECS": str(VISIBILITY)})
    locker = psycopg.connect(DSN)  # its transaction holds the lock
    try:
        with use_kernel(kernel):
            from t_blocked import work  # type: ignore[import-not-found]

            worker = Worker(kernel, workers=2, scheduler=False, poll_timeout_secs=0.05)
            worker.start()
            try:
                long = work.delay("long", 6 * VISIBILITY)
                deadline = time.monotonic() + 30
                while kernel.queue.peek_state(long.id) is not JobStatus.RUNNING:
                    assert time.monotonic() < deadline, "the long job did not start"
                    time.sleep(0.02)
                locker.execute(sql.SQL("LOCK TABLE {}.results IN ACCESS EXCLUSIVE MODE")
                               .format(sql.Identifier(schema)))
                short = work.delay("short", 0)  # its settle now waits for the lock
                held_until = time.monotonic() + 2.5 * VISIBILITY
                while time.monotonic() < held_until:  # the lock's whole length
                    left = _lease_left(admin, schema, long.id)
                    assert left > 0, (f"the running job's lease lapsed ({left:.1f} s) while "
                                      "another job's settle waited for its store")
                    time.sleep(0.1)
                assert kernel.queue.peek_state(short.id) is JobStatus.RUNNING, \
                    "the short job's settle did not wait for the lock (nothing was tested)"
                locker.commit()
                assert short.get(timeout=30) == "short" and long.get(timeout=60) == "long"
            finally:
                worker.stop()
                worker.join()
        runs = (tmp_path / "runs.log").read_text().split()
        assert sorted(runs) == ["long", "short"], f"a job ran again: {runs}"
    finally:
        locker.close()
        kernel.close()
