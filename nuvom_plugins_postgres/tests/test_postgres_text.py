"""Text a PostgreSQL column or ``jsonb`` cannot hold as it is, in records and messages.

A lone surrogate (``"a\\ud800b"``) cannot be sent as UTF-8, so a record holding one was never
stored and its job never settled; SQLite, file and Redis store it (their JSON escapes it).
A NUL is stored as ``\\u0000`` in the record's text, which ``jsonb`` refuses, so one such
record broke ``counts_since`` (and the dashboard's overview) until it was purged. Job ids,
queue and task names with either are refused at the push, naming the field. Real server,
one schema per test.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel.models import JobRecord, JobStatus, Settlement
from nuvom_kernel.testing.contracts import make_message, make_record
from nuvom_kernel.views import WorkerInfo
from nuvom_plugins_postgres import PostgresQueue, PostgresResultBackend
from nuvom_plugins_postgres.results import dumps, storable

LONE = "a\ud800b"


def _odd_record(job_id: str | None = None, **fields: Any) -> JobRecord:
    """A record with lone surrogates (and NULs) wherever user text goes: arguments, a
    kwargs key, tags, the result, the error."""
    values: dict[str, Any] = {
        "args": [LONE, {"nested": "\udfff"}, "nul\x00"], "kwargs": {LONE: "v", "k": "\ud83d"},
        "options": {"tags": [LONE]}, "result": {"r": LONE},
        "error_message": f"boom {LONE}", "traceback": "line\x00\ud800"}
    values.update(fields)
    return make_record(job_id, **values)


def _raw_data(schema: str, job_id: str) -> str:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(sql.SQL("SELECT data FROM {}.results WHERE job_id = %s").format(
            sql.Identifier(schema)), (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


# --- records: lone surrogates --------------------------------------------------------------

def test_a_record_with_lone_surrogates_round_trips_exactly(
        results: PostgresResultBackend) -> None:
    record = _odd_record()
    assert results.put(record)
    assert results.get(record.job_id) == record
    assert results.query(limit=5) == [record]
    assert results.put_many([_odd_record(), make_record()]) == [True, True]


def test_ordinary_text_stays_utf8_and_only_a_lone_surrogate_escapes(
        results: PostgresResultBackend, schema: str) -> None:
    """The usual record keeps its non-ASCII text as itself (the cheap path); only a record
    that cannot be sent as UTF-8 is written escaped, as the other backends write all."""
    plain = make_record(args=["é", "😀"])
    odd = _odd_record(args=["é", LONE])
    assert results.put_many([plain, odd]) == [True, True]
    assert '"é","😀"' in _raw_data(schema, plain.job_id)
    stored = _raw_data(schema, odd.job_id)
    assert stored.isascii() and '"\\u00e9","a\\ud800b"' in stored
    assert results.get(odd.job_id) == odd
    assert json.loads(dumps({"x": LONE})) == {"x": LONE}


@pytest.mark.parametrize("twice", [False, True], ids=["one-statement", "in-order"])
def test_a_lone_surrogate_record_settles_with_its_batch(
        queue: PostgresQueue, results: PostgresResultBackend, twice: bool) -> None:
    """Both settle paths: each job named once (one statement), or one named twice."""
    messages = [make_message() for _ in range(3)]
    queue.enqueue_many(messages)
    leases = queue.claim(3)
    records = [_odd_record(le.id, token=le.token, attempts=le.deliveries) if i == 1 else
               make_record(le.id, token=le.token, attempts=le.deliveries)
               for i, le in enumerate(leases)]
    settlements = [Settlement(le, rec) for le, rec in zip(leases, records, strict=True)]
    if twice:
        first = _odd_record(leases[1].id, token=leases[1].token,
                            attempts=leases[1].deliveries, status=JobStatus.RUNNING)
        settlements.insert(1, Settlement(leases[1], first))
    assert queue.settle_many(settlements, results) == [True] * len(settlements)
    assert queue.qsize() == 0 and all(queue.peek_state(m.id) is None for m in messages)
    assert results.get(leases[1].id) == records[1]


def test_a_heartbeat_with_a_lone_surrogate_is_stored(results: PostgresResultBackend) -> None:
    info = WorkerInfo(id="host:1:x", host="host", pid=1, queues=[LONE],
                      heartbeat_at=time.time())
    results.heartbeat(info, 30.0)
    assert [w.queues for w in results.live_workers()] == [[LONE]]


# --- counts_since: never a jsonb cast ---------------------------------------------------------

def test_a_nul_record_leaves_counts_since_working(results: PostgresResultBackend) -> None:
    """The dashboard's overview: ``data::jsonb`` raised ``UntranslatableCharacter``."""
    assert results.put_many([make_record(args=["a\x00b"]), make_record(
        status=JobStatus.FAILED, error_message="nul \x00 here")]) == [True, True]
    assert results.counts_since(0) == {"default": {"SUCCEEDED": 1, "FAILED": 1}}


def test_counts_since_counts_records_jsonb_cannot_hold(
        results: PostgresResultBackend, schema: str) -> None:
    """NUL (``\\u0000``) and lone surrogates (``\\ud800``) in arguments and errors, queue
    names that need escapes (a quote, a backslash at the end, a non-ASCII letter stored
    plain in one record and escaped in another), a ``queue`` key nested in the arguments,
    and a torn row: each counted under its record's queue, none failing the query."""
    now = time.time()
    records = [
        make_record(args=["a\x00b"]),
        make_record(status=JobStatus.FAILED, error_message="nul \x00 here"),
        _odd_record(queue="q1"),
        make_record(queue='say "hi"', kwargs={"queue": "evil", "x": {"queue": "evil"}}),
        make_record(queue="ends\\"),
        make_record(queue="ends\\", status=JobStatus.FAILED),
        make_record(queue="é"),
        _odd_record(queue="é"),  # stored as "\u00e9"
        make_record(queue="tab\there\\u"),
    ]
    assert results.put_many(records) == [True] * len(records)
    with psycopg.connect(DSN) as conn:
        conn.execute(sql.SQL(
            "INSERT INTO {}.results VALUES ('torn', 'FAILED', 't', 1, 1, true, %s, "
            "'{{\"job_id\":\"torn\",\"queue\"')").format(sql.Identifier(schema)), (now,))
    assert results.counts_since(now - 60) == {
        "default": {"SUCCEEDED": 1, "FAILED": 2},
        "q1": {"SUCCEEDED": 1},
        'say "hi"': {"SUCCEEDED": 1},
        "ends\\": {"SUCCEEDED": 1, "FAILED": 1},
        "é": {"SUCCEEDED": 2},
        "tab\there\\u": {"SUCCEEDED": 1},
    }
    assert results.counts_since(now + 60) == {}


# --- the queue: ids and names no column holds are refused, never stuck --------------------

def test_ids_no_column_holds_are_unknown_not_errors(queue: PostgresQueue,
                                                    results: PostgresResultBackend) -> None:
    """A command-line id with undecodable bytes (surrogateescape) names no job."""
    for job_id in (LONE, "nul\x00"):
        assert results.get(job_id) is None
        assert queue.peek(job_id) is None and queue.peek_state(job_id) is None
        assert queue.cancel(job_id) is False


def test_storable() -> None:
    assert storable("plain") and storable("é😀") and storable("")
    assert not storable("a\x00") and not storable(LONE) and not storable("é\udfff")
