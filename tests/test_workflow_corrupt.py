"""A workflow whose stored graph is damaged (edited by hand, a disk fault): its steps' own
outcomes are still recorded and acked, the other workflows move on, and reading it says
which entry is corrupt and where. Before, the settler took the parser's error for an outage:
the step ran again at every visibility timeout, past the delivery limit, forever.

When the damage is a step (not the workflow's head), the settle that finds it also ends the
workflow FAILED and cancels its waiting steps: before, ``wf.get()`` read RUNNING and
``Job.get()`` on a waiting step QUEUED until their timeouts, since nothing would ever
release those steps.

Real SQLite files and file-queue folders, a worker pool in this process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from nuvom_kernel import JobStatus, chain, get_job, group
from nuvom_kernel.errors import CorruptWorkflowError, JobCancelledError, NuvomError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.workflow.docstore import checked_doc
from nuvom_kernel.workflow.graph import (
    CANCELLED,
    DOOM_DAMAGED,
    GraphTxn,
    Node,
    advance,
    stored_flow,
    stored_node,
)
from nuvom_kernel.workflow.handle import Workflow
from nuvom_kernel.workflow.shape import WAITING
from tests.helpers import edit_sqlite_cell, run_nuvom, run_worker_until


@pytest.fixture
def kernel(stored_workflow_kernel: Kernel) -> Kernel:
    return stored_workflow_kernel


def corrupt(kernel: Kernel, flow_id: str, step_id: str) -> str:
    """Damage the stored graph of ``flow_id`` as a hand edit would; where it now is."""
    if kernel.queue.name == "sqlite":
        db = sqlite3.connect(kernel.data_dir / "nuvom.db")
        with db:
            db.execute("UPDATE nuvom_wf_nodes SET children = '{bad' WHERE id = ?", (step_id,))
        db.close()
        return "nuvom_wf_nodes"
    path = kernel.data_dir / "queue" / "workflows" / f"{flow_id}.json"
    path.write_text('{"truncated": ')
    return str(path)


def test_a_corrupt_graph_settles_its_step_and_holds_up_no_other_workflow(kernel: Kernel):
    from wf_tasks import echo

    broken = chain(echo.s(1), echo.s(), echo.s()).delay()
    healthy = chain(echo.s(2), echo.s(), echo.s()).delay()
    first = broken.nodes[0].id
    where = corrupt(kernel, broken.id, first)

    def settled() -> bool:
        return (get_job(first).status is JobStatus.SUCCEEDED
                and kernel.queue.peek_state(first) is None
                and healthy.status == "SUCCEEDED")

    run_worker_until(kernel, settled, "the corrupt workflow's step acked, the other's end",
                     workers=2)
    assert healthy.get(timeout=5) == 2
    with pytest.raises(CorruptWorkflowError) as info:
        _ = broken.nodes
    text = str(info.value)
    # SQLite: one step's row is damaged, its head is not, so the settle ended it; the file
    # backend's whole document is damaged, head and all: nothing can say it ended
    ending = "ended FAILED" if kernel.queue.name == "sqlite" else "cannot move on"
    assert broken.id in text and where in text and ending in text, text
    # `nuvom status`: SQLite's two waiting rows were cancelled with the workflow; the file
    # backend skips its unreadable document (it crashed the whole count before)
    assert kernel.queue.waiting_steps() == 0


@pytest.mark.parametrize(("data", "problem"), [
    ("not a node", "a step is 'not a node', not an object"),
    ({"id": "s1", "workflow": "w", "task": "t", "children": "{bad"},
     "children '{bad' is not a list of step ids"),
    ({"id": "s1", "workflow": "w", "task": "t", "state": "DONE"}, "state 'DONE' is none of"),
    ({"id": "s1", "workflow": "w", "task": "t", "pending": "2"}, "pending '2' is not a count"),
    ({"id": "s1", "workflow": "w", "task": "t", "colour": "red"}, "unexpected keyword"),
])
def test_a_stored_node_that_does_not_decode_is_named(data: object, problem: str):
    with pytest.raises(CorruptWorkflowError) as info:
        stored_node(data, "w", "table t")
    assert "workflow 'w'" in str(info.value) and "table t" in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(("data", "problem"), [
    ([], "the document is list, not an object"),
    ({"flow": {}, "order": [], "messages": {}, "output": None}, "its 'nodes' is not an object"),
    ({"flow": {}, "nodes": {}, "order": {}, "messages": {}, "output": None},
     "its 'order' is not a list"),
    ({"flow": {}, "nodes": {}, "order": [1], "messages": {}, "output": None},
     "an 'order' of non-ids"),
    ({"flow": {}, "nodes": {}, "order": [], "messages": {}}, "no 'output'"),
])
def test_a_workflow_document_of_the_wrong_shape_is_named(data: object, problem: str):
    with pytest.raises(CorruptWorkflowError) as info:
        checked_doc(data, "w", "file f.json")
    assert "workflow 'w'" in str(info.value) and "file f.json" in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(("data", "problem"), [
    (["w"], "its head is ['w']"),
    ({"id": "w", "colour": "red"}, "unexpected keyword"),
    ({"id": "w", "status": 3}, "its head: status 3"),
    ({"id": "w", "status": "BOGUS"}, "status 'BOGUS' is none of ['CANCELLED', 'FAILED', "),
    ({"id": "w", "open": "2"}, "open '2'"),
])
def test_a_stored_workflow_head_that_does_not_decode_is_named(data: object, problem: str):
    with pytest.raises(CorruptWorkflowError) as info:
        stored_flow(data, "w", "table t")
    assert "workflow 'w'" in str(info.value) and problem in str(info.value)


# --- a damaged step, the head intact: the workflow ends --------------------------------------

def damage_step(kernel: Kernel, flow_id: str, step_id: str) -> tuple[str, Callable[[], None]]:
    """Damage one step's stored node (its children list), as a hand edit would, leaving the
    workflow's head readable; where it is, and how to put the entry back as it was."""
    queue: Any = kernel.queue
    if queue.name == "sqlite":
        return "nuvom_wf_nodes", edit_sqlite_cell(kernel.data_dir / "nuvom.db",
                                                  "nuvom_wf_nodes", "children", step_id, "{bad")
    if queue.name == "memory":  # the store is this process's dict of documents (a commit
        # stores a new one: look it up at each edit)
        def put(children: object) -> None:
            queue._wf_docs[flow_id]["nodes"][step_id]["children"] = children

        kept = queue._wf_docs[flow_id]["nodes"][step_id]["children"]
        put("{bad")
        return "memory", lambda: put(kept)
    doc_path = kernel.data_dir / "queue" / "workflows" / f"{flow_id}.json"

    def edit(children: object) -> None:  # the document as the last commit saved it
        doc = json.loads(doc_path.read_text())
        doc["nodes"][step_id]["children"] = children
        doc_path.write_text(json.dumps(doc))

    original = json.loads(doc_path.read_text())["nodes"][step_id]["children"]
    edit("{bad")
    return str(doc_path), lambda: edit(original)


