"""Held rows (state 3, schema v6) on the real server: a limited claim parks the ready rows of
a task without room out of the claim-order index, and every reader still takes them for
waiting jobs; claim order is kept when room comes back; a claimer without that limit takes
them as ready; and an idle limited claim no longer walks a saturated task's backlog."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from pg_support import ids_of, messages_of, schema_at_version
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import JobStatus
from nuvom_plugins_postgres import PostgresQueue
from nuvom_plugins_postgres.limits import PARK_BUDGET
from nuvom_plugins_postgres.schema import SCHEMA_VERSION

LIMITED = "tests.pg_park_limited"
FREE = "tests.pg_park_free"





def _states(admin: psycopg.Connection[tuple[object, ...]], schema: str, task: str
            ) -> dict[int, int]:
    rows = admin.execute(sql.SQL("SELECT state, count(*) FROM {}.jobs WHERE task = %s "
                                 "GROUP BY state").format(sql.Identifier(schema)),
                         (task,)).fetchall()
    return {int(s): int(n) for s, n in rows}  # type: ignore[call-overload]


def _state_of(admin: psycopg.Connection[tuple[object, ...]], schema: str, job_id: str
              ) -> int | None:
    row = admin.execute(sql.SQL("SELECT state FROM {}.jobs WHERE id = %s").format(
        sql.Identifier(schema)), (job_id,)).fetchone()
    return None if row is None else int(row[0])  # type: ignore[call-overload]


def _other(settings: dict[str, object], context: BackendContext) -> PostgresQueue:
    """A second worker's queue on the same schema (its own pool)."""
    return PostgresQueue.from_settings(settings, context)


def test_parked_rows_are_queued_browsed_counted_cancellable_and_cleared(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    jobs = messages_of(LIMITED, 5)
    queue.push(jobs)
    queue.set_concurrency_limits({LIMITED: 1})
    [lease] = queue.claim(5)
    assert lease.id == jobs[0].id
    assert queue.claim(5) == []  # the task is full: its ready rows are parked
    assert _states(admin, schema, LIMITED) == {2: 1, 3: 4}
    held = jobs[1]
    assert queue.peek_state(held.id) is JobStatus.QUEUED
    peeked = queue.peek(held.id)
    assert peeked is not None and peeked.body == held.body
    listed = {job.id: job for job in queue.browse()}
    assert all(listed[m.id].state is JobStatus.QUEUED and listed[m.id].deliveries == 0
               for m in jobs[1:])
    assert [j.id for j in queue.browse(states={JobStatus.QUEUED})] == \
        [m.id for m in sorted(jobs[1:], key=lambda m: (m.created_at, m.id))]
    counts = queue.stats().queues[held.queue]
    assert (counts.ready, counts.running, counts.delayed) == (4, 1, 0)
    assert counts.oldest_ready_age_secs is not None and counts.oldest_ready_age_secs >= 0
    assert queue.qsize() == 4 and queue.qsize([held.queue]) == 4
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 4)}
    assert queue.push([held]) == [False], "a push of a parked id changes nothing"
    assert _state_of(admin, schema, held.id) == 3
    assert queue.tick() == 0 and _state_of(admin, schema, held.id) == 3
    assert queue.cancel(held.id) is True and queue.peek_state(held.id) is None
    assert queue.clear([held.queue]) == 4  # three parked and the lease
    assert queue.qsize() == 0 and _states(admin, schema, LIMITED) == {}


