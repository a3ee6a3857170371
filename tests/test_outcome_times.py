"""The times an outcome reports to observers (``nuvom_after_settle``: the Prometheus wait
and run histograms), measured on a real worker and a real SQLite queue."""

from __future__ import annotations

from pathlib import Path

from nuvom_kernel import chain, hookimpl
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.outcome import Outcome
from tests.helpers import run_worker_until, write_module

TASKS = """
import time
from nuvom_kernel import task


@task
def slow():
    time.sleep(2.0)   # the work itself, not a synchronization: the parent's run time


@task
def quick():
    return "done"
"""


class Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    @hookimpl
    def nuvom_after_settle(self, outcome: Outcome) -> None:
        self.outcomes[outcome.task] = outcome


def test_a_workflow_step_waits_from_its_release_not_from_the_workflows_submit(
        project: Path) -> None:
    """A step's message is pushed when its parent finishes; its record keeps the workflow's
    submit time. The wait was measured from the submit, so the second step of a chain read
    as having waited its parent's whole run in the queue."""
    write_module(project, "timed_tasks", TASKS)
    from timed_tasks import quick, slow

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "sqlite"})
    recorder = Recorder()
    kernel.pm.register(recorder, name="test-recorder")
    with use_kernel(kernel):
        wf = chain(slow.si(), quick.si()).delay()
        run_worker_until(kernel, lambda: wf.status == "SUCCEEDED", "the chain to finish")
    parent, step = recorder.outcomes["slow"], recorder.outcomes["quick"]
    assert parent.run_secs >= 2.0
    assert step.due_at >= parent.finished_at, "due when its parent's settle released it"
    # measured from the submit, the step's wait held its parent's whole run
    assert 0 <= step.wait_secs < parent.run_secs, (step.wait_secs, parent.run_secs)
