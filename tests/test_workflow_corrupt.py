"""A workflow whose stored graph is damaged (edited by hand, a disk fault): its steps' own
outcomes are still recorded and acked, the other workflows move on, and reading it says
which entry is corrupt and where. Before, the settler took the parser's error for an outage:
the step ran again at every visibility timeout, past the delivery limit, forever.

Real SQLite files and file-queue folders, a worker pool in this process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, chain, get_job
from nuvom_kernel.errors import CorruptWorkflowError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.workflow.docstore import checked_doc
from nuvom_kernel.workflow.graph import stored_flow, stored_node
from tests import test_workflows as wf
from tests.helpers import run_worker_until, write_module


@pytest.fixture(params=wf.BACKENDS)
def kernel(request: pytest.FixtureRequest, project: Path,
           make_kernel: Callable[..., Kernel]) -> Iterator[Kernel]:
    write_module(project, "wf_tasks", wf.TASKS)
    k = make_kernel(request.param)
    with use_kernel(k):
        yield k


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
    assert broken.id in text and where in text and "cannot move on" in text, text
    # `nuvom status`: SQLite still reads the broken workflow's two waiting rows; the file
    # backend skips its unreadable document (it crashed the whole count before)
    assert kernel.queue.waiting_steps() == (2 if kernel.queue.name == "sqlite" else 0)


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
    ({"id": "w", "open": "2"}, "open '2'"),
])
def test_a_stored_workflow_head_that_does_not_decode_is_named(data: object, problem: str):
    with pytest.raises(CorruptWorkflowError) as info:
        stored_flow(data, "w", "table t")
    assert "workflow 'w'" in str(info.value) and problem in str(info.value)
