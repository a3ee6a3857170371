"""Workflows (issue 20) end to end: real `nuvom runworker` processes on SQLite and the file
backend, through the public API (``task.s()``, ``chain``, ``group``, ``get_workflow``).

Tasks synchronize with the test through files (marks they leave, gates they wait for); the
test waits on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import (
    JobCancelledError,
    JobFailedError,
    JobStatus,
    chain,
    get_job,
    get_workflow,
    group,
)
from nuvom_kernel.backends import Capabilities
from nuvom_kernel.errors import BackendCapabilityError, NuvomError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.workflow import StepFailed
from tests.helpers import PERSISTENT_BACKENDS, run_nuvom, wait_until, write_module
from tests.test_semantics import Cluster

BACKENDS = [b for b in ("sqlite", "file") if b in PERSISTENT_BACKENDS]

TASKS = """
import pathlib, time, uuid
from nuvom_kernel import current_job, task


def touch(folder, name):
    path = pathlib.Path(folder)
    path.mkdir(exist_ok=True)
    (path / name).write_text("")


def gate(name):
    while not pathlib.Path("gates", name).exists():
        time.sleep(0.01)


@task(store_result=False)          # workflows keep a step's result whatever this says
def add(x, y=1):
    return x + y


@task
def total(xs):
    return sum(xs)


@task
def echo(x):
    return x


@task
def show(x):
    return {"type": type(x).__name__, "value": repr(x)}


@task
def boom(*args):
    raise RuntimeError("boom")


@task(retries=2, retry_delay_secs=0)
def flaky(x):
    if current_job().attempts < 2:
        raise RuntimeError("first attempt fails")
    return x * 10


@task(retries=1, retry_delay_secs=0)
def always_fails(x):
    raise ValueError(f"attempt {current_job().attempts} fails")


@task
def gated(name, value=None):
    touch("marks", f"{name}.started")
    gate(name)
    return value


@task
def needs_fix(x):
    if not pathlib.Path("fixed").exists():
        raise RuntimeError("not fixed yet")
    return x * 2


@task
def cleanup(tag):
    touch("cleanups", f"{tag}.{uuid.uuid4().hex}")
    return tag


@task
def member(i):
    touch("members", f"{i}.{current_job().attempts}.{uuid.uuid4().hex}")
    return i


@task
def join(xs):
    job = current_job()
    touch("joins", f"{job.run}.{job.attempts}.{uuid.uuid4().hex}")
    return sum(xs)
