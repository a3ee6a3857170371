"""``Job.get()`` (and ``wf.get()``) on a step its workflow's graph cancelled says why, from
the step's record, and gives the advice that works for that cause.

Before, it said only "cancelled before it ran" and, for every step, to run it again with
``nuvom workflow retry WF``: though its record said why (a step it depends on failed, was
cancelled, or its workflow's stored graph was found damaged), and a retry cannot run a
workflow ended because its graph was damaged (``wf.get()`` already said to submit it again).

Real SQLite files and file-queue folders (and the in-memory backend), a worker pool in this
process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, chain, get_job
from nuvom_kernel.errors import JobCancelledError
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import run_worker_until, write_module
from tests.test_workflow_corrupt import settle_damaged_step


def cancelled(step: str) -> JobCancelledError:
    with pytest.raises(JobCancelledError) as info:
        get_job(step).get(timeout=30)
    return info.value


@pytest.fixture
def kernel(workflow_kernel: Kernel) -> Kernel:
    return workflow_kernel


def test_a_step_cancelled_because_a_parent_failed_says_so(kernel: Kernel) -> None:
    from wf_tasks import boom, echo

    flow = chain(boom.si(), echo.s(), echo.s()).delay()
    first, second, third = (n.id for n in flow.nodes)
    run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
    for step in (second, third):
        error = cancelled(step)
        text = str(error)
        assert "cancelled before it ran: a step it depends on failed" in text, text
        # this cause a retry mends: the hint names it, with the workflow's id
        assert f"`nuvom workflow retry {flow.id}`" in text, text
        assert error.workflow == flow.id
        assert error.error_type == "nuvom.Cancelled"
    assert get_job(first).status is JobStatus.FAILED


def test_a_step_cancelled_by_hand_keeps_its_plain_message(kernel: Kernel) -> None:
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s()).delay()
    second = flow.nodes[1].id
    assert get_job(second).cancel() is True
    text = str(cancelled(second))
    assert f"job {second} was cancelled before it ran; it has no result" in text, text
    assert f"`nuvom workflow retry {flow.id}`" in text, text


def test_a_step_cancelled_because_its_graph_was_damaged_says_so_and_not_to_retry(
        kernel: Kernel) -> None:
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s(), echo.s()).finally_(echo.si("end")).delay()
    first, second, third, final = (n.id for n in flow.nodes)
    settle_damaged_step(kernel, flow.id, first)
    for step in (second, third, final):  # the finally_ step too
        error = cancelled(step)
        text = str(error)
        assert "cancelled before it ran: its workflow's stored graph is damaged" in text, text
        # `nuvom workflow retry` cannot run it: the advice is to submit it again
        assert "submit the workflow again" in text, text
        assert f"`nuvom workflow retry {flow.id}`" not in text, text
        assert error.workflow == flow.id


RETRY_LATER = """
from nuvom_kernel import task


@task(retries=1, retry_delay_secs=3600)
def fails_then_waits():
    raise ValueError("first try")
"""


def test_wf_get_names_a_step_cancelled_after_an_attempt_as_its_record_does(
        kernel: Kernel, project: Path) -> None:
    """``wf.get()`` built its error from the graph alone: a step cancelled while it waited
    out a retry delay read "cancelled before it ran", though it had run and failed; the
    error is now the one ``Job.get()`` gives, from the step's record."""
    write_module(project, "wf_retry_tasks", RETRY_LATER)
    from wf_retry_tasks import fails_then_waits
    from wf_tasks import echo

    flow = chain(fails_then_waits.si(), echo.s()).delay()
    first = flow.nodes[0].id
    run_worker_until(kernel, lambda: get_job(first).status is JobStatus.RETRYING,
                     "the first step to wait out its retry delay")
    assert get_job(first).cancel() is True
    with pytest.raises(JobCancelledError) as info:
        flow.get(timeout=30)
    text = str(info.value)
    assert f"job {first} was cancelled after 1 attempt (the last failed: ValueError: " \
           "first try)" in text, text
    assert text == str(cancelled(first))


def test_a_store_failing_while_the_graph_is_read_leaves_the_records_words(
        make_kernel: Callable[..., Kernel], project: Path) -> None:
    """The graph is read for what the record does not hold (its workflow, whether damage
    ended it); a store that fails there must not replace the cancelled step's error with
    its own, nor lose the record's reason or its workflow. Here the file queue's
    ``workflows/`` folder is a plain file while the step's record, kept in the result
    folder, reads."""
    from tests import test_workflows as wf

    write_module(project, "wf_tasks", wf.TASKS)
    kernel = make_kernel("file")
    with use_kernel(kernel):
        from wf_tasks import boom, echo

        flow = chain(boom.si(), echo.s()).delay()
        second = flow.nodes[1].id
        run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
        folder = kernel.queue.path / "workflows"  # type: ignore[attr-defined]
        folder.rename(folder.with_name("workflows.away"))
        folder.write_text("not a folder")
        try:
            error = cancelled(second)
        finally:
            folder.unlink()
            folder.with_name("workflows.away").rename(folder)
        text = str(error)
        assert "cancelled before it ran: a step it depends on failed" in text, text
        assert error.error_type == "nuvom.Cancelled"
        assert "not a folder" not in text and "NotADirectory" not in text, text
        # the workflow, which the graph would have said, is read from the record's words
        assert error.workflow == flow.id
        assert f"`nuvom workflow retry {flow.id}`" in text, text


def test_the_step_to_rerun_from_is_found_up_through_doomed_parents() -> None:
    """`workflow retry --from D`, where C was cancelled because B failed, names B: C
    re-opened would be cancelled again too."""
    from nuvom_kernel.workflow.graph import blocked_by
    from nuvom_kernel.workflow.shape import (
        CANCELLED,
        DOOM_FAILED,
        FAILED,
        SUCCEEDED,
        Flow,
        Node,
        WorkflowGraph,
    )

    def node(name: str, state: str, child: str | None, **extra: object) -> Node:
        return Node(id=name, workflow="wf", task="t", state=state,
                    children=[child] if child else [], **extra)  # type: ignore[arg-type]

    graph = WorkflowGraph(Flow(id="wf"), None, [
        node("a", SUCCEEDED, "b"), node("b", FAILED, "c"),
        node("c", CANCELLED, "d", doom=DOOM_FAILED), node("d", CANCELLED, None,
                                                           doom=DOOM_FAILED)])
    assert [blocked_by(graph, n) for n in "abcd"] == [None, None, graph.nodes[1],
                                                       graph.nodes[1]]
    graph.nodes[1].policy = "continue"  # its children run with its failure
    assert blocked_by(graph, "c") is None
