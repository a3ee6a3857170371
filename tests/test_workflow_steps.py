"""Workflow steps seen as jobs, and the edges of building and retrying workflows: a step
waiting for its parents reads QUEUED and can be cancelled (every workflow backend), a
cancelled step leads back to its workflow (not to `nuvom retry job`), `retry --from` keeps a
join doomed by a parent that stays failed, and canvases that cannot mean anything are
refused when built.

Real SQLite files and file-queue folders, real workers (`nuvom runworker` processes, or a
worker pool in this process for the memory backend); waits are conditions with deadlines.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel import (
    JobCancelledError,
    JobFailedError,
    JobStatus,
    chain,
    get_job,
    group,
    hookimpl,
    task,
)
from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import NuvomError, UnknownJobError
from nuvom_kernel.kernel import Kernel, get_kernel, use_kernel
from nuvom_kernel.workflow.canvas import Chain
from tests import test_workflows as wf
from tests.helpers import run_nuvom, run_worker_until, write_module
from tests.test_semantics import Cluster


@pytest.fixture(params=wf.BACKENDS)
def cluster(request: pytest.FixtureRequest, project: Path) -> Iterator[Cluster]:
    """A project on a persistent backend; each test starts its workers."""
    write_module(project, "wf_tasks", wf.TASKS)
    cluster = Cluster(project, request.param)
    try:
        with use_kernel(cluster.kernel):
            yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kernel(workflow_kernel: Kernel) -> Kernel:
    """This process's kernel on every workflow backend; workers run in this process."""
    return workflow_kernel


def states(flow) -> list[tuple[str, str]]:
    return [(n.task, n.state) for n in flow.nodes]


def ended(flow) -> Callable[[], bool]:
    return lambda: flow.status != "RUNNING"


# --- the enqueue observers see every step ------------------------------------------------