"""


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, project: Path) -> Iterator[Cluster]:
    write_module(project, "wf_tasks", TASKS)
    cluster = Cluster(project, request.param)
    try:
        with use_kernel(cluster.kernel):
            cluster.worker("--workers", "4")
            yield cluster
    finally:
        cluster.close()


def states(wf) -> list[tuple[str, str]]:
    return [(n.task, n.state) for n in wf.nodes]


# --- chains, si, groups, joins, nesting -------------------------------------------------

def test_chain_passes_each_result_on_and_si_ignores_it(cluster: Cluster):
    from wf_tasks import add, echo

    wf = chain(add.s(1), add.s(10), add.s(100)).delay()
    assert wf.get(timeout=20) == 112
    assert wf.status == "SUCCEEDED"
    assert [n.state for n in wf.nodes] == ["SUCCEEDED"] * 3
    # a result kept for its dependents although the task says store_result=False
    assert wf.nodes[0].job.result == 2
    assert chain(add.s(1), echo.si("ignored the 2")).delay().get(timeout=20) == "ignored the 2"
    again = get_workflow(wf.id)
    assert again.id == wf.id and again.get(timeout=1) == 112


def test_group_then_join_keeps_member_order_and_edge_sizes(cluster: Cluster):
    from wf_tasks import add, echo, total

    wf = group(add.s(i) for i in range(20)).then(total.s()).delay()
    assert wf.get(timeout=30) == sum(range(1, 21))
    assert group(echo.s(i) for i in range(8)).delay().get(timeout=20) == list(range(8))
    empty = group().delay()
    assert empty.status == "SUCCEEDED" and empty.get(timeout=1) == []
    assert group().then(echo.s()).delay().get(timeout=20) == []
    assert chain(add.s(1), group(), echo.s()).delay().get(timeout=20) == []
    assert group(add.s(1)).delay().get(timeout=20) == [2]
    assert group(add.s(1)).then(total.s()).delay().get(timeout=20) == 2


def test_chains_and_groups_nest(cluster: Cluster):
    from wf_tasks import add, echo

    wf = chain(add.s(1),                                        # 2
               group(add.s(),                                   # 3
                     chain(add.s(), add.s()),                   # 4
                     group(add.s(5), echo.s())),                # [7, 2]
               echo.s()).delay()
    assert wf.get(timeout=30) == [3, 4, [7, 2]]
    inner = group(chain(add.s(1), add.s(1)), chain(add.s(10), group(add.s(), add.s(2))))
    assert inner.then(echo.s()).delay().get(timeout=30) == [3, [12, 13]]


# --- failure policies, retries, finally_ ---------------------------------------------------

def test_fail_cancels_dependents_lets_siblings_finish_and_fails_the_workflow(cluster: Cluster):
    from wf_tasks import boom, gated, total

    wf = group(gated.s("sibling", 1), boom.s()).then(total.s()).delay()
    cluster.wait(lambda: (cluster.project / "marks" / "sibling.started").exists(),
                 "the sibling to start")
    failed = wf.nodes[1]
    cluster.wait(lambda: get_job(failed.id).status is JobStatus.FAILED, "the member to fail")
    assert wf.status == "RUNNING", "a running sibling must finish before the workflow ends"
    cluster.open_gate("sibling")
    with pytest.raises(JobFailedError) as info:
        wf.get(timeout=20)
    assert info.value.job_id == failed.id and "boom" in str(info.value)
    assert wf.status == "FAILED"
    assert states(wf) == [("gated", "SUCCEEDED"), ("boom", "FAILED"), ("total", "CANCELLED")]
    assert get_job(wf.nodes[2].id).status is JobStatus.CANCELLED


def test_continue_hands_dependents_a_step_failed_value(cluster: Cluster):
    from wf_tasks import add, always_fails, show

    wf = group(add.s(1), always_fails.s(0).on_failure("continue")).then(show.s()).delay()
    out = wf.get(timeout=30)
    assert out["type"] == "list" and "StepFailed" in out["value"]
    assert "ValueError" in out["value"] and "attempt 2 fails" in out["value"]
    assert wf.status == "SUCCEEDED"
    # its retries happened inside the step before the policy applied
    assert get_job(wf.nodes[1].id).attempts == 2
    last = chain(always_fails.s(1).on_failure("continue")).delay().get(timeout=30)
    assert isinstance(last, StepFailed) and last.error_type == "ValueError"


def test_skip_skips_dependents_and_the_workflow_goes_on(cluster: Cluster):
    from wf_tasks import add, boom, echo

    wf = group(chain(add.s(1), boom.s().on_failure("skip"), add.s(), add.s()),
               echo.s("other")).delay()
    assert wf.get(timeout=30) == [None, "other"]
    assert wf.status == "SUCCEEDED"
    assert states(wf) == [("add", "SUCCEEDED"), ("boom", "FAILED"), ("add", "SKIPPED"),
                          ("add", "SKIPPED"), ("echo", "SUCCEEDED")]
    assert get_job(wf.nodes[2].id).status is JobStatus.CANCELLED  # never ran


def test_a_retried_step_succeeds_inside_the_chain(cluster: Cluster):
    from wf_tasks import add, flaky

    wf = chain(add.s(1), flaky.s(), add.s()).delay()
    assert wf.get(timeout=30) == 21
    assert get_job(wf.nodes[1].id).attempts == 2


def test_finally_runs_once_whatever_the_outcome_and_ends_the_workflow(cluster: Cluster):
    from wf_tasks import add, boom, gated

    ok = chain(add.s(1), add.s()).finally_(gated.si("cleanup-ok", "done")).delay()
    bad = chain(boom.s(), add.s()).finally_(gated.si("cleanup-bad")).delay()
    for name in ("cleanup-ok", "cleanup-bad"):
        cluster.wait(lambda name=name: (cluster.project / "marks" / f"{name}.started").exists(),
                     f"{name} to start")
    assert ok.status == "RUNNING" and bad.status == "RUNNING"
    cluster.open_gate("cleanup-ok")
    cluster.open_gate("cleanup-bad")
    assert ok.get(timeout=20) == 3
    with pytest.raises(JobFailedError):
        bad.get(timeout=20)
    assert bad.status == "FAILED"
    assert states(bad) == [("boom", "FAILED"), ("add", "CANCELLED"), ("gated", "SUCCEEDED")]
    assert ok.nodes[-1].state == "SUCCEEDED"


def test_a_failing_finally_fails_the_workflow(cluster: Cluster):
    from wf_tasks import add, boom

    wf = chain(add.s(1)).finally_(boom.si()).delay()
    with pytest.raises(JobFailedError):
        wf.get(timeout=20)
    assert wf.status == "FAILED"


def test_process_pool_children_get_inputs_and_step_failed_values(cluster: Cluster):
    from wf_tasks import add, always_fails, show

    for worker in cluster.workers:
        worker.kill()
    cluster.worker("--pool", "process", "--workers", "2")
    wf = group(add.s(1), always_fails.s(0).on_failure("continue")).then(show.s()).delay()
    out = wf.get(timeout=60)
    assert out["type"] == "list" and out["value"].startswith("[2, StepFailed(job_id=")
    assert "error_type='ValueError'" in out["value"]


def test_cancelling_a_step_cancels_its_dependents_and_ends_the_workflow(cluster: Cluster):
    from wf_tasks import add

    for worker in cluster.workers:  # nothing runs: the first step stays queued
        worker.kill()
    wf = chain(add.s(1), add.s(), add.s()).finally_(add.si(0)).delay()
    done = run_nuvom(["cancel", "job", wf.nodes[0].id], cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr
    assert states(wf) == [("add", "CANCELLED")] * 3 + [("add", "QUEUED")]
    assert wf.status == "RUNNING", "the finally_ step (released) has not run yet"
    cluster.worker("--workers", "2")
    with pytest.raises(JobCancelledError):
        wf.get(timeout=20)
    assert wf.status == "CANCELLED" and wf.nodes[-1].state == "SUCCEEDED"


# --- a crash while a join's last parent settles ---------------------------------------------

def test_sigkill_while_the_last_parent_settles_releases_the_join_once(cluster: Cluster):
    """The worker is SIGKILLed the moment the last member has run, so its outcome is being
    settled (or about to be) when the process dies; three rounds, each on a fresh worker.
    A join released twice would run a second message from attempt 1 again; a redelivery
    of the one release runs as the next attempt. (It found the file backend pushing before
    saving its graph, which ran a join twice.)"""
    from wf_tasks import join, member

    for worker in cluster.workers:  # this test starts and kills its own
        worker.kill()
    members = 12
    marks, joins = cluster.project / "members", cluster.project / "joins"
    every = {str(i) for i in range(members)}

    def all_ran() -> bool:
        return marks.exists() and every <= {p.name.split(".")[0] for p in marks.iterdir()}

    for _ in range(3):
        wf = group(member.s(i) for i in range(members)).then(join.s()).delay()
        worker = cluster.worker("--workers", "4")
        cluster.wait(all_ran, "every member to run", timeout=30)
        worker.proc.send_signal(signal.SIGKILL)
        worker.kill()
        cluster.worker("--workers", "4")
        assert wf.get(timeout=60) == sum(range(members))
        # each run of the join is a delivery of its one message (attempt 1, then 2 if the
        # killed worker had claimed it): a second release would repeat an attempt number
        attempts = sorted(p.name.split(".")[1] for p in joins.iterdir())
        assert attempts and len(set(attempts)) == len(attempts), \
            f"the join was released more than once: its runs were attempts {attempts}"
        record = get_job(wf.nodes[-1].id)
        assert record.status is JobStatus.SUCCEEDED and record.result == sum(range(members))
        assert [n.state for n in wf.nodes] == ["SUCCEEDED"] * (members + 1)
        assert wf.status == "SUCCEEDED"
        for path in [*joins.iterdir(), *marks.iterdir()]:
            path.unlink()
        for w in cluster.workers:
            w.kill()


def test_a_crash_between_advancing_and_acking_releases_the_join_once(cluster: Cluster):
    """The exact window of a non-transactional settle: the last parent's outcome is stored
    and the graph advanced (the join released), then its worker dies before the ack. The
    parent runs again (its lease expires) and settles again; the join runs once."""
    from wf_tasks import join, member

    from nuvom_kernel.envelope import Envelope

    for worker in cluster.workers:  # no worker yet: this process plays the dying one
        worker.kill()
    wf = group(member.s(0), member.s(1)).then(join.s()).delay()
    queue, results, serializer = (cluster.kernel.queue, cluster.kernel.results,
                                  cluster.kernel.serializer)
    leases = sorted(queue.claim(2), key=lambda lease: lease.id != wf.nodes[0].id)
    for i, lease in enumerate(leases):
        envelope = Envelope.from_message(lease.message, serializer)
        record = envelope.record(JobStatus.SUCCEEDED, result=i, attempts=lease.deliveries,
                                 token=lease.token)
        assert results.put(record)
        queue.advance_workflows([(lease, JobStatus.SUCCEEDED, wf.id)])
    assert queue.ack(leases[0])
    assert queue.peek_state(wf.nodes[2].id) is JobStatus.QUEUED, "the join was released"
    assert queue.extend(leases[1], 0)  # the dead worker's lease expires
    cluster.worker("--workers", "2")
    assert wf.get(timeout=30) == 1
    joins = [p.name.split(".")[1] for p in (cluster.project / "joins").iterdir()]
    assert joins == ["1"], f"the join ran {joins}"
    reran = [p.name for p in (cluster.project / "members").iterdir()]
    assert len(reran) == 1 and reran[0].startswith("1.2."), "the parent ran again"
    # The join may finish before the parent's second run has settled (both run at once).
    wait_until(lambda: get_job(wf.nodes[1].id).attempts == 2, 30,
               "the parent's second run to be recorded")


# --- the command line -------------------------------------------------------------------

def nuvom_json(cluster: Cluster, *args: str) -> dict:
    done = run_nuvom(list(args), cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_status_counts_waiting_steps_apart_from_queued_jobs(cluster: Cluster):
    from wf_tasks import add, gated

    wf = chain(gated.s("hold", 1), add.s(), add.s()).delay()
    cluster.wait(lambda: (cluster.project / "marks" / "hold.started").exists(), "the gate")
    status = nuvom_json(cluster, "status", "--json")
    assert status["waiting_steps"] == 2
    assert sum(status["depth"].values()) == 0, "waiting steps are not queued jobs"
    cluster.open_gate("hold")
    assert wf.get(timeout=20) == 3
    assert nuvom_json(cluster, "status", "--json")["waiting_steps"] == 0


def test_inspect_and_retry_rerun_the_failed_part_keeping_succeeded_results(cluster: Cluster):
    from wf_tasks import add, cleanup, needs_fix

    wf = chain(add.s(1), needs_fix.s(), add.s()).finally_(cleanup.si("t")).delay()
    with pytest.raises(JobFailedError):
        wf.get(timeout=20)
    graph = nuvom_json(cluster, "workflow", "inspect", wf.id, "--json")
    assert graph["id"] == wf.id and graph["status"] == "FAILED"
    assert [(n["task"], n["state"], n["attempts"]) for n in graph["nodes"]] == [
        ("add", "SUCCEEDED", 1), ("needs_fix", "FAILED", 1), ("add", "CANCELLED", 0),
        ("cleanup", "SUCCEEDED", 1)]
    first, failed, _, final = graph["nodes"]
    assert failed["parents"] == [first["id"]] and final["finally"]
    assert failed["duration_ms"] is not None and failed["error_type"] == "RuntimeError"
    table = run_nuvom(["workflow", "inspect", wf.id], cluster.project, **cluster.environ)
    assert "needs_fix" in table.stdout and "FAILED" in table.stdout
    assert failed["id"] in table.stdout, "the table's ids must be ones `retry --from` takes"

    cancelled = graph["nodes"][2]  # re-opened alone, it was cancelled again at once, while
    # the command said it re-ran it (and `nuvom retry job` of it suggested just that)
    refused = run_nuvom(["workflow", "retry", wf.id, "--from", cancelled["id"]],
                        cluster.project, **cluster.environ)
    assert refused.returncode != 0
    assert (f"it waits on step {failed['id']}, which stays FAILED" in refused.stderr and
            f"--from {failed['id']}`" in refused.stderr), refused.stderr
    advice = run_nuvom(["retry", "job", cancelled["id"]], cluster.project, **cluster.environ)
    assert advice.returncode != 0  # it suggested `--from` the cancelled step itself
    assert f"`nuvom workflow retry {wf.id} --from {failed['id']}` (step {failed['id']}, " \
        "which it waits on, ended as it did)" in advice.stderr, advice.stderr

    (cluster.project / "fixed").write_text("")
    done = run_nuvom(["workflow", "retry", wf.id], cluster.project, **cluster.environ)
    assert done.returncode == 0, done.stderr
    assert failed["id"] in done.stdout and first["id"] not in done.stdout
    assert wf.get(timeout=20) == 5
    assert get_job(first["id"]).run == 1, "a succeeded step keeps its result"
    assert get_job(failed["id"]).run == 2
    assert len(list((cluster.project / "cleanups").iterdir())) == 2

    again = run_nuvom(["workflow", "retry", wf.id, "--from", first["id"]], cluster.project,
                      **cluster.environ)
    assert again.returncode == 0, again.stderr
    assert wf.get(timeout=20) == 5
    assert get_job(first["id"]).run == 2
    bad = run_nuvom(["workflow", "retry", wf.id, "--from", "nope"], cluster.project,
                    **cluster.environ)
    assert bad.returncode != 0 and "is not a step" in bad.stderr
    unknown = run_nuvom(["workflow", "inspect", "nope"], cluster.project, **cluster.environ)
    assert unknown.returncode != 0 and "unknown workflow id" in unknown.stderr
    # a step's id, as `list jobs` and `inspect job` show it: said unknown before
    step = run_nuvom(["workflow", "inspect", failed["id"]], cluster.project, **cluster.environ)
    assert step.returncode != 0
    assert (f"{failed['id']!r} is a step of workflow {wf.id}, not a workflow id: `nuvom "
            f"workflow inspect {wf.id}` shows it") in step.stderr, step.stderr


def test_inspect_of_a_join_after_a_big_group_stays_one_short_row_per_step(
        cluster: Cluster):
    """The join's row listed all of its parents and every row was padded to its width:
    a group of 5,000 printed 225 MB. Its row names three and counts the rest."""
    from wf_tasks import join, member

    flow = chain(group(*(member.s(i) for i in range(200))), join.s()).delay()
    table = run_nuvom(["workflow", "inspect", flow.id], cluster.project, **cluster.environ)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 1 + 1 + 201  # the summary, the header, a row per step
    assert max(len(line) for line in lines) < 200
    assert sum("+197 more" in line for line in lines) == 1
    graph = nuvom_json(cluster, "workflow", "inspect", flow.id, "--json")
    assert len(graph["nodes"][-1]["parents"]) == 200, "--json keeps them all"


def test_purge_removes_ended_workflows_and_a_purged_input_fails_its_step(cluster: Cluster):
    from wf_tasks import add, gated, total

    ended = chain(add.s(1), add.s()).delay()
    assert ended.get(timeout=20) == 3
    running = group(add.s(1), gated.s("purge", 1)).then(total.s()).delay()
    cluster.wait(lambda: (cluster.project / "marks" / "purge.started").exists(), "the gate")
    cluster.wait(lambda: get_job(running.nodes[0].id).status is JobStatus.SUCCEEDED,
                 "the first member")
    done = run_nuvom(["purge", "results", "--older-than", "0s"], cluster.project,
                     **cluster.environ)
    assert done.returncode == 0, done.stderr
    assert "purged 1 workflow(s)" in done.stdout, done.stdout
    with pytest.raises(NuvomError, match="unknown workflow id"):
        get_workflow(ended.id)
    cluster.open_gate("purge")
    with pytest.raises(JobFailedError, match="no longer stored") as failed:
        running.get(timeout=20)
    assert [n.state for n in running.nodes] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    # its message was sound: not copied to quarantine as a body that does not decode
    assert "quarantine" not in str(failed.value)
    assert cluster.kernel.queue.stats().quarantined == []


# --- refusal ---------------------------------------------------------------------------------

def test_a_backend_without_the_capability_refuses_with_a_clear_error(project: Path):
    write_module(project, "wf_tasks", TASKS)
    from wf_tasks import add

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory"})
    kernel.queue.capabilities = Capabilities()  # type: ignore[misc]
    with use_kernel(kernel), pytest.raises(BackendCapabilityError, match="workflows"):
        chain(add.s(1), add.s()).delay()
    assert kernel.queue.qsize() == 0


def test_bad_canvas_input_is_refused_naming_it(project: Path):
    write_module(project, "wf_tasks", TASKS)
    from wf_tasks import add

    with pytest.raises(TypeError, match=r"task.s\(...\)"):
        chain(add.s(1), add)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'fail', 'continue', 'skip'"):
        add.s(1).on_failure("ignore")


def test_memory_backend_runs_workflows_in_process(project: Path):
    write_module(project, "wf_tasks", TASKS)
    from wf_tasks import add, total

    from nuvom_kernel.worker import Worker

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory"})
    with use_kernel(kernel):
        worker = Worker(kernel, workers=2)
        worker.start()
        try:
            wf = chain(add.s(1), group(add.s(), add.s(2)), total.s()).delay()
            assert wf.get(timeout=20) == 7
        finally:
            worker.stop()