def settle_damaged_step(kernel: Kernel, flow_id: str, step_id: str
                        ) -> tuple[str, Callable[[], None]]:
    """:func:`damage_step`, then a worker until that step's outcome is recorded and acked:
    the settle that meets the damage has run. Where it is, and how to put it back."""
    damaged = damage_step(kernel, flow_id, step_id)
    run_worker_until(kernel, lambda: (get_job(step_id).status is JobStatus.SUCCEEDED
                                      and kernel.queue.peek_state(step_id) is None),
                     "the damaged step's outcome recorded and acked")
    return damaged


def test_a_damaged_step_ends_its_workflow_failed_and_its_waiting_steps_cancelled(
        workflow_kernel: Kernel) -> None:
    from wf_tasks import echo

    kernel = workflow_kernel
    broken = chain(echo.s(1), echo.s(), echo.s()).delay()
    first, second, third = (n.id for n in broken.nodes)
    where, restore = settle_damaged_step(kernel, broken.id, first)
    # the settle that acked it ended the workflow: get() raises at once (it polled RUNNING
    # until its timeout), naming the entry and saying the workflow ended
    assert broken.status == "FAILED"
    with pytest.raises(CorruptWorkflowError) as info:
        broken.get(timeout=30)
    text = str(info.value)
    assert broken.id in text and where in text and "ended FAILED" in text, text
    assert info.value.status == "FAILED"
    # each waiting step reads CANCELLED with the reason (it read QUEUED forever)
    for step in (second, third):
        with pytest.raises(JobCancelledError) as cancelled:
            get_job(step).get(timeout=30)
        assert cancelled.value.error_type == "nuvom.Cancelled"
        assert "stored graph is damaged" in (cancelled.value.error_message or "")
    assert kernel.queue.waiting_steps() == 0
    assert get_job(first).get(timeout=1) == 1  # the damaged step's own result stands

    if kernel.queue.name != "memory":  # the command line is another process
        shown = run_nuvom(["workflow", "inspect", broken.id], kernel.config.root,
                          NUVOM_QUEUE_BACKEND=kernel.queue.name,
                          NUVOM_RESULT_BACKEND=kernel.results.name)
        assert shown.returncode != 0
        assert "ended FAILED" in shown.stderr and where in shown.stderr, shown.stderr

    # the entry put back by hand: the graph reads again, the steps show as they ended, and
    # get() says why the workflow failed (not "cancelled: workflow retry", which cannot mend
    # a step whose outcome was settled without moving the graph)
    restore()
    states = {n.id: n.state for n in broken.nodes}
    assert (states[second], states[third]) == (CANCELLED, CANCELLED)
    with pytest.raises(NuvomError, match="found damaged while it ran") as again:
        broken.get(timeout=30)
    assert not isinstance(again.value, JobCancelledError)


