"""Concurrency limits (``@task(concurrency=N)``) on PostgreSQL, beyond the shared contract:
racing processes, the per-task advisory lock a claim waits for (and the one it does not wait
for), what a held-back job looks like to every reader, an expired lease, and a claim that
must reach past 100,000 held-back jobs (see ``nuvom_plugins_postgres.limits``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
from pg_support import DSN, ids_of, messages_of
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts._support import wait_until
from nuvom_plugins_postgres import PostgresQueue
from nuvom_plugins_postgres.limits import lock_key
from nuvom_plugins_postgres.schema import ADVISORY_CLASS

LIMITED = "tests.pg_limited"
OTHER = "tests.pg_other_limited"
FREE = "tests.pg_free"
CLAIMER = Path(__file__).with_name("pg_limit_claimer.py")





def _claim_in_thread(queue: PostgresQueue, n: int) -> tuple[threading.Thread, dict[str, object]]:
    done: dict[str, object] = {}

    def claim() -> None:
        try:
            done["leases"] = queue.claim(n)
        except BaseException as exc:  # reported by the test, not lost in the thread
            done["error"] = exc

    thread = threading.Thread(target=claim, daemon=True)
    thread.start()
    return thread, done


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``proc`` prints, or ``""`` if none came within ``timeout`` (a process
    stuck before it could say anything must fail the test, not hang it)."""
    got: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else ""


def _waiting_for_advisory_lock(admin: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND classid = %s", (ADVISORY_CLASS,)).fetchone()
    return bool(row and row[0])


# --- racing processes ---------------------------------------------------------------------

def test_racing_processes_never_exceed_the_limit_and_run_every_job_once(
        context: BackendContext, schema: str, queue: PostgresQueue,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    """Six processes, each with its own pool, claim 3 at a time from 60 jobs of a task
    limited to 2 and 60 others: no snapshot of the database (each process's after every
    claim, and a watcher's all along) ever shows more than 2 live leases of the task."""
    jobs = [m for pair in zip(messages_of(LIMITED, 60), messages_of(FREE, 60), strict=True)
            for m in pair]
    queue.push(jobs)
    procs = [subprocess.Popen([sys.executable, str(CLAIMER), DSN, context.namespace,
                               LIMITED, "2", "3"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    watched = {"most": 0}
    stop = threading.Event()
    count = sql.SQL("SELECT count(*) FROM {}.jobs WHERE task = %s AND state = 2 "
                    "AND lease_expires_at > clock_timestamp()").format(sql.Identifier(schema))

    def watch() -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(count, (LIMITED,)).fetchone()
                watched["most"] = max(watched["most"], int(row[0]) if row else 0)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        for proc in procs:
            assert _line(proc, 30).strip() == "ready", "a claiming process did not start"
        watcher.start()
        for proc in procs:  # all set up and waiting: start them together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.communicate(timeout=90)[0]) for proc in procs]
    finally:
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    watcher.join(10)
    claimed = [job_id for report in reports for job_id in report["claimed"]]
    assert sorted(claimed) == sorted(m.id for m in jobs), "every job claimed exactly once"
    most = max(report["most_live"] for report in reports)
    assert most <= 2 and watched["most"] <= 2, \
        f"{max(most, watched['most'])} live leases of a task limited to 2"
    assert most >= 1 and queue.qsize() == 0


# --- the per-task lock --------------------------------------------------------------------

def test_a_claim_waits_for_the_tasks_lock_and_counts_what_its_holder_leased(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    """Another claim holds the task's lock and has leased its one allowed job, not yet
    committed: this claim must wait for it, then count that lease and lease nothing more.
    A claim that counted before the other committed would lease a second one."""
    limited = messages_of(LIMITED, 3)
    queue.push(limited)
    queue.set_concurrency_limits({LIMITED: 1})
    with psycopg.connect(DSN) as holder:  # a transaction, as a racing claim's
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       (ADVISORY_CLASS, lock_key(schema, LIMITED)))
        holder.execute(sql.SQL(
            "UPDATE {}.jobs SET state = 2, token = 'theirs', deliveries = 1, "
            "lease_expires_at = clock_timestamp() + interval '1 minute' WHERE id = %s"
        ).format(sql.Identifier(schema)), (limited[0].id,))
        thread, done = _claim_in_thread(queue, 3)
        wait_until(lambda: _waiting_for_advisory_lock(admin), 10,
                   "the claim never waited for the task's lock")
        assert not done, "the claim went on without the task's lock"
        holder.commit()
    thread.join(10)
    assert done.get("leases") == [], f"a second lease under a limit of 1: {done}"
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 2)}


def test_a_later_round_skips_a_task_whose_lock_is_held_instead_of_waiting(
        queue: PostgresQueue, schema: str) -> None:
    """claim(3) over A A A B B F, both limited to 1: the first round takes A's lock, leases
    one A and drops two; the next round meets B. Waiting for B's lock while holding A's
    could deadlock, so a held B is left out of this claim (which takes F instead), and the
    next claim leases it."""
    a, b, free = messages_of(LIMITED, 3), messages_of(OTHER, 2), messages_of(FREE, 1)
    queue.push([*a, *b, *free])
    queue.set_concurrency_limits({LIMITED: 1, OTHER: 1})
    with psycopg.connect(DSN) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       (ADVISORY_CLASS, lock_key(schema, OTHER)))
        thread, done = _claim_in_thread(queue, 3)
        thread.join(10)
        assert not thread.is_alive(), "the claim waited for a lock in a later round"
        holder.rollback()
    assert "error" not in done, done
    assert sorted(ids_of(done["leases"])) == sorted([a[0].id, free[0].id])  # type: ignore[arg-type]
    assert ids_of(queue.claim(3)) == [b[0].id], "with B's lock free, B's first job comes next"


def test_rounds_hand_out_the_room_of_several_limited_tasks_in_claim_order(
        queue: PostgresQueue) -> None:
    a, b, free = messages_of(LIMITED, 3), messages_of(OTHER, 3), messages_of(FREE, 2)
    queue.push([*a, *b, *free])
    queue.set_concurrency_limits({LIMITED: 1, OTHER: 2})
    got = queue.claim(10)
    assert ids_of(got) == [a[0].id, b[0].id, b[1].id, free[0].id, free[1].id]
    assert all(le.deliveries == 1 for le in got)
    assert queue.claim(10) == []
    assert queue.task_counts([LIMITED, OTHER, FREE]) == {
        LIMITED: (1, 2), OTHER: (2, 1), FREE: (2, 0)}


def test_the_lock_key_is_the_same_in_every_process_and_per_schema() -> None:
    """Workers on other hosts (and other versions of this plugin, in a rolling upgrade)
    must lock the same key for a task, whatever their ``PYTHONHASHSEED``."""
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from nuvom_plugins_postgres.limits import lock_key; "
         "print(lock_key('nuvom', 'tasks.crawl'))"],
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, capture_output=True, text=True,
        check=True)
    assert int(elsewhere.stdout) == lock_key("nuvom", "tasks.crawl") == -295553920
    assert lock_key("nuvom_other", "tasks.crawl") != lock_key("nuvom", "tasks.crawl")
    assert -2**31 <= lock_key("s", "\ud800") < 2**31  # any task name has one


