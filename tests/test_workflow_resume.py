"""A workflow whose head could not be read when a step settled, restored since: the step's
outcome was recorded and acked, but never reached the graph, so the workflow read RUNNING
with nothing to move it on. ``wf.get()`` waited out its timeout, ``nuvom workflow retry``
refused it as RUNNING, and ``inspect`` showed a step done and its dependents waiting.

Now ``wf.get()`` raises once it finds such a step, ``inspect`` and ``retry`` say so, and
``nuvom workflow resume`` applies the recorded outcome, after which the workflow finishes.

Real SQLite files and file-queue folders, a worker pool in this process, the command line
as another process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, chain, get_job
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.workflow.graph import RELEASED, WAITING
from nuvom_kernel.workflow.handle import Workflow
from tests import test_workflows as wf
from tests.helpers import run_nuvom, run_worker_until, write_module


@pytest.fixture(params=wf.BACKENDS)
def kernel(request: pytest.FixtureRequest, project: Path,
           make_kernel: Callable[..., Kernel]) -> Iterator[Kernel]:
    write_module(project, "wf_tasks", wf.TASKS)
    k = make_kernel(request.param)
    with use_kernel(k):
        yield k


def damage_head(kernel: Kernel, flow_id: str) -> Callable[[], None]:
    """Make the workflow's head unreadable as a disk fault would (the SQLite row's count,
    the file backend's whole document); how to put it back."""
    if kernel.queue.name == "sqlite":
        path = kernel.data_dir / "nuvom.db"

        def write(count: object) -> None:
            db = sqlite3.connect(path)
            with db:
                db.execute("UPDATE nuvom_workflows SET open = ? WHERE id = ?",
                           (count, flow_id))
            db.close()

        db = sqlite3.connect(path)
        saved = db.execute("SELECT open FROM nuvom_workflows WHERE id = ?",
                           (flow_id,)).fetchone()[0]
        db.close()
        write("three")  # its count of open steps, not a number
        return lambda: write(saved)
    doc = kernel.data_dir / "queue" / "workflows" / f"{flow_id}.json"
    saved = doc.read_bytes()
    doc.write_text('{"truncated": ')
    return lambda: doc.write_bytes(saved)


def cli(kernel: Kernel, *args: str) -> tuple[int, str, str]:
    done = run_nuvom(["workflow", *args], kernel.config.root, timeout=60,
                     NUVOM_QUEUE_BACKEND=kernel.queue.name,
                     NUVOM_RESULT_BACKEND=kernel.results.name)
    return done.returncode, done.stdout, done.stderr


def test_a_step_settled_while_the_head_was_damaged_is_found_and_resumed(kernel: Kernel
                                                                        ) -> None:
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s(), echo.s()).delay()
    first, second, third = (n.id for n in flow.nodes)
    restore = damage_head(kernel, flow.id)
    run_worker_until(kernel, lambda: (get_job(first).status is JobStatus.SUCCEEDED
                                      and kernel.queue.peek_state(first) is None),
                     "the first step's outcome recorded and acked")
    restore()
    graph = Workflow(flow.id, kernel)._graph()
    assert graph.flow.status == "RUNNING"
    assert [n.state for n in graph.nodes] == [RELEASED, WAITING, WAITING]

    # get() raises instead of waiting out its timeout (a TimeoutError would fail here)
    with pytest.raises(NuvomError) as stuck:
        flow.get(timeout=120)
    text = str(stuck.value)
    assert f"step {first} ended SUCCEEDED" in text, text
    assert f"`nuvom workflow resume {flow.id}`" in text, text
    with pytest.raises(NuvomError, match=f"workflow resume {flow.id}"):
        flow.retry()  # not "still RUNNING; retry it once it ended": it never would

    code, out, err = cli(kernel, "inspect", flow.id)
    assert code == 0 and first in out and f"workflow resume {flow.id}" in err, (out, err)
    code, out, err = cli(kernel, "resume", flow.id)
    assert code == 0, err
    assert out.strip() == f"workflow {flow.id}: applied the recorded outcome of 1 step(s): " \
                          f"{first}", out
    assert get_job(second).status is JobStatus.QUEUED  # released by the resume
    code, out, err = cli(kernel, "resume", flow.id)  # a second time: nothing left to do
    assert code == 0 and "nothing to resume" in out, (out, err)

    run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
    assert flow.get(timeout=5) == 1
    assert get_job(third).status is JobStatus.SUCCEEDED


def test_a_healthy_workflow_is_not_taken_for_a_stuck_one(kernel: Kernel) -> None:
    """Queued, leased, and settled steps: none is stuck, and resume changes nothing."""
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s()).delay()
    first = flow.nodes[0].id
    handle = Workflow(flow.id, kernel)
    assert handle.resume() == []  # the first step queued
    [lease] = kernel.queue.claim(1)
    assert lease.id == first and handle.resume() == []  # leased
    kernel.queue.release(lease)
    code, _, err = cli(kernel, "inspect", flow.id)
    assert code == 0 and "resume" not in err, err
    with pytest.raises(NuvomError, match="still RUNNING; retry it once it ended"):
        flow.retry()
    run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
    assert handle.resume() == [] and flow.get(timeout=5) == 1
