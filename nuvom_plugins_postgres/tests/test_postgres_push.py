"""A push of many messages, split into pipelined chunks, keeps the promises of one statement:
all or none (a chunk that fails after others were sent rolls them back), a job id names one
job (a repeat, in the queue or earlier in the same push, even in another chunk, is reported
``False`` and stores nothing), and a delayed message is promoted on time."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

import nuvom_plugins_postgres.push
from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_postgres import PostgresQueue


@pytest.fixture(params=["pipeline", "no pipeline", "on conflict"])
def chunked(queue: PostgresQueue, request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> PostgresQueue:
    """Small chunks, so a ten-message push spans four statements; with pipeline mode, and
    as with a libpq older than 14 (no pipeline mode: the chunks run one after another),
    both with ``PUSH_NEW``; and with ``PUSH`` (``ON CONFLICT``), as a small push goes."""
    queue.push_chunk = 3
    queue.small_push = 1000 if request.param == "on conflict" else 0
    if request.param == "no pipeline":
        monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    return queue


def test_a_chunked_push_stores_every_message_in_order(chunked: PostgresQueue) -> None:
    messages = [make_message() for _ in range(10)]
    assert chunked.push(messages) == [True] * 10
    assert chunked.qsize() == 10
    assert [le.id for le in chunked.claim(10)] == [m.id for m in messages]


def test_repeats_across_and_within_chunks_are_reported_and_not_stored(
        chunked: PostgresQueue) -> None:
    old = make_message()
    assert chunked.push([old]) == [True]
    a, b, c = make_message(), make_message(), make_message()
    # a repeat of ``a`` in the same chunk, of ``b`` in a later chunk, and an id already queued
    batch = [a, a, old, b, c, make_message(job_id=b.id), make_message(job_id=a.id)]
    assert chunked.push(batch) == [True, False, False, True, True, False, False]
    assert chunked.qsize() == 4
    assert chunked.push([a, b, c]) == [False, False, False]


def test_a_server_error_in_a_later_chunk_stores_nothing(
        chunked: PostgresQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [make_message() for _ in range(8)]
    # The push refuses such a priority itself (test_postgres_limits.py); without that check
    # it reaches the server, which refuses it after earlier chunks were sent.
    monkeypatch.setattr(nuvom_plugins_postgres.push, "PRIORITY_MAX", 2**62)
    bad = make_message(priority=2**40)  # no PostgreSQL integer holds it: the server refuses
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        chunked.push([*messages, bad])
    assert chunked.qsize() == 0
    assert chunked.push(messages) == [True] * 8  # the pool's connection is usable again


def test_an_encoding_error_in_a_later_chunk_stores_nothing(
        chunked: PostgresQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [make_message() for _ in range(8)]
    # The push refuses a lone surrogate itself (test_postgres_limits.py); without that check
    # psycopg fails to encode it after earlier chunks were sent.
    monkeypatch.setattr(nuvom_plugins_postgres.push, "storable", lambda text: True)
    bad = make_message(job_id="lone \ud800")  # psycopg cannot encode it: the chunk is not sent
    with pytest.raises(UnicodeEncodeError):
        chunked.push([*messages, bad])
    assert chunked.qsize() == 0
    assert chunked.push(messages) == [True] * 8


def test_a_delayed_message_in_a_chunked_push_comes_due_on_time(
        chunked: PostgresQueue) -> None:
    now = time.time()
    ready = [make_message() for _ in range(5)]
    later = make_message(available_at=now + 1.0)
    assert chunked.push([*ready, later]) == [True] * 6
    claimed = {le.id for le in chunked.claim(10)}
    if time.time() >= later.available_at:  # the machine stalled past the delay: due now
        assert claimed == {m.id for m in [*ready, later]}
        return
    assert claimed == {m.id for m in ready}
    got = chunked.pop_batch(1, timeout=5.0)  # the tick promotes it when due, no polling
    assert [le.id for le in got] == [later.id]
    assert time.time() >= later.available_at


def test_an_id_committed_by_another_push_meanwhile_is_reported_not_new(
        chunked: PostgresQueue, caplog: pytest.LogCaptureFixture) -> None:
    """The race ``queries.PUSH_NEW`` loses: another transaction inserted the id after the
    probe could see it. The push waits for that transaction, fails on the primary key, and
    runs again with ``ON CONFLICT DO NOTHING``: the id is reported ``False``, stored once."""
    from pg_support import DSN

    import nuvom_plugins_postgres

    a, x, b = make_message(), make_message(), make_message()
    caplog.set_level(logging.DEBUG, logger="nuvom.postgres")
    other = psycopg.connect(DSN)  # not autocommit: its insert stays uncommitted
    try:
        with nuvom_plugins_postgres.transaction(other):
            assert chunked.push([x]) == [True]
        result: dict[str, object] = {}
        pusher = threading.Thread(target=lambda: result.update(
            stored=chunked.push([a, make_message(), x, b])))
        pusher.start()
        deadline = time.monotonic() + 10.0
        with psycopg.connect(DSN, autocommit=True) as watch:
            while not watch.execute(  # our push waits on the other's uncommitted row
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s", (f"%{chunked.schema}%",)).fetchone():
                assert time.monotonic() < deadline, "the push never waited on the other"
        other.commit()
        pusher.join(10.0)
        assert result["stored"] == [True, True, False, True]
        assert chunked.qsize() == 4
        if not chunked.small_push:  # PUSH_NEW: the race was really run
            assert "pushing again with ON CONFLICT" in caplog.text
    finally:
        other.close()


def test_uniform_and_mixed_chunks_store_every_field(chunked: PostgresQueue) -> None:
    """A chunk whose messages share queue, priority, delay and task sends those once
    (``queries.PUSH_UNIFORM``); a mixed one sends every column. Both store each field."""
    due = time.time() - 1.0  # due already: claimable at once, but not 0
    uniform = [make_message(queue="q1", priority=3, available_at=due, task="t.same")
               for _ in range(3)]
    mixed = [make_message(queue=f"q{i}", priority=i, task=f"t.{i}") for i in range(3)]
    sent = [*uniform, *mixed]
    assert chunked.push(sent) == [True] * 6
    got = {le.id: le.message for le in chunked.claim(10)}
    for m in sent:
        g = got[m.id]
        assert (g.body, g.queue, g.priority, g.task) == (m.body, m.queue, m.priority, m.task)
        # the times are stored on the server's clock (queries.PUSH): this host's, within
        # the offset estimated when the store opened
        assert g.available_at == pytest.approx(m.available_at, abs=0.01)
        assert g.created_at == pytest.approx(m.created_at, abs=0.01)


def _seq_scans(queue: PostgresQueue, schema: str) -> int:
    """Sequential scans of the jobs table so far, as the server counts them: this backend's
    counts are flushed first (PostgreSQL 15 flushes them at most once a second)."""
    def read(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")  # the flush happens as the backend goes idle
        row = conn.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = %s "
                           "AND relname = 'jobs'", (schema,)).fetchone()
        assert row is not None
        return int(row[0])

    return queue._run(read)


def test_a_push_into_a_vacuumed_empty_table_probes_by_index(
        settings: dict[str, object], context: BackendContext, schema: str) -> None:
    """A drained queue's table, vacuumed, is empty to the planner, which made each row's
    duplicate probe in ``PUSH_NEW`` a sequential scan of every row the push had stored so
    far: a push of 10,000 took 291 µs a job instead of 9.5. Counted here, not timed: a
    push of 2,500 must not start a scan per row."""
    queue = PostgresQueue.from_settings({**settings, "pool_size": 1}, context)
    try:
        with psycopg.connect(str(settings["dsn"]), autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM ANALYZE {}.jobs").format(sql.Identifier(schema)))
        before = _seq_scans(queue, schema)
        assert queue.push([make_message() for _ in range(2500)]) == [True] * 2500
        assert _seq_scans(queue, schema) - before < 10, "a probe per row scanned the table"
    finally:
        queue.close()