class RequiredOnly:
    """A store's :class:`GraphTxn` with the required calls only, as a backend written before
    ``waiting_nodes`` existed (the calls are the real store's, not a stand-in)."""

    REQUIRED = frozenset({"insert", "flows", "nodes", "update", "release", "graph", "bodies"})

    def __init__(self, txn: GraphTxn) -> None:
        self._txn = txn

    def __getattr__(self, name: str) -> Any:
        if name not in self.REQUIRED:
            raise AttributeError(name)
        return getattr(self._txn, name)


def test_ending_a_damaged_workflow_is_optional_idempotent_and_fenced(workflow_kernel: Kernel
                                                                     ) -> None:
    from wf_tasks import echo

    kernel = workflow_kernel
    queue = kernel.queue
    flow = group(echo.s(1), echo.s(2)).then(echo.s()).delay()
    one, two, join = (n.id for n in flow.nodes)
    damage_step(kernel, flow.id, one)
    damage_step(kernel, flow.id, two)

    def settle(txn_of: Callable[[GraphTxn], Any], step: str) -> list[Node]:
        return queue.workflow_transaction(
            lambda txn: advance(txn_of(txn), [(step, JobStatus.SUCCEEDED)]), [flow.id])

    # a backend without the optional call: settled, logged, the workflow as it was
    assert settle(RequiredOnly, one) == []
    assert flow.status == "RUNNING"
    # a lease no longer held reaches no advance: nothing ended by it
    leases = queue.claim(2)
    assert {lease.id for lease in leases} == {one, two}
    lost = attrs.evolve(leases[0], token="not-" + str(leases[0].token))
    assert queue.advance_workflows([(lost, JobStatus.SUCCEEDED, flow.id)]) == []
    assert flow.status == "RUNNING"
    # the first settle to find the damage ends it, cancelling the waiting join
    doomed = queue.advance_workflows([(leases[0], JobStatus.SUCCEEDED, flow.id)])
    assert [(n.id, n.state, n.doom) for n in doomed] == [(join, CANCELLED, DOOM_DAMAGED)]
    head = Workflow(flow.id, kernel)._graph(nodes=False).flow
    assert head.status == "FAILED"
    # a second worker finding the same damage changes nothing (no second end, no record)
    assert queue.advance_workflows([(leases[1], JobStatus.SUCCEEDED, flow.id)]) == []
    assert Workflow(flow.id, kernel)._graph(nodes=False).flow == head


