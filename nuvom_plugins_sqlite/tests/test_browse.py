"""``SQLiteJobQueue.browse`` where the shared contract cannot look: rows that break the
schema, ``created_at`` values the file stores as integers, and rows of this file that are not
queued messages (workflow steps waiting for their parents)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlite_helpers import msg

from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob
from nuvom_kernel.workflow.graph import Flow, Node, create
from nuvom_plugins_sqlite import SQLiteJobQueue


def _pages(queue: SQLiteJobQueue, limit: int) -> list[list[QueuedJob]]:
    """Every page, each after the last one's last job, until a short one."""
    pages: list[list[QueuedJob]] = []
    after: str | None = None
    while not pages or len(pages[-1]) == limit:
        assert len(pages) < 100, "browse does not page on"
        pages.append(queue.browse(after=after, limit=limit))
        after = pages[-1][-1].cursor if pages[-1] else None
    return pages


def _corrupt(db_path: Path, sql: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA ignore_check_constraints = ON")  # what a careless tool can do
    conn.execute(sql)
    conn.commit()
    conn.close()


def test_rows_that_break_the_schema_are_skipped_and_pages_stay_full(
        queue: SQLiteJobQueue) -> None:
    """A damaged row is neither listed nor decoded, a page holding one is still full (a
    short page would end the caller's paging early), and browse moves nothing: the next
    claim quarantines the rows, as without browse."""
    base = time.time() - 100.0
    queue.enqueue_many([msg(f"j{i}", created_at=base + i) for i in range(8)])
    _corrupt(queue.path, "UPDATE nuvom_queue SET body = 'text' WHERE id = 'j1'")
    _corrupt(queue.path, "UPDATE nuvom_queue SET priority = 'high' WHERE id = 'j2'")
    # a created_at that is no number sorts after every number in SQLite: the last page
    _corrupt(queue.path, "UPDATE nuvom_queue SET created_at = 'soon' WHERE id = 'j5'")
    pages = _pages(queue, 2)
    assert [[j.id for j in page] for page in pages] == \
        [["j0", "j3"], ["j4", "j6"], ["j7"]]
    assert [j.id for j in queue.browse(states={JobStatus.QUEUED}, limit=100)] == \
        ["j0", "j3", "j4", "j6", "j7"]
    conn = sqlite3.connect(queue.path)
    assert conn.execute("SELECT count(*) FROM nuvom_queue").fetchone()[0] == 8
    conn.close()
    assert len(queue.stats().quarantined) == 3  # stats sweeps them aside, as it always did
    assert [j.id for j in queue.browse(limit=3)] == ["j0", "j3", "j4"]


def test_ties_and_integral_created_at_page_exactly_once(queue: SQLiteJobQueue) -> None:
    """Ten messages with one ``created_at`` that is a whole number (stored as an integer in
    the REAL column): every page boundary falls inside the tie and the cursor's float binds
    back equal to it, so each message is listed once, by id."""
    at = float(int(time.time()) - 100)
    ids = [f"tie-{i}" for i in (3, 7, 0, 9, 1, 8, 2, 6, 4, 5)]
    queue.enqueue_many([msg(job_id, created_at=at) for job_id in ids])
    conn = sqlite3.connect(queue.path)
    assert {t for (t,) in conn.execute("SELECT typeof(created_at) FROM nuvom_queue")} == \
        {"real"}  # read back as a double: the cursor's repr round-trips
    conn.close()
    for limit in (1, 3, 4, 10):
        pages = _pages(queue, limit)
        assert [j.id for page in pages for j in page] == sorted(ids)
        assert all(j.created_at == at for page in pages for j in page)


def test_a_workflow_step_waiting_for_its_parent_is_not_listed(
        queue: SQLiteJobQueue) -> None:
    """A step whose parent has not finished is kept beside the graph, not queued
    (``peek_state`` says ``None``): browse lists its parent only."""
    flow = Flow(id="wf-1")
    nodes = [Node(id="parent", workflow=flow.id, task="tasks.a", children=["child"]),
             Node(id="child", workflow=flow.id, task="tasks.b", pending=1)]
    messages = [msg("parent", task="tasks.a"), msg("child", task="tasks.b")]
    assert queue.workflow_transaction(
        lambda txn: create(txn, flow, ["parent", "child"], nodes, messages)) is True
    assert (queue.peek_state("parent"), queue.peek_state("child")) == \
        (JobStatus.QUEUED, None)
    assert [(j.id, j.task, j.state) for j in queue.browse()] == \
        [("parent", "tasks.a", JobStatus.QUEUED)]


def test_a_big_page_reads_every_state_as_peek_state_does(queue: SQLiteJobQueue) -> None:
    """One page of 1,500 holding leased, retrying, delayed and ready rows: each job's state
    is what ``peek_state`` says of it, and ``states`` keeps exactly those."""
    base = time.time() - 1000.0
    queue.enqueue_many([msg(f"m{i:04d}", created_at=base + i * 0.25,
                            available_at=time.time() + 600 if i % 7 == 0 else 0.0)
                        for i in range(1500)])
    leases = queue.claim(300)
    for lease in leases[:100]:
        assert queue.retry(lease, delay_secs=60.0)
    page = queue.browse(limit=1500)
    assert [j.id for j in page] == [f"m{i:04d}" for i in range(1500)]
    states = {j.id: j.state for j in page}
    assert states == {job_id: queue.peek_state(job_id) for job_id in states}
    assert sorted(s.value for s in set(states.values())) == ["QUEUED", "RETRYING", "RUNNING"]
    for state in JobStatus:
        kept = queue.browse(states={state}, limit=1500)
        assert [j.id for j in kept] == [j for j, s in states.items() if s is state]
