"""``browse`` past the contract: what only the table shows. The cursor compares the stored
float8 exactly (neighbouring floats and ties page once each), states are read on the
server's clock before any tick has moved a row (and browsing moves none), and rows no push
writes (a hand-edited ``NaN`` or infinite ``created_at``) are listed, not fatal. Real
server, one schema per test; rows are edited with SQL to reach states a push cannot."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest
from pg_support import DSN
from psycopg import sql

from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_postgres import PostgresQueue


def _edit(schema: str, assignment: str, job_id: str, *params: Any) -> None:
    """``UPDATE jobs SET <assignment> WHERE id = job_id``, as an operator's hand edit."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        changed = conn.execute(sql.SQL("UPDATE {}.jobs SET " + assignment + " WHERE id = %s")
                               .format(sql.Identifier(schema)), (*params, job_id)).rowcount
    assert changed == 1


def _stored_state(schema: str, job_id: str) -> int:
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT state FROM {}.jobs WHERE id = %s").format(
            sql.Identifier(schema)), (job_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _ids_paged(queue: PostgresQueue, limit: int) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = queue.browse(after=after, limit=limit)
        ids += [j.id for j in page]
        if len(page) < limit:
            return ids
        after = page[-1].cursor


def test_the_cursor_compares_created_at_exactly(queue: PostgresQueue, schema: str) -> None:
    """Neighbouring float8 values (one ulp apart, ~2e-7 s here) and exact ties: a cursor
    rounded anywhere (to microseconds, to text of fewer digits) would merge neighbours into
    ties and lose or repeat a row at a page boundary."""
    x = 1_700_000_000.123456
    up = math.nextafter(x, math.inf)
    at = {"b": x, "a": up, "c": up, "d": math.nextafter(up, math.inf), "e": x,
          "f": math.nextafter(x, -math.inf)}
    queue.enqueue_many([make_message(job_id) for job_id in at])
    for job_id, created_at in at.items():
        _edit(schema, "created_at = %s", job_id, created_at)
    want = sorted(at, key=lambda i: (at[i], i))
    assert want == ["f", "b", "e", "a", "c", "d"]
    for limit in (1, 2, 3, 4, 6):
        assert _ids_paged(queue, limit) == want, f"pages of {limit}"
    assert {j.id: j.created_at for j in queue.browse()} == at, "created_at as stored"


def test_states_are_the_servers_before_any_tick(queue: PostgresQueue, schema: str) -> None:
    """A lease past its deadline and a retry past its due time, neither moved by a tick
    yet: QUEUED, as ``peek_state`` says, and browsing moves neither row."""
    held, due, waiting = (make_message(created_at=1_700_000_000.0 + i) for i in range(3))
    queue.enqueue_many([held, due, waiting])
    leases = {le.id: le for le in queue.claim(3)}
    assert queue.retry(leases[due.id], delay_secs=600.0)
    assert queue.retry(leases[waiting.id], delay_secs=600.0)
    running = queue.browse(states={JobStatus.RUNNING})
    assert [j.id for j in running] == [held.id]
    assert running[0].lease_expires_at == pytest.approx(leases[held.id].expires_at, abs=1e-3)
    _edit(schema, "lease_expires_at = clock_timestamp() - interval '1 second'", held.id)
    _edit(schema, "due_at = clock_timestamp() - interval '1 second'", due.id)

    jobs = {j.id: j for j in queue.browse()}
    assert (jobs[held.id].state, jobs[held.id].deliveries, jobs[held.id].lease_expires_at) \
        == (JobStatus.QUEUED, 1, None), "an expired lease waits again"
    assert (jobs[due.id].state, jobs[due.id].failures) == (JobStatus.QUEUED, 1), \
        "a retry past its due time is ready, promoted or not"
    assert jobs[waiting.id].state is JobStatus.RETRYING
    for job in jobs.values():
        assert queue.peek_state(job.id) is job.state, "browse and peek_state agree"
    assert queue.browse(states={JobStatus.RUNNING}) == []
    assert [j.id for j in queue.browse(states={JobStatus.RETRYING})] == [waiting.id]
    assert [_stored_state(schema, i) for i in (held.id, due.id)] == [2, 1], \
        "browsing recovered and promoted nothing: that is the tick's work"


def test_non_finite_created_at_is_listed_and_paged_past(queue: PostgresQueue,
                                                        schema: str) -> None:
    """No push stores these, a hand edit can: PostgreSQL sorts ``NaN`` after every number
    and equal to itself, and the cursor ``'nan|<id>'`` pages on among such rows."""
    sent = [make_message(job_id) for job_id in ("m1", "m2", "n1", "n2", "lo")]
    queue.enqueue_many(sent)
    _edit(schema, "created_at = 'NaN'", "n2")
    _edit(schema, "created_at = 'NaN'", "n1")
    _edit(schema, "created_at = '-Infinity'", "lo")
    for limit in (1, 2, 5):
        assert _ids_paged(queue, limit) == ["lo", "m1", "m2", "n1", "n2"], f"pages of {limit}"


@pytest.mark.parametrize("cursor", ["1.5|bad\x00id", "1.5|\ud800", "1.5", "x|id"])
def test_a_cursor_no_browse_returns_is_refused(queue: PostgresQueue, cursor: str) -> None:
    """Including ids psycopg could not send (a NUL, a lone surrogate): ``ValueError``, not
    a driver error."""
    with pytest.raises(ValueError, match="cursor"):
        queue.browse(after=cursor)