def test_retry_of_a_workflow_ended_by_damage_is_refused_at_once_even_restored(
        workflow_kernel: Kernel) -> None:
    """It was re-opened: its cancelled steps then waited for the damaged step, RELEASED in
    the graph though its outcome was settled long ago, so nothing released them and
    ``wf.get()`` polled RUNNING forever. A retry cannot know what the settle that found the
    damage left undone, so it refuses, saying to submit the workflow again."""
    from wf_tasks import echo

    kernel = workflow_kernel
    broken = chain(echo.s(1), echo.s(), echo.s()).delay()
    first, second, third = (n.id for n in broken.nodes)
    where, restore = settle_damaged_step(kernel, broken.id, first)
    with pytest.raises(CorruptWorkflowError, match="ended FAILED") as still:  # still damaged
        broken.retry()
    assert where in str(still.value)

    restore()
    for from_node in (None, first, second):
        with pytest.raises(NuvomError) as info:
            broken.retry(from_node)
        text = str(info.value)
        assert "found damaged while it ran" in text and "submit the workflow again" in text, \
            text
        assert first in text, "the step whose outcome never reached the graph is named"
    # refused before anything changed: still ended, its steps as they ended
    assert broken.status == "FAILED"
    assert [n.state for n in broken.nodes] == ["SUCCEEDED", CANCELLED, CANCELLED]
    assert get_job(second).status is JobStatus.CANCELLED

    if kernel.queue.name != "memory":  # the command line is another process
        shown = run_nuvom(["workflow", "retry", broken.id], kernel.config.root, timeout=60,
                          NUVOM_QUEUE_BACKEND=kernel.queue.name,
                          NUVOM_RESULT_BACKEND=kernel.results.name)
        assert shown.returncode != 0
        assert "submit the workflow again" in shown.stderr, shown.stderr
        assert "re-running" not in shown.stdout
    assert broken.status == "FAILED"
    assert get_job(third).status is JobStatus.CANCELLED


def test_a_waiting_step_damaged_then_restored_reads_cancelled_not_queued(
        workflow_kernel: Kernel) -> None:
    """The waiting step whose entry was damaged is the one step the settle that found it
    cannot cancel. Put back by hand, it was WAITING in a workflow that had ended: it read
    QUEUED, and its ``get()`` waited out its timeout asking whether a worker ran. It reads
    CANCELLED, and its ``get()`` says at once that only submitting the workflow again runs
    it."""
    from wf_tasks import echo

    kernel = workflow_kernel
    broken = chain(echo.s(1), echo.s(), echo.s()).delay()
    _, second, third = (n.id for n in broken.nodes)
    _, restore = damage_step(kernel, broken.id, second)
    run_worker_until(kernel, lambda: broken.status != "RUNNING",
                     "the first step's settle to end the workflow")
    restore()
    assert {n.id: n.state for n in broken.nodes}[second] == WAITING
    assert get_job(second).status is JobStatus.CANCELLED
    with pytest.raises(JobCancelledError) as cancelled:
        get_job(second).get(timeout=30)
    assert f"no retry can finish workflow {broken.id}" in str(cancelled.value), cancelled.value
    assert get_job(third).status is JobStatus.CANCELLED
    with pytest.raises(NuvomError, match="found damaged while it ran"):
        broken.retry()
