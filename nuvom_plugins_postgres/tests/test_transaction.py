"""Enqueue inside the caller's transaction: a job exists if and only if the caller's data
commits. Real server, real kernel, a real ``task.delay()``."""

from __future__ import annotations

import os
import threading
import time

import psycopg
import pytest
from pg_support import DSN
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import nuvom_plugins_postgres
from nuvom_kernel import task
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus


@task
def send_receipt(order_id: int) -> int:
    return order_id


def test_rolled_back_transaction_leaves_no_job(kernel: Kernel) -> None:
    with psycopg.connect(DSN) as conn:  # not autocommit: one open transaction
        conn.execute("CREATE TEMP TABLE orders (id int)")
        conn.execute("INSERT INTO orders VALUES (1)")
        with nuvom_plugins_postgres.transaction(conn):
            job = send_receipt.delay(1)
        assert kernel.queue.peek_state(job.id) is None, \
            "an uncommitted job must be invisible to every other session"
        conn.rollback()
    assert kernel.queue.peek_state(job.id) is None, "a rolled-back enqueue leaves no job"
    assert kernel.queue.qsize() == 0 and kernel.queue.claim(10) == []


def test_committed_transaction_enqueues_and_wakes_a_waiting_worker(kernel: Kernel) -> None:
    queue = kernel.queue
    queue.poll_interval_min = queue.poll_interval_max = 30.0  # type: ignore[misc]
    got: dict[str, object] = {}

    def consume() -> None:
        got["lease"] = queue.dequeue(timeout=20)
        got["at"] = time.monotonic()

    with psycopg.connect(DSN) as conn:
        with nuvom_plugins_postgres.transaction(conn):
            job = send_receipt.delay(7)
        waiter = threading.Thread(target=consume, daemon=True)
        waiter.start()  # its first claim finds nothing: the job is not committed
        time.sleep(0.2)  # let it reach its 30 s wait; correctness does not depend on it
        assert "at" not in got, "a worker must not see an uncommitted job"
        committed_at = time.monotonic()
        conn.commit()
    waiter.join(20)
    lease = got.get("lease")
    assert lease is not None and lease.id == job.id, "the committed job was never picked up"  # type: ignore[attr-defined]
    assert float(got["at"]) - committed_at < 1.0, \
        "the commit's NOTIFY must wake the waiting worker (polling was stretched to 30 s)"
    assert queue.peek_state(job.id) is JobStatus.RUNNING


def test_transaction_needs_a_psycopg_connection() -> None:
    with pytest.raises(TypeError, match="psycopg 3 Connection"):
        with nuvom_plugins_postgres.transaction(object()):  # type: ignore[arg-type]
            pass


def test_a_connection_to_another_database_is_refused_naming_both(kernel: Kernel) -> None:
    """The README says the connection must be on the queue's database, and nothing checked
    it: a push there failed as a missing ``nuvom.jobs`` blamed on storage, or, where that
    database had Nuvom's schema too, committed a job no worker of this queue ever ran."""
    other = f"nuvom_other_{os.getpid()}"
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {other}")
        admin.execute(f"CREATE DATABASE {other}")
    try:
        with psycopg.connect(make_conninfo(DSN, dbname=other)) as conn:
            with pytest.raises(nuvom_plugins_postgres.WrongDatabaseError) as info, \
                    nuvom_plugins_postgres.transaction(conn):
                send_receipt.delay(3)
            text = str(info.value)
            assert f"conn is on database {other!r}, but the queue is on " in text, text
            assert f"dbname={kernel.queue._store.database}" in text, text  # type: ignore[attr-defined]
            assert "[plugins.postgres] dsn" in text
            with pytest.raises(nuvom_plugins_postgres.WrongDatabaseError), \
                    nuvom_plugins_postgres.transaction(conn):
                send_receipt.map([(4,), (5,)])  # .map()'s path checks it as well
    finally:
        with psycopg.connect(DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {other} WITH (FORCE)")
    assert kernel.queue.qsize() == 0


@pytest.mark.parametrize("options", ["-c TimeZone=Pacific/Kiritimati", "-c DateStyle=SQL,DMY"])
def test_the_queues_database_passes_whatever_the_sessions_settings(kernel: Kernel,
                                                                    options: str) -> None:
    """The first check compared the server's start time as text, which follows the
    session's TimeZone and DateStyle: a caller's connection set otherwise (Django sets UTC)
    was refused as "another server"; a restart would have refused every caller too."""
    with psycopg.connect(DSN, options=options) as conn:
        with nuvom_plugins_postgres.transaction(conn):
            job = send_receipt.delay(8)
    assert kernel.queue.peek_state(job.id) is JobStatus.QUEUED


def test_a_connection_with_dict_rows_can_enqueue(kernel: Kernel) -> None:
    """A caller's ``row_factory=dict_row`` broke the push's unpacking (``KeyError``)."""
    with psycopg.connect(DSN, row_factory=dict_row) as conn:
        with nuvom_plugins_postgres.transaction(conn):
            one = send_receipt.delay(9)
            many = send_receipt.map([(10,), (11,)])
        assert conn.execute("SELECT 1 AS n").fetchone() == {"n": 1}, "its factory kept"
    assert {kernel.queue.peek_state(j.id) for j in [one, *many]} == {JobStatus.QUEUED}
