"""A workflow whose head could not be read when a step settled, restored since: the step's
outcome was recorded and acked, but never reached the graph, so the workflow read RUNNING
with nothing to move it on. ``wf.get()`` waited out its timeout, ``nuvom workflow retry``
refused it as RUNNING, and ``inspect`` showed a step done and its dependents waiting.

Now such a step is found ("stranded"): ``wf.get()`` raises once it has stayed so for a
grace, ``inspect`` and ``retry`` say so, and ``nuvom workflow resume`` applies the recorded
outcome, after which the workflow finishes.

Real SQLite files and file-queue folders, a worker pool in this process, the command line
as another process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus, Worker, chain, get_job
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import (
    EnqueueError,
    JobCancelledError,
    JobFailedError,
    NuvomError,
)
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.workflow import stranded
from nuvom_kernel.workflow.graph import CANCELLED, RELEASED, WAITING
from nuvom_kernel.workflow.handle import Workflow
from tests import test_workflows as wf
from tests.helpers import (
    edit_sqlite_cell,
    run_nuvom,
    run_worker_until,
    wait_until,
    write_module,
)


@pytest.fixture
def kernel(stored_workflow_kernel: Kernel) -> Kernel:
    return stored_workflow_kernel


def damage_head(kernel: Kernel, flow_id: str) -> Callable[[], None]:
    """Make the workflow's head unreadable as a disk fault would (the SQLite row's count,
    the file backend's whole document); how to put it back."""
    if kernel.queue.name == "sqlite":  # its count of open steps, not a number
        return edit_sqlite_cell(kernel.data_dir / "nuvom.db", "nuvom_workflows", "open",
                                flow_id, "three")
    doc = kernel.data_dir / "queue" / "workflows" / f"{flow_id}.json"
    saved = doc.read_bytes()
    doc.write_text('{"truncated": ')
    return lambda: doc.write_bytes(saved)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """``wf.get()`` looks every 0.1 s and raises at the first look that finds a step
    stranded (a minute's grace by default)."""
    monkeypatch.setattr(stranded, "CHECK_SECS", 0.1)
    monkeypatch.setattr(stranded, "GRACE_SECS", 0.0)


def strand_first_step(kernel: Kernel, flow_id: str, first: str) -> None:
    """Damage the workflow's head, run a worker until the first step's outcome is recorded
    and acked (its settle met the damage), then restore the head."""
    restore = damage_head(kernel, flow_id)
    run_worker_until(kernel, lambda: (get_job(first).status in (JobStatus.SUCCEEDED,
                                                                JobStatus.FAILED)
                                      and kernel.queue.peek_state(first) is None),
                     "the first step's outcome recorded and acked")
    restore()


def cli(kernel: Kernel, *args: str) -> tuple[int, str, str]:
    done = run_nuvom(["workflow", *args], kernel.config.root, timeout=60,
                     NUVOM_QUEUE_BACKEND=kernel.queue.name,
                     NUVOM_RESULT_BACKEND=kernel.results.name)
    return done.returncode, done.stdout, done.stderr


def test_a_step_settled_while_the_head_was_damaged_is_found_and_resumed(
        kernel: Kernel, quick: None) -> None:
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s(), echo.s()).delay()
    first, second, third = (n.id for n in flow.nodes)
    strand_first_step(kernel, flow.id, first)
    graph = Workflow(flow.id, kernel)._graph()
    assert graph.flow.status == "RUNNING"
    assert [n.state for n in graph.nodes] == [RELEASED, WAITING, WAITING]

    # get() raises instead of waiting out its timeout (a TimeoutError would fail here)
    with pytest.raises(NuvomError) as found:
        flow.get(timeout=30)
    text = str(found.value)
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
    assert code == 0 and out.strip() == f"workflow {flow.id}: nothing to resume (no " \
                                        "stranded step)", (out, err)

    run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
    assert flow.get(timeout=5) == 1
    assert get_job(third).status is JobStatus.SUCCEEDED


