"""A result backend call whose connection the server drops mid-statement (a restart's
``terminating connection due to administrator command``, ``pg_terminate_backend``) is run
once more on a fresh connection, as the queue's calls are (``Store.run``).

Found by a fleet hunt: ``Job.get(timeout=150)`` raised ``psycopg.errors.AdminShutdown`` at a
producer during a ``pg_ctl restart -m fast`` that was over within two seconds, and a
worker's scheduler pass logged a traceback of a raw ``OperationalError``.

How the drop is made to land mid-statement, without sleeps: another session holds an
``ACCESS EXCLUSIVE`` lock on ``results``, so the backend's statement waits for it; the
test waits until ``pg_stat_activity`` shows that wait, terminates that backend, then
releases the lock so the retried statement can run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.testing.contracts import wait_until
from nuvom_plugins_postgres import PostgresResultBackend


def _record(job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> JobRecord:
    return JobRecord(job_id=job_id, task="t", status=status, result=1, attempts=1)


def _dropped_mid_statement(schema: str, call: Callable[[], Any], table: str = "results"
                           ) -> Any:
    """Run ``call`` while its statement waits on a lock of ``table``, terminate its backend,
    release the lock, and return what ``call`` returned (or raise what it raised)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    with psycopg.connect(DSN, autocommit=True) as admin, \
            psycopg.connect(DSN, autocommit=True) as holder:
        with holder.transaction():
            holder.execute(sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(schema), sql.Identifier(table)))
            thread = threading.Thread(target=run)
            thread.start()
            waiting: list[int] = []

            def blocked() -> bool:
                waiting[:] = [pid for (pid,) in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event_type = 'Lock'", (f"nuvom {schema}",)).fetchall()]
                return len(waiting) == 1

            wait_until(blocked, 10, "the backend's statement never waited on the lock")
            admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
            wait_until(lambda: admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                (waiting[0],)).fetchone() == (0,), 10, "the backend was not terminated")
        thread.join(30)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_get_survives_a_connection_dropped_mid_statement(
        results: PostgresResultBackend, schema: str) -> None:
    results.put(_record("kept"))
    got = _dropped_mid_statement(schema, lambda: results.get("kept"))
    assert got is not None and got.status is JobStatus.SUCCEEDED


def test_put_survives_a_connection_dropped_mid_statement(
        results: PostgresResultBackend, schema: str) -> None:
    results.get("warm")  # the pool's connection exists before the lock is taken
    assert _dropped_mid_statement(schema, lambda: results.put(_record("stored"))) is True
    stored = results.get("stored")
    assert stored is not None and stored.status is JobStatus.SUCCEEDED


def test_history_survives_a_connection_dropped_mid_statement(
        results: PostgresResultBackend, schema: str) -> None:
    results.put(_record("listed", JobStatus.FAILED))
    rows = _dropped_mid_statement(schema, lambda: results.query(status=JobStatus.FAILED))
    assert [r.job_id for r in rows] == ["listed"]


@pytest.mark.parametrize(("what", "table"), [("counts", "results"),
                                           ("schedule_states", "schedules"),
                                           ("live_workers", "workers")])
def test_reads_survive_a_connection_dropped_mid_statement(
        results: PostgresResultBackend, schema: str, what: str, table: str) -> None:
    """The reads behind ``nuvom status`` and every scheduler pass (the worker's traceback)."""
    results.put(_record("counted"))
    got = _dropped_mid_statement(schema, getattr(results, what), table)
    assert got == ({"SUCCEEDED": 1} if what == "counts" else {} if what == "schedule_states"
                   else [])


def test_a_statement_that_fails_on_a_live_connection_is_not_repeated(
        results: PostgresResultBackend, caplog: pytest.LogCaptureFixture) -> None:
    """A cancelled statement (here its ``statement_timeout``), a lock timeout or a full disk
    is an ``OperationalError`` too, but not a lost connection: repeating it only doubled
    its wait, and it was logged as "connection lost"."""
    store = results._store
    calls: list[int] = []

    def slow(conn: psycopg.Connection[Any]) -> Any:
        calls.append(1)
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 50")
            return conn.execute("SELECT pg_sleep(5)").fetchone()

    with pytest.raises(psycopg.errors.QueryCanceled):
        store.run(slow)
    assert calls == [1], "a statement that failed on a live connection was run again"
    assert "connection lost" not in caplog.text


def test_a_server_that_cannot_be_reached_is_a_postgres_unavailable_error(
        settings: dict[str, object], context: Any) -> None:
    """No connection within the pool's timeout is the server being away, said as
    ``PostgresUnavailableError`` (an ``EnqueueError``: ``Job.get`` waits it out), not a
    raw ``PoolTimeout`` after a second wait of the same length."""
    from nuvom_kernel.errors import EnqueueError
    from nuvom_plugins_postgres import PostgresUnavailableError

    backend = PostgresResultBackend.from_settings(settings, context)
    store = backend._store
    try:
        store.pool.close()  # every later checkout fails at once: no connection to be had
        calls: list[int] = []
        with pytest.raises(PostgresUnavailableError) as away:
            store.run(lambda conn: calls.append(1))
        assert isinstance(away.value, EnqueueError)
        assert calls == [], "nothing ran without a connection"
    finally:
        backend.close()