def test_claim_order_is_kept_when_room_comes_back(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    first = messages_of(LIMITED, 4)
    free = messages_of(FREE, 1)
    queue.push(first + free)
    queue.set_concurrency_limits({LIMITED: 1})
    [a] = queue.claim(1)
    assert a.id == first[0].id
    assert ids_of(queue.claim(5)) == [free[0].id]  # and parks first[1:]
    assert _states(admin, schema, LIMITED) == {2: 1, 3: 3}
    later = messages_of(LIMITED, 1)  # same priority, pushed after: behind the parked ones
    queue.push(later)
    assert queue.claim(5) == []
    assert queue.ack(a)
    [b] = queue.claim(5)  # room for one: the first parked, not the newer ready row
    assert b.id == first[1].id and b.deliveries == 1
    urgent = messages_of(LIMITED, 1, priority=9)  # ahead of every parked row
    queue.push(urgent)
    assert queue.ack(b)
    assert ids_of(queue.claim(5)) == [urgent[0].id]
    assert queue.ack_many(queue.claim(5)) == []  # full again
    queue.set_concurrency_limits({LIMITED: 3})
    got = queue.claim(5)
    assert ids_of(got) == [first[2].id, first[3].id], "room of 2, in claim order"
    assert queue.ack_many(got) == [True, True]
    rest = queue.claim(5)
    assert ids_of(rest) == [later[0].id] and _states(admin, schema, LIMITED) == {2: 2}


def test_a_claimer_without_the_limit_takes_parked_rows_as_ready(
        queue: PostgresQueue, schema: str, settings: dict[str, object],
        context: BackendContext, admin: psycopg.Connection[tuple[object, ...]]) -> None:
    jobs = messages_of(LIMITED, 6)
    elsewhere = messages_of(LIMITED, 2, queue="elsewhere")
    queue.push(jobs + elsewhere)
    queue.set_concurrency_limits({LIMITED: 1})
    assert len(queue.claim(1)) == 1 and queue.claim(5) == []
    assert _states(admin, schema, LIMITED) == {2: 1, 3: 7}
    plain = _other(settings, context)
    other_limits = _other(settings, context)
    try:
        assert plain.claim(2, ["nothing-here"]) == []
        got = plain.claim(2, [jobs[0].queue])
        assert ids_of(got) == [jobs[1].id, jobs[2].id] and [le.deliveries for le in got] == [1, 1]
        assert _state_of(admin, schema, jobs[1].id) == 2
        assert ids_of(plain.claim(1)) == [jobs[3].id]
        other_limits.set_concurrency_limits({FREE: 1})  # no limit for LIMITED here
        assert ids_of(other_limits.claim(2)) == [jobs[4].id, jobs[5].id]
        assert sorted(ids_of(plain.claim(5))) == sorted(m.id for m in elsewhere)
        assert _states(admin, schema, LIMITED) == {2: 8}
    finally:
        plain.close()
        other_limits.close()


def test_parking_is_bounded_per_claim_and_ends_the_idle_walk(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    """Behind 20,000 held-back jobs: each claim parks at most ``PARK_BUDGET`` of them, and
    once they are parked (and vacuum has removed their old index entries) a claim reads a
    handful of index entries, not 20,000. The code before parking left every one of them
    in state 0 (in ``jobs_ready``), walked by every claim."""
    total = 20_000
    for _ in range(total // 10_000):
        queue.push(messages_of(LIMITED, 10_000))
    queue.set_concurrency_limits({LIMITED: 1})
    assert len(queue.claim(1)) == 1
    assert queue.claim(1) == []
    assert _states(admin, schema, LIMITED) == {2: 1, 3: PARK_BUDGET, 0: total - 1 - PARK_BUDGET}
    for _ in range(total // PARK_BUDGET + 1):
        assert queue.claim(1) == []
    assert _states(admin, schema, LIMITED) == {2: 1, 3: total - 1}
    admin.execute(sql.SQL("VACUUM {}.jobs").format(sql.Identifier(schema)))
    free = messages_of(FREE, 1)
    queue.push(free)
    assert ids_of(queue.claim(1)) == [free[0].id]
    plan = _explain_candidates(queue, admin)
    # the walk of the claim-order index, and the whole statement
    assert plan["ready_rows_read"] <= 5, plan
    assert plan["buffers"] < 100, plan


def _explain_candidates(queue: PostgresQueue, admin: psycopg.Connection[tuple[object, ...]]
                        ) -> dict[str, int]:
    """The limited claim's candidates statement, as a claim in front of the parked backlog
    runs it, under ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` in a rolled-back
    transaction: rows the ``jobs_ready`` scans returned or filtered out, and the
    statement's shared buffers."""
    from nuvom_plugins_postgres.limits import IDLE_IN_CLAIM_MS

    lq = queue._lq
    found: dict[str, int] = {"ready_rows_read": 0, "buffers": 0}

    def walk(node: dict[str, object]) -> None:
        if node.get("Index Name") == "jobs_ready":
            found["ready_rows_read"] += int(node.get("Actual Rows", 0)) + int(  # type: ignore[call-overload]
                node.get("Rows Removed by Filter", 0))  # type: ignore[call-overload]
        for child in node.get("Plans", []):  # type: ignore[union-attr]
            walk(child)

    with admin.transaction(force_rollback=True):
        admin.execute(lq.settings, (str(IDLE_IN_CLAIM_MS),))
        row = admin.execute(b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + lq.candidates[False],
                            {"tasks": [LIMITED], "caps": [1], "out": [], "chosen": [], "n": 1,
                             "park": PARK_BUDGET}).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]  # type: ignore[index]
    walk(plan)
    found["buffers"] = int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])
    return found


# --- the migration ---------------------------------------------------------------------------


def test_a_v5_schema_holding_rows_is_migrated_and_parks(
        admin: psycopg.Connection[tuple[object, ...]], schema: str,
        settings: dict[str, object], context: BackendContext) -> None:
    assert SCHEMA_VERSION == 7
    schema_at_version(admin, schema, 5)
    now = time.time()
    insert = sql.SQL(
        "INSERT INTO {}.jobs (id, queue, state, priority, created_at, available_at, task, "
        "body, token, lease_expires_at) VALUES (%s, 'default', %s, 0, %s, %s, %s, '\\x00', "
        "%s, %s)").format(sql.Identifier(schema))
    admin.execute(insert, ("running", 2, now, now, LIMITED, "tok",  # the old version's lease
                           datetime.now(timezone.utc) + timedelta(hours=1)))
    for i in range(3):
        admin.execute(insert, (f"waiting-{i}", 0, now + i, now + i, LIMITED, None, None))
    with pytest.raises(psycopg.errors.CheckViolation):  # v5 knows no state 3
        admin.execute(sql.SQL("UPDATE {}.jobs SET state = 3 WHERE id = 'waiting-0'").format(
            sql.Identifier(schema)))
    queue = PostgresQueue.from_settings(settings, context)
    try:
        version = admin.execute(sql.SQL("SELECT max(version) FROM {}.version").format(
            sql.Identifier(schema))).fetchone()
        assert version is not None and version[0] == 7
        index = admin.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'jobs_held'",
            (schema,)).fetchone()
        assert index is not None and "WHERE (state = 3)" in str(index[0])
        queue.set_concurrency_limits({LIMITED: 1})
        assert queue.claim(5) == []  # the old lease fills the limit: its rows are parked
        assert _states(admin, schema, LIMITED) == {2: 1, 3: 3}
        assert queue.qsize() == 3 and queue.peek_state("waiting-0") is JobStatus.QUEUED
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_state_valid"):
            admin.execute(sql.SQL("UPDATE {}.jobs SET state = 4 WHERE id = 'waiting-0'")
                          .format(sql.Identifier(schema)))
        admin.execute(sql.SQL("DELETE FROM {}.jobs WHERE id = 'running'").format(
            sql.Identifier(schema)))
        assert ids_of(queue.claim(5)) == ["waiting-0"]
    finally:
        queue.close()