def test_a_stranded_failure_cancels_the_dependents_when_resumed(kernel: Kernel) -> None:
    from wf_tasks import boom, echo

    flow = chain(boom.si(), echo.s()).delay()
    first, second = (n.id for n in flow.nodes)
    strand_first_step(kernel, flow.id, first)
    assert Workflow(flow.id, kernel).resume() == [first]
    assert flow.status == "FAILED"
    assert [n.state for n in flow.nodes] == ["FAILED", CANCELLED]
    assert get_job(second).status is JobStatus.CANCELLED  # its record written too
    with pytest.raises(JobFailedError, match="boom"):
        flow.get(timeout=5)


def test_get_waits_out_the_grace_and_its_timeout_says_what_it_saw(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step stranded for less than the grace is not raised on (a cancel in progress looks
    the same for a moment); a get() that times out meanwhile says what it saw."""
    from wf_tasks import echo

    monkeypatch.setattr(stranded, "CHECK_SECS", 0.1)
    flow = chain(echo.s(1), echo.s()).delay()
    first = flow.nodes[0].id
    strand_first_step(kernel, flow.id, first)
    with pytest.raises(TimeoutError) as timed_out:
        flow.get(timeout=2)
    text = str(timed_out.value)
    assert f"Step {first}'s outcome has not reached the workflow's graph for" in text, text
    assert f"`nuvom workflow resume {flow.id}` applies it" in text, text


HELD = """
from nuvom_kernel import task


@task(queue="held")  # no worker of these tests serves it unless asked
def held(x):
    return x
"""


def retry_until_released(kernel: Kernel, flow_id: str, first: str, held: str) -> None:
    """``retry --from first``, then a worker on the default queue only, until ``first``'s
    new run released the ``held`` step (which no worker of these tests runs)."""
    Workflow(flow_id, kernel).retry(from_node=first)
    worker = Worker(kernel, workers=1, scheduler=False, poll_timeout_secs=0.05,
                    queues=["default"])  # runs the first step again, not the held one
    worker.start()
    try:
        wait_until(lambda: kernel.queue.peek_state(held) is not None,
                   10, "the held step released by its parent's new run")
    finally:
        worker.stop()
        worker.join()


def test_a_step_released_again_by_a_retry_is_not_taken_for_its_last_run(
        kernel: Kernel, project: Path) -> None:
    """After ``retry``, a re-opened step keeps its last run's terminal record until its new
    run settles. Its message gone then (a cancel that has removed it and not yet recorded
    CANCELLED), it looked stranded, and resume applied the old run's SUCCEEDED: the next
    step ran on a result the cancel was meant to stop."""
    from wf_tasks import echo

    write_module(project, "held_tasks", HELD)
    from held_tasks import held

    flow = chain(echo.s(1), held.s(), echo.s()).delay()
    first, second, third = (n.id for n in flow.nodes)
    run_worker_until(kernel, lambda: flow.status == "SUCCEEDED", "the first run to end")
    assert get_job(second).status is JobStatus.SUCCEEDED
    retry_until_released(kernel, flow.id, first, second)
    assert kernel.queue.cancel(second)  # a cancel's first half: the message removed
    assert get_job(second).status is JobStatus.SUCCEEDED  # its last run's record
    assert Workflow(flow.id, kernel).resume() == []
    assert [n.state for n in Workflow(flow.id, kernel)._graph().nodes][1:] == \
        [RELEASED, WAITING]
    assert kernel.queue.peek_state(third) is None


def test_a_healthy_workflow_is_not_taken_for_a_stranded_one(kernel: Kernel) -> None:
    """Queued, leased, and settled steps: none is stranded, and resume changes nothing."""
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


def test_a_resume_cut_short_before_its_push_is_finished_by_the_next(
        make_kernel: Callable[..., Kernel], project: Path) -> None:
    """The file backend saves a graph, then pushes the steps it released: a resume that
    fails in between leaves the next step RELEASED with no message and no record, which no
    lease will mend (a settle's would: its step runs again). The next resume pushes it."""
    write_module(project, "wf_tasks", wf.TASKS)
    kernel = make_kernel("file")
    with use_kernel(kernel):
        from wf_tasks import echo

        flow = chain(echo.s(1), echo.s(), echo.s()).delay()
        first, second, _ = (n.id for n in flow.nodes)
        strand_first_step(kernel, flow.id, first)
        ready = kernel.queue.path / "ready"  # type: ignore[attr-defined]
        ready.rename(ready.with_name("ready.away"))
        ready.write_text("not a folder")  # the push fails, after the graph was saved
        try:
            with pytest.raises(EnqueueError) as refused:  # the file queue's own error
                Workflow(flow.id, kernel).resume()
            assert isinstance(refused.value.__cause__, OSError)
        finally:
            ready.unlink()
            ready.with_name("ready.away").rename(ready)
        graph = Workflow(flow.id, kernel)._graph()
        assert [n.state for n in graph.nodes][:2] == ["SUCCEEDED", RELEASED]
        assert kernel.queue.peek_state(second) is None and kernel.results.get(second) is None

        assert Workflow(flow.id, kernel).resume() == []  # nothing stranded: pushed, though
        assert kernel.queue.peek_state(second) is JobStatus.QUEUED
        run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
        assert flow.get(timeout=5) == 1


def test_a_step_whose_message_does_not_decode_fails_its_workflow(
        make_kernel: Callable[..., Kernel], project: Path) -> None:
    """A step's queued message damaged: the worker fails it without its envelope, so it
    did not know the step's workflow, and acked it with its graph never moved (stranded:
    the workflow RUNNING, its dependents waiting). Its node is now looked up by id."""
    write_module(project, "wf_tasks", wf.TASKS)
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from wf_tasks import echo

        flow = chain(echo.s(1), echo.s(), echo.s()).delay()
        first, second, third = (n.id for n in flow.nodes)
        db = sqlite3.connect(kernel.data_dir / "nuvom.db")
        with db:
            assert db.execute("UPDATE nuvom_queue SET body = x'7b22' WHERE id = ?",
                              (first,)).rowcount == 1
        db.close()
        run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
        assert flow.status == "FAILED"
        assert [n.state for n in flow.nodes] == ["FAILED", CANCELLED, CANCELLED]
        assert {get_job(second).status, get_job(third).status} == {JobStatus.CANCELLED}
        with pytest.raises(JobFailedError, match="the message body cannot be decoded"):
            flow.get(timeout=5)
        assert Workflow(flow.id, kernel).resume() == []


def test_resume_of_a_graph_still_damaged_fails_naming_the_entry(kernel: Kernel) -> None:
    """Nothing to apply while a step's entry does not read: the command fails with the
    error that names it, and changes nothing."""
    from wf_tasks import echo

    from tests.test_workflow_corrupt import damage_step

    flow = chain(echo.s(1), echo.s()).delay()
    first = flow.nodes[0].id
    where, restore = damage_step(kernel, flow.id, first)
    code, out, err = cli(kernel, "resume", flow.id)
    assert code != 0 and "applied" not in out, (out, err)
    assert "corrupt" in err and where in err and "Traceback" not in err, err
    restore()
    assert Workflow(flow.id, kernel).resume() == []
    assert kernel.queue.peek_state(first) is JobStatus.QUEUED


def quarantine_on_claim(kernel: Kernel, job_id: str) -> None:
    """Damage ``job_id``'s queued message as a disk fault or a careless tool would, so that
    the claim that reaches it quarantines it instead of handing it out."""
    if kernel.queue.name == "sqlite":
        db = sqlite3.connect(kernel.data_dir / "nuvom.db")
        db.execute("PRAGMA ignore_check_constraints = ON")
        with db:
            assert db.execute("UPDATE nuvom_queue SET priority = 'high' WHERE id = ?",
                              (job_id,)).rowcount == 1
        db.close()
        return
    ready = kernel.queue.path / "ready"  # type: ignore[attr-defined]
    [entry] = [p for p in ready.iterdir() if f".{job_id}." in p.name]
    data = entry.read_bytes()
    entry.write_bytes(data[:-3] + b"XYZ")  # its checksum no longer matches


def test_a_step_quarantined_by_its_queue_is_told_not_waited_for(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's message damaged in the store is quarantined by the claim that reaches it, so
    no worker settles it: its workflow stayed RUNNING, and ``wf.get()`` without a timeout
    waited forever. It now raises once the step has stayed so for the grace, naming the
    step, where to look and how to end the workflow; ``inspect`` names it at once."""
    from wf_tasks import echo

    monkeypatch.setattr(stranded, "CHECK_SECS", 0.1)
    flow = chain(echo.s(1), echo.s()).delay()
    first, second = (n.id for n in flow.nodes)
    quarantine_on_claim(kernel, first)
    run_worker_until(kernel, lambda: kernel.queue.stats().quarantined,
                     "the damaged step quarantined")
    assert kernel.queue.peek_state(first) is None and kernel.results.get(first) is None
    assert flow.status == "RUNNING"

    with pytest.raises(TimeoutError) as timed_out:  # within the grace: what it saw
        flow.get(timeout=2)
    assert f"Step {first} has been released for" in str(timed_out.value), timed_out.value
    monkeypatch.setattr(stranded, "GRACE_SECS", 0.0)
    monkeypatch.setattr(stranded, "LOST_GRACE_LEASES", 0)
    with pytest.raises(NuvomError) as found:
        flow.get(timeout=30)
    text = str(found.value)
    assert f"step {first} was released to its queue, but its message is in no queue" in text
    assert "`nuvom status` lists quarantined entries" in text, text
    assert f"`nuvom cancel job {first}` cancels it and the steps depending on it" in text
    code, out, err = cli(kernel, "inspect", flow.id)
    assert code == 0 and first in out and f"step {first} was released" in err, (out, err)
    assert "resume" not in err, err  # it has no outcome to apply

    done = run_nuvom(["cancel", "job", first], kernel.config.root, timeout=60,
                     NUVOM_QUEUE_BACKEND=kernel.queue.name,
                     NUVOM_RESULT_BACKEND=kernel.results.name)
    assert done.returncode == 0, done.stderr
    assert flow.status == "CANCELLED"
    assert get_job(first).status is JobStatus.CANCELLED  # its own record, from its message
    assert get_job(second).status is JobStatus.CANCELLED


def test_a_quarantined_step_put_back_runs_its_workflow_on(
        make_kernel: Callable[..., Kernel], project: Path) -> None:
    """What workflows.md tells for a lost step: put the quarantined entry back, as the
    SQLite README says, and the workflow runs on (the step's id is its node's)."""
    write_module(project, "wf_tasks", wf.TASKS)
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from wf_tasks import echo

        flow = chain(echo.s(1), echo.s()).delay()
        first = flow.nodes[0].id
        quarantine_on_claim(kernel, first)
        run_worker_until(kernel, lambda: kernel.queue.stats().quarantined,
                         "the damaged step quarantined")
        db = sqlite3.connect(kernel.data_dir / "nuvom.db")
        with db:  # the priority repaired, the rest as found
            db.execute("INSERT INTO nuvom_queue (id, queue, priority, created_at, "
                       "available_at, body, task) SELECT id, queue, 0, created_at, "
                       "available_at, body, task FROM nuvom_quarantine WHERE id = ?", (first,))
            db.execute("DELETE FROM nuvom_quarantine WHERE id = ?", (first,))
        db.close()
        run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
        assert flow.get(timeout=5) == 1


def test_a_head_whose_status_is_no_status_is_damage_not_a_state(
        make_kernel: Callable[..., Kernel], project: Path) -> None:
    """A head row whose status was edited to a word no workflow has was read as given: the
    workflow was 'BOGUS' to every reader, its steps ran and settled, and nothing ever ended
    it; put back to RUNNING, nothing could move it (no step stranded, retry refused it as
    RUNNING). It is damage now: reads name it, and once restored, resume moves it on."""
    from nuvom_kernel.errors import CorruptWorkflowError

    write_module(project, "wf_tasks", wf.TASKS)
    kernel = make_kernel("sqlite")
    with use_kernel(kernel):
        from wf_tasks import echo

        flow = chain(echo.s(1), echo.s()).delay()
        first = flow.nodes[0].id
        restore = edit_sqlite_cell(kernel.data_dir / "nuvom.db", "nuvom_workflows", "status",
                                   flow.id, "BOGUS")
        with pytest.raises(CorruptWorkflowError, match="status 'BOGUS' is none of"):
            flow.get(timeout=5)
        run_worker_until(kernel, lambda: (get_job(first).status is JobStatus.SUCCEEDED
                                          and kernel.queue.peek_state(first) is None),
                         "the first step's outcome recorded and acked")
        restore()
        assert Workflow(flow.id, kernel).resume() == [first]
        run_worker_until(kernel, lambda: flow.status != "RUNNING", "the workflow to end")
        assert flow.get(timeout=5) == 1


def test_a_lost_step_with_a_record_of_its_run_is_cancelled_over_it(kernel: Kernel) -> None:
    """A step that failed an attempt (RETRYING, attempt 1) and whose retry's message was
    then lost: its CANCELLED record was built from the message (attempt 0), which the
    results refuse under the stored attempt, so the cancel said done, the workflow ended,
    and the step read RETRYING for ever."""
    from wf_tasks import echo

    flow = chain(echo.s(1), echo.s()).delay()
    first = flow.nodes[0].id
    [lease] = kernel.queue.claim(1)
    envelope = Envelope.from_message(lease.message, kernel.serializer)
    assert kernel.results.put(envelope.record(JobStatus.RETRYING, attempts=1))
    assert kernel.queue.ack(lease)  # the retry's message gone, as a quarantine leaves it
    assert get_job(first).cancel() is True
    assert flow.status == "CANCELLED"
    record = kernel.results.get(first)
    assert record is not None and (record.status, record.attempts) == (JobStatus.CANCELLED, 1)


def test_a_lost_step_released_again_by_a_retry_can_be_cancelled(
        kernel: Kernel, project: Path) -> None:
    """After ``retry``, a re-opened step keeps its last run's terminal record: its new
    run's message lost, ``inspect`` and ``get()`` called it lost and said to cancel it, and
    the cancel refused (its record was terminal), leaving the workflow RUNNING."""
    from wf_tasks import echo

    write_module(project, "held_tasks", HELD)
    from held_tasks import held

    flow = chain(echo.s(1), held.s()).delay()
    first, second = (n.id for n in flow.nodes)
    run_worker_until(kernel, lambda: flow.status == "SUCCEEDED", "the first run to end")
    retry_until_released(kernel, flow.id, first, second)
    [lease] = kernel.queue.claim(1, queues=["held"])
    assert lease.id == second and kernel.queue.ack(lease)  # its new run's message gone
    graph = Workflow(flow.id, kernel)._graph()
    assert stranded.look(kernel.queue, kernel.results, kernel.serializer, graph).lost == \
        [second]
    assert get_job(second).cancel() is True
    assert flow.status == "CANCELLED"
    record = kernel.results.get(second)
    assert record is not None and (record.status, record.run) == (JobStatus.CANCELLED, 2)


def test_a_re_opened_step_waiting_for_its_parents_is_not_called_damaged(
        kernel: Kernel) -> None:
    """``get()`` on a step re-opened by ``retry`` (waiting, its last run's CANCELLED record
    kept) said what it says after a damaged graph ended a workflow: submit it again."""
    from wf_tasks import boom, echo

    flow = chain(boom.si(), echo.s(), echo.s()).delay()
    second = flow.nodes[1].id
    run_worker_until(kernel, lambda: flow.status == "FAILED", "the workflow to fail")
    Workflow(flow.id, kernel).retry()
    with pytest.raises(JobCancelledError) as cancelled:
        get_job(second).get(timeout=1)
    assert "no retry can finish" not in str(cancelled.value), cancelled.value
    assert f"nuvom workflow retry {flow.id}" in str(cancelled.value), cancelled.value