# --- what a held-back job looks like --------------------------------------------------------

def test_a_held_back_job_is_queued_browsed_counted_and_cancellable(
        queue: PostgresQueue) -> None:
    first, held = messages_of(LIMITED, 2)
    queue.push([first, held])
    queue.set_concurrency_limits({LIMITED: 1})
    [lease] = queue.claim(5)
    assert lease.id == first.id and queue.claim(5) == []
    assert queue.peek_state(held.id) is JobStatus.QUEUED
    listed = {job.id: job for job in queue.browse()}
    assert listed[held.id].state is JobStatus.QUEUED and listed[held.id].deliveries == 0
    assert listed[first.id].state is JobStatus.RUNNING
    counts = queue.stats().queues[held.queue]
    assert (counts.ready, counts.running, counts.delayed) == (1, 1, 0)
    assert queue.qsize() == 1
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 1)}
    assert queue.cancel(held.id) is True
    assert queue.ack(lease) is True
    assert queue.claim(5) == [] and queue.qsize() == 0


def test_an_expired_lease_frees_room_before_and_after_the_tick_recovers_it(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    first, second = messages_of(LIMITED, 2)
    queue.push([first, second])
    queue.set_concurrency_limits({LIMITED: 1})
    [old] = queue.claim(5)
    admin.execute(sql.SQL("UPDATE {}.jobs SET lease_expires_at = clock_timestamp() - "
                          "interval '1 second' WHERE id = %s").format(sql.Identifier(schema)),
                  (old.id,))
    assert queue.task_counts([LIMITED]) == {LIMITED: (0, 2)}, "an expired lease is no lease"
    [new] = queue.claim(5)  # the expired row is not recovered yet: the next one
    assert new.id == second.id
    assert queue.tick() == 1  # recovers the expired lease: ready again, and held back
    assert queue.claim(5) == []
    assert queue.peek_state(first.id) is JobStatus.QUEUED
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 1)}
    assert queue.ack(new) is True
    [again] = queue.claim(5)
    assert again.id == first.id and again.deliveries == 2


def test_limits_hold_with_synchronous_lease_commits(
        settings: dict[str, object], context: BackendContext, schema: str) -> None:
    """The claim's first statement sets its transaction's options; with
    ``sync_lease_commits`` it leaves ``synchronous_commit`` alone."""
    queue = PostgresQueue.from_settings({**settings, "sync_lease_commits": True}, context)
    try:
        queue.push(messages_of(LIMITED, 2))
        queue.set_concurrency_limits({LIMITED: 1})
        assert len(queue.claim(5)) == 1 and queue.claim(5) == []
    finally:
        queue.close()


# --- a large backlog ------------------------------------------------------------------------

def test_a_claim_reaches_past_100000_held_back_jobs_and_only_parks_them(
        queue: PostgresQueue, schema: str,
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    for _ in range(10):
        queue.push(messages_of(LIMITED, 10_000))
    behind = messages_of(FREE, 2)
    queue.push(behind)
    queue.set_concurrency_limits({LIMITED: 1})
    [first] = queue.claim(1)
    assert first.message.task == LIMITED
    assert ids_of(queue.claim(1)) == [behind[0].id], "the claim stopped short of the free job"
    assert ids_of(queue.claim(5)) == [behind[1].id]
    assert queue.claim(5) == []
    touched = admin.execute(sql.SQL(
        "SELECT count(*) FILTER (WHERE state NOT IN (0, 3) OR deliveries > 0 "
        "OR token IS NOT NULL), count(*) FROM {}.jobs WHERE task = %s").format(
            sql.Identifier(schema)), (LIMITED,)).fetchone()
    assert touched == (1, 100_000), "held-back jobs were written beyond their state"
    assert queue.task_counts([LIMITED]) == {LIMITED: (1, 99_999)}