class StepObserver:
    """Sets a header on every enqueued job (as the OpenTelemetry plugin sets a trace
    context) and notes what the worker's jobs carry."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []
        self.executed: dict[str, object] = {}

    @hookimpl
    def nuvom_before_enqueue(self, job):
        self.before.append(job.id)
        job.headers["tenant"] = "acme"

    @hookimpl
    def nuvom_after_enqueue(self, job):
        self.after.append(job.id)

    @hookimpl
    def nuvom_before_execute(self, job):
        self.executed[job.id] = job.headers.get("tenant")


def test_every_step_is_shown_to_the_enqueue_observers_and_their_headers_travel(
        kernel: Kernel):
    """Workflow steps were stored without ``nuvom_before_enqueue``/``after_enqueue``: no
    producer span, no trace context, no header a plugin adds (a tenant) on any step."""
    from wf_tasks import add, total

    observer = StepObserver()
    kernel.pm.register(observer)
    flow = chain(group(add.s(1), add.s(2)), total.s(), add.s(5)).delay()
    ids = [node.id for node in flow.nodes]
    assert len(ids) == 4
    assert sorted(observer.before) == sorted(ids), "each step, once, when submitted"
    assert sorted(observer.after) == sorted(ids)
    run_worker_until(kernel, ended(flow), "the workflow to end")
    assert flow.status == "SUCCEEDED"
    assert observer.executed == dict.fromkeys(ids, "acme"), "the header reached every step"
    assert flow.get(timeout=5) == (2 + 3) + 5  # add(total([2, 3]), 5)


# --- a step waiting for its parents is a queued job ----------------------------------------

def test_a_waiting_step_reads_queued_and_get_waits_for_it(kernel: Kernel):
    from wf_tasks import add

    flow = chain(add.s(1), add.s(10)).delay()  # no worker yet: the second step waits
    waiting = flow.nodes[1]
    assert waiting.state == "WAITING"
    fresh = get_job(waiting.id)  # from the id alone, as another process would
    assert fresh.status is JobStatus.QUEUED, "an enqueued step must never read UNKNOWN"
    assert fresh.task == "add"
    # it waits for the outcome (it used to raise UnknownJobError at once)
    with pytest.raises(TimeoutError, match="still QUEUED"):
        fresh.get(timeout=0.2)
    with pytest.raises(TimeoutError, match="still QUEUED"):
        waiting.job.get(timeout=0.2)
    assert get_job(uuid.uuid4().hex).status is JobStatus.UNKNOWN, "an unknown id still is"
    assert kernel.queue.waiting_steps() == 1
    run_worker_until(kernel, ended(flow), "the workflow to end")
    assert fresh.get(timeout=5) == 12 and waiting.job.get(timeout=5) == 12


def test_cancelling_a_waiting_step_cancels_it_by_the_graphs_rules(kernel: Kernel):
    from wf_tasks import add, cleanup

    flow = chain(add.s(1), add.s(), add.s()).finally_(cleanup.si("t")).delay()
    first, waiting, after, final = flow.nodes
    assert kernel.queue.waiting_steps() == 3
    job = get_job(waiting.id)
    assert kernel.cancel(job) is True and job.status is JobStatus.CANCELLED
    assert states(flow) == [("add", "QUEUED"), ("add", "CANCELLED"), ("add", "CANCELLED"),
                            ("cleanup", "WAITING")]
    assert kernel.queue.waiting_steps() == 1, "only the finally_ step waits now"
    record = get_job(waiting.id)
    assert record.status is JobStatus.CANCELLED and record.task == "add"
    assert "was cancelled" in (get_job(after.id).error or "")
    assert flow.status == "RUNNING", "its parent is still queued"
    assert get_job(waiting.id).cancel() is False, "a second cancel finds nothing to cancel"

    run_worker_until(kernel, ended(flow), "the workflow to end")
    with pytest.raises(JobCancelledError, match=f"nuvom workflow retry {flow.id}"):
        flow.get(timeout=5)
    assert flow.status == "CANCELLED"
    assert states(flow) == [("add", "SUCCEEDED"), ("add", "CANCELLED"), ("add", "CANCELLED"),
                            ("cleanup", "SUCCEEDED")]
    assert get_job(waiting.id).status is JobStatus.CANCELLED, "its parent left it cancelled"
    assert get_job(first.id).result == 2 and get_job(final.id).result == "t"


def test_a_step_released_while_it_is_cancelled_is_cancelled_in_the_queue(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch):
    """The race of a cancel with the settle of the step's last parent: the kernel finds the
    step in no queue, the parent's settle releases it, then the graph's cancel finds it
    RELEASED: the cancel falls back to cancelling its message in the queue."""
    from wf_tasks import add

    flow = chain(add.s(1), add.s()).delay()
    first, second = flow.nodes
    queue, results = kernel.queue, kernel.results
    [lease] = queue.claim(1)  # this process plays the first step's worker
    assert lease.id == first.id
    real_cancel = queue.cancel

    def cancel_as_the_parent_settles(job_id: str) -> bool:
        found = real_cancel(job_id)  # not queued yet: nothing to cancel
        envelope = Envelope.from_message(lease.message, kernel.serializer)
        assert results.put(envelope.record(JobStatus.SUCCEEDED, result=2,
                                           attempts=lease.deliveries, token=lease.token))
        queue.advance_workflows([(lease, JobStatus.SUCCEEDED, flow.id)])
        assert queue.ack(lease)
        monkeypatch.setattr(queue, "cancel", real_cancel)
        return found

    monkeypatch.setattr(queue, "cancel", cancel_as_the_parent_settles)
    assert kernel.cancel(get_job(second.id)) is True
    assert queue.claim(1) == [], "the released step's message was cancelled"
    assert get_job(second.id).status is JobStatus.CANCELLED
    assert states(flow) == [("add", "SUCCEEDED"), ("add", "CANCELLED")]
    assert flow.status == "CANCELLED"


def test_a_waiting_finally_step_can_be_cancelled_and_the_workflow_still_ends(kernel: Kernel):
    from wf_tasks import add, cleanup

    flow = chain(add.s(1)).finally_(cleanup.si("t")).delay()
    final = flow.nodes[-1]
    assert kernel.cancel(get_job(final.id)) is True
    assert flow.status == "RUNNING", "its other steps have not ended"
    run_worker_until(kernel, ended(flow), "the workflow to end")
    assert flow.status == "CANCELLED"
    assert states(flow) == [("add", "SUCCEEDED"), ("cleanup", "CANCELLED")]
    assert get_job(final.id).status is JobStatus.CANCELLED


def test_a_cancel_that_failed_before_its_graph_moved_is_finished_by_cancelling_again(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch):
    """A cancel removes the step's message and stores its record, then moves its graph: if
    that last call fails (the backend is gone, the process dies), the step is neither queued
    nor pending in its graph and the workflow would stay RUNNING forever. Cancelling the
    step again finishes the job."""
    from wf_tasks import add

    import nuvom_kernel.workflow.settle as settle

    flow = chain(add.s(1), add.s(), add.s()).delay()
    first = flow.nodes[0]
    real = settle.cancelled_step

    def gone(*args: object) -> None:
        raise RuntimeError("the queue backend went away")

    monkeypatch.setattr(settle, "cancelled_step", gone)
    with pytest.raises(RuntimeError, match="went away"):
        kernel.cancel(get_job(first.id))
    monkeypatch.setattr(settle, "cancelled_step", real)
    graph = kernel.queue.read_workflow(flow.id)
    assert graph is not None and graph.nodes[0].state == "RELEASED", "the graph did not move"
    assert kernel.queue.peek_state(first.id) is None
    assert get_job(first.id).status is JobStatus.CANCELLED and flow.status == "RUNNING"

    assert kernel.cancel(get_job(first.id)) is True
    assert flow.status == "CANCELLED"
    assert [state for _, state in states(flow)] == ["CANCELLED"] * 3
    assert "was cancelled" in (get_job(flow.nodes[2].id).error or "")
    assert kernel.cancel(get_job(first.id)) is False, "then there is nothing left to cancel"


def test_the_job_commands_see_and_cancel_a_waiting_step(cluster: Cluster):
    from wf_tasks import add, gated

    cluster.worker("--workers", "2")
    flow = chain(gated.s("hold", 1), add.s(), add.s()).delay()
    cluster.wait(lambda: (cluster.project / "marks" / "hold.started").exists(), "the gate")
    second = flow.nodes[1]
    shown = wf.nuvom_json(cluster, "inspect", "job", second.id, "--format", "json")
    assert shown["status"] == "QUEUED" and shown["task"] == "add"
    assert shown["workflow"] == flow.id
    status = wf.nuvom_json(cluster, "status", "--json")
    assert status["waiting_steps"] == 2 and sum(status["depth"].values()) == 0
    done = run_nuvom(["cancel", "job", second.id], cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr
    assert f"cancelled job {second.id}" in done.stdout
    assert states(flow) == [("gated", "RUNNING"), ("add", "CANCELLED"), ("add", "CANCELLED")]
    assert wf.nuvom_json(cluster, "status", "--json")["waiting_steps"] == 0
    cluster.open_gate("hold")
    with pytest.raises(JobCancelledError):
        flow.get(timeout=20)
    assert flow.status == "CANCELLED" and flow.nodes[0].state == "SUCCEEDED"


# --- a cancelled step leads back to its workflow --------------------------------------------

def test_a_cancelled_step_points_to_its_workflow_and_retry_job_refuses_it(cluster: Cluster):
    from wf_tasks import add, cleanup, total

    flow = chain(group(add.si(1, 1), add.si(2, 2)), total.s()).finally_(
        cleanup.si("c")).delay()
    first, _, join, _ = flow.nodes
    done = run_nuvom(["cancel", "job", first.id], cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr
    cluster.worker("--workers", "2")
    with pytest.raises(JobCancelledError) as info:
        flow.get(timeout=20)
    assert info.value.workflow == flow.id
    assert f"`nuvom workflow retry {flow.id}`" in str(info.value)
    assert "nuvom retry job" not in str(info.value)
    with pytest.raises(JobCancelledError, match="nuvom workflow retry"):
        get_job(first.id).get(timeout=5)
    with pytest.raises(JobCancelledError, match=f"`nuvom workflow retry {flow.id}`"):
        first.job.get(timeout=5)  # a step's handle knows its workflow: the hint names it
    reason = get_job(join.id).error or ""
    assert "a step it depends on was cancelled" in reason and "failed" not in reason

    refused = run_nuvom(["retry", "job", first.id], cluster.project, **cluster.environ)
    assert refused.returncode != 0
    assert f"nuvom workflow retry {flow.id} --from {first.id}" in refused.stderr
    with pytest.raises(NuvomError, match=f"nuvom workflow retry {flow.id} --from"):
        rerun(get_kernel(), first.id)  # the Python API and the dashboard's retry alike
    assert get_job(first.id).run == 1 and get_job(first.id).status is JobStatus.CANCELLED
    assert flow.status == "CANCELLED"

    again = run_nuvom(["workflow", "retry", flow.id], cluster.project, **cluster.environ)
    assert again.returncode == 0, again.stderr
    assert flow.get(timeout=20) == 6
    assert [state for _, state in states(flow)] == ["SUCCEEDED"] * 4


# --- retry --from keeps what a parent staying final did to a join ----------------------------

def test_retry_from_one_parent_keeps_a_join_doomed_by_the_other(cluster: Cluster):
    from wf_tasks import add, boom, cleanup, show

    cluster.worker("--workers", "2")
    failing = group(boom.si(), add.si(1, 2)).then(show.s()).finally_(cleanup.si("f")).delay()
    skipping = group(boom.si().on_failure("skip"), add.si(1, 2)).then(show.s()).delay()
    with pytest.raises(JobFailedError):
        failing.get(timeout=30)
    assert skipping.get(timeout=30) is None
    assert states(failing) == [("boom", "FAILED"), ("add", "SUCCEEDED"), ("show", "CANCELLED"),
                               ("cleanup", "SUCCEEDED")]
    assert states(skipping) == [("boom", "FAILED"), ("add", "SUCCEEDED"), ("show", "SKIPPED")]

    for flow in (failing, skipping):
        rerun = flow.nodes[1].id
        done = run_nuvom(["workflow", "retry", flow.id, "--from", rerun], cluster.project,
                         **cluster.environ)
        assert done.returncode == 0, done.stderr
        assert rerun in done.stdout
    with pytest.raises(JobFailedError) as info:  # the parent that failed still fails it
        failing.get(timeout=30)
    assert info.value.job_id == failing.nodes[0].id
    assert skipping.get(timeout=30) is None
    # the join did not run with a StepFailed: it is cancelled (skipped) again
    assert states(failing) == [("boom", "FAILED"), ("add", "SUCCEEDED"), ("show", "CANCELLED"),
                               ("cleanup", "SUCCEEDED")]
    assert states(skipping) == [("boom", "FAILED"), ("add", "SUCCEEDED"), ("show", "SKIPPED")]
    assert failing.status == "FAILED" and skipping.status == "SUCCEEDED"
    for flow in (failing, skipping):
        assert get_job(flow.nodes[1].id).run == 2, "the re-opened parent ran again"
        join = get_job(flow.nodes[2].id)
        assert join.status is JobStatus.CANCELLED and join.attempts == 0, "the join never ran"
    cleanups = cluster.project / "cleanups"
    cluster.wait(lambda: len(list(cleanups.iterdir())) == 2, "the finally_ step to run again")


# --- canvases refused when built ---------------------------------------------------------------

LAST = r"finally_\(\) must be the last call on the whole workflow"


def test_a_finally_on_a_part_of_a_workflow_is_refused_when_built(
        project: Path, make_kernel: Callable[..., Kernel]):
    """It used to be dropped without a word: the cleanup never ran."""
    write_module(project, "wf_tasks", wf.TASKS)
    from wf_tasks import add, cleanup, echo

    with pytest.raises(ValueError, match=LAST):
        chain(add.s(1)).finally_(cleanup.si("x")).then(echo.s())
    with pytest.raises(ValueError, match=LAST):
        group(chain(add.s(1)).finally_(cleanup.si("x")), add.s(2))
    with pytest.raises(ValueError, match=LAST):
        chain(add.s(0), chain(add.s(1)).finally_(cleanup.si("x")))
    whole = chain(add.s(1)).then(echo.s()).finally_(cleanup.si("x"))
    assert isinstance(whole, Chain) and whole.cleanup is not None, "the last call is fine"
    kernel = make_kernel("memory")
    with use_kernel(kernel), pytest.raises(ValueError, match=LAST):
        Chain((Chain((add.s(1),), cleanup=cleanup.si("x")),)).delay()  # by hand, past chain()
    assert kernel.queue.qsize() == 0 and kernel.queue.waiting_steps() == 0


def test_an_empty_chain_and_a_group_of_a_non_iterable_are_refused_clearly(
        project: Path, make_kernel: Callable[..., Kernel]):
    """An empty chain used to be stored, and its get() raised a bare TypeError."""
    with pytest.raises(ValueError, match="at least one step"):
        chain()
    with pytest.raises(TypeError, match=r"group\(\) takes steps.*got 1 \(use task\.s"):
        group(1)  # type: ignore[arg-type]
    kernel = make_kernel("memory")
    with use_kernel(kernel), pytest.raises(ValueError, match="no steps"):
        Chain(()).delay()  # built by hand, past chain()
    assert kernel.queue.qsize() == 0 and kernel.queue.waiting_steps() == 0


def test_a_step_retried_in_its_workflow_reads_queued_until_it_runs(cluster: Cluster):
    """After `nuvom workflow retry`, the re-opened failed step read FAILED and `get()` raised
    its old error at once, until a worker settled the new run: the last run's terminal
    record won over the queue."""
    from wf_tasks import add, needs_fix  # type: ignore[import-not-found]

    worker = cluster.worker("--workers", "2")
    flow = chain(add.s(1), needs_fix.s(), add.s()).delay()
    with pytest.raises(JobFailedError):
        flow.get(timeout=30)
    assert worker.stop() == 0  # nothing runs the retried steps until the next worker
    graph = flow._graph()
    failed, after = graph.nodes[1].id, graph.nodes[2].id
    assert [get_job(i).status for i in (failed, after)] == [JobStatus.FAILED,
                                                            JobStatus.CANCELLED]
    (cluster.project / "fixed").write_text("")
    done = run_nuvom(["workflow", "retry", flow.id], cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr
    step = get_job(failed)
    assert (step.status, step.run) == (JobStatus.QUEUED, 2), (step.status, step.run)
    with pytest.raises(TimeoutError):
        step.get(timeout=0.2)  # waits for the new run, not the old error
    cluster.worker("--workers", "2")
    assert flow.get(timeout=30) == 5
    assert get_job(failed).status is JobStatus.SUCCEEDED


def test_a_step_whose_arguments_do_not_fit_is_refused_before_anything_is_stored(
        kernel: Kernel) -> None:
    """The step failed on a worker, and with it the workflow; the previous step's result
    counts as the first argument of a ``.s()`` step, not of an ``.si()`` one."""
    @task
    def wf_pair(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"task 'wf_pair' cannot take these arguments: too "
                                        r"many positional arguments\. Its signature is "
                                        r"wf_pair\(x, y\); nothing was enqueued"):
        chain(wf_pair.s(1, 2), wf_pair.s(3, 4)).delay()  # the input, 3 and 4
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        chain(wf_pair.s(1, 2), wf_pair.si(3)).delay()
    assert kernel.queue.qsize() == 0 and kernel.queue.waiting_steps() == 0
    chain(wf_pair.s(1, 2), wf_pair.s(3), wf_pair.si(1, 1)).delay()
    assert kernel.queue.qsize() == 1 and kernel.queue.waiting_steps() == 2


def test_get_of_a_workflow_whose_step_records_expired_says_so(kernel: Kernel) -> None:
    """The graph outlives its steps' records (each expires by its own end): ``get()`` of
    the failed workflow raised "failed: None: None", and of the succeeded one a step's
    input error ("an input of this step"); ``Job.get()`` of an expired record raises
    ``UnknownJobError``, and so does this now, saying why."""
    from wf_tasks import add, boom

    failed = chain(boom.si(), add.s(1)).delay()
    done = chain(add.si(1, 1), add.s(2)).delay()
    run_worker_until(kernel, lambda: ended(failed)() and ended(done)(), "both to end")
    kernel.results.purge(time.time() + 1)  # as result_ttl_secs does
    for flow, status, what in ((failed, "FAILED", "its error"),
                               (done, "SUCCEEDED", "its result")):
        with pytest.raises(UnknownJobError, match=rf"workflow {flow.id} ended {status}, but "
                           rf"the record of step \w+ is no longer stored, so {what} is not "
                           r"known: .*result_ttl_secs"):
            flow.get(timeout=5)
