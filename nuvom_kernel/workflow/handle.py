"""Reading workflows: the :class:`Workflow` handle, :func:`get_workflow`, :class:`StepFailed`
and the worker's resolution of a step's input (the results it depends on, read when it runs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import (
    CorruptWorkflowError,
    JobFailedError,
    NuvomError,
    SerializationError,
    UnknownJobError,
)
from nuvom_kernel.job import Job, check_wait, not_in_a_task, queued_hint
from nuvom_kernel.models import JobRecord, JobStatus, Message, StepFailed
from nuvom_kernel.serialization import from_wire
from nuvom_kernel.workflow.damage import ended_by_damage
from nuvom_kernel.workflow.graph import blocked_by, doomed_record, reset
from nuvom_kernel.workflow.shape import (
    CANCELLED,
    FAILED,
    INPUT_HEADER,
    NODE_FINAL,
    RELEASED,
    RUNNING,
    SKIPPED_ERROR,
    SUCCEEDED,
    WAITING,
    WF_HEADER,
    WorkflowGraph,
)
from nuvom_kernel.workflow.steps import cancelled_error
from nuvom_kernel.workflow.stranded import StrandedWatch, resume, stranded_error, stranded_steps

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["StepFailed", "Workflow", "WorkflowNode", "get_workflow", "resolve_input"]


@attrs.frozen
class WorkflowNode:
    """One step as :attr:`Workflow.nodes` shows it: its job handle and state (WAITING,
    SKIPPED, or its job's state)."""

    id: str
    task: str
    state: str
    policy: str
    job: Job
    parents: tuple[str, ...]


class Workflow:
    """A handle on a submitted workflow; works from any process (:func:`get_workflow`)."""

    def __init__(self, workflow_id: str, kernel: Kernel) -> None:
        self.id = workflow_id
        self._kernel = kernel

    def __repr__(self) -> str:
        return f"<Workflow {self.id}>"

    def _graph(self, nodes: bool = True) -> WorkflowGraph:
        try:
            graph = self._kernel.queue.read_workflow(self.id, nodes=nodes)
        except CorruptWorkflowError as exc:
            raise self._damaged(exc, nodes) from None
        if graph is None:
            raise NuvomError(f"unknown workflow id {self.id!r} on queue backend "
                             f"{self._kernel.queue.name!r}")
        return graph

    def _damaged(self, exc: CorruptWorkflowError, nodes: bool) -> CorruptWorkflowError:
        """``exc`` (a damaged step, found reading the whole graph) saying how the workflow
        stands: the store raised it knowing nothing of the head, whose FAILED (written by
        the settle that found the damage) tells ``get()`` and ``nuvom workflow inspect``
        the workflow ended and its waiting steps will not run."""
        if not nodes or exc.status is not None:
            return exc
        try:
            head = self._kernel.queue.read_workflow(self.id, nodes=False)
        except CorruptWorkflowError:
            return exc  # the head itself is damaged: nothing says the workflow ended
        if head is None or head.flow.status == RUNNING:
            return exc
        return CorruptWorkflowError(exc.workflow_id, exc.where, exc.detail,
                                    status=head.flow.status)

    @property
    def status(self) -> str:
        """RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        return self._graph(nodes=False).flow.status

    @property
    def nodes(self) -> list[WorkflowNode]:
        """Every step in submission order, the ``finally_`` step last."""
        graph = self._graph()
        parents: dict[str, list[str]] = {}
        for node in graph.nodes:
            for child in node.children:
                parents.setdefault(child, []).append(node.id)
        out = []
        for node in graph.nodes:
            # the header tells later reads (job.get() while it waits) where it is
            job = Job(id=node.id, task=node.task, kernel=self._kernel,
                      headers={WF_HEADER: self.id})
            if node.state == WAITING:
                job.status = JobStatus.QUEUED
            else:
                self._kernel.refresh_job(job)
            # a final state is the graph's (a purged record does not make it UNKNOWN); a
            # released step's is its job's: QUEUED, RUNNING or RETRYING
            state = node.state if node.state in NODE_FINAL or node.state == WAITING \
                else job.status.value
            out.append(WorkflowNode(node.id, node.task, state, node.policy, job,
                                    tuple(parents.get(node.id, ()))))
        return out

    def get(self, timeout: float | None = None, poll_secs: float = 0.05, *,
            allow_in_task: bool = False) -> Any:
        """Wait for the end and return the last step's result (a group's: the list of its
        members' results). Refused inside a task a worker runs unless ``allow_in_task``, as
        ``Job.get()`` is.

        :raises JobFailedError: a step with the ``"fail"`` policy (or the ``finally_``
            step) failed: the first such step's error.
        :raises JobCancelledError: a step was cancelled.
        :raises CorruptWorkflowError: its stored graph is damaged (the entry named); a
            settle that found it ended the workflow FAILED where it could write its head.
        :raises NuvomError: it ended FAILED because its graph was damaged, and the entry
            was restored since (its waiting steps were cancelled: submit it again); or it
            cannot move on, a step of it stranded for a minute
            (:mod:`~nuvom_kernel.workflow.stranded`: :meth:`resume` moves it on).
        :raises TimeoutError: not finished within ``timeout`` seconds.
        """
        check_wait(timeout, poll_secs)
        if not allow_in_task:
            not_in_a_task(f"workflow {self.id}")
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.002
        kernel = self._kernel
        watch = StrandedWatch(kernel.queue, kernel.results, kernel.serializer, self.id,
                              kernel.settings.visibility_timeout_secs)
        while True:
            graph = self._graph(nodes=False)
            if graph.flow.status != RUNNING:
                break
            watch.check(graph, self._graph)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id} is still RUNNING after {timeout} s"
                                   f"{self._waiting_hint()}{watch.hint()}")
            time.sleep(interval if deadline is None
                       else max(0.0, min(interval, deadline - time.monotonic())))
            interval = min(interval * 2, poll_secs)
        status = graph.flow.status
        if status == SUCCEEDED:
            gone = [i for i in _flatten(graph.output, [])
                    if self._kernel.results.get(i) is None]
            if gone:
                raise self._record_gone(status, gone[0], "its result")
            return _resolve(self._kernel, graph.output)
        full = self._graph()
        for node in full.nodes:
            if node.state == FAILED and (node.policy == "fail" or node.final):
                record = self._kernel.results.get(node.id)
                if record is None:
                    raise self._record_gone(status, node.id, "its error")
                raise JobFailedError(node.id, record.error_type, record.error_message,
                                     record.traceback)
        damaged = ended_by_damage(full)
        if damaged is not None:  # not "cancelled: workflow retry": a retry cannot mend it
            raise damaged
        for node in full.nodes:
            if node.state == CANCELLED:  # its record says why, as Job.get() tells it
                job = Job(id=node.id, task=node.task, kernel=self._kernel,
                          headers={WF_HEADER: self.id})
                raise cancelled_error(self._kernel, self._kernel.refresh_job(job))
        raise NuvomError(f"workflow {self.id} ended {status} with no failed step recorded")

    def _record_gone(self, status: str, step: str, what: str) -> UnknownJobError:
        """Why: the workflow's graph outlived its steps' records (each expires by its own
        end), and ``get()`` raised "failed: None: None", or a step's input error."""
        return UnknownJobError(
            f"workflow {self.id} ended {status}, but the record of step {step} is no longer "
            f"stored, so {what} is not known: it was purged (`nuvom purge results`) or it "
            "expired (the result backend's result_ttl_secs counts from each step's end)")

    def _waiting_hint(self) -> str:
        """Why the workflow may not move, from a released step that no worker holds: the
        live workers named as ``Job.get()`` names them (it asked "is a worker running?"
        beside a worker serving other queues). A hint, never an error: the timeout is."""
        kernel = self._kernel
        try:
            waiting = next((n for n in self._graph().nodes if n.state == RELEASED and
                            kernel.queue.peek_state(n.id) is JobStatus.QUEUED), None)
        except Exception:
            return ""
        if waiting is None:  # its steps run, or wait for their retry delays
            return ""
        return (f"; step {waiting.id} ({waiting.task}) waits in queue {waiting.queue!r}"
                + (queued_hint(waiting.queue, kernel) or "; is a worker running (`nuvom "
                   f"runworker`) on the same backend, serving queue {waiting.queue!r}?"))

    def retry(self, from_node: str | None = None) -> list[str]:
        """Run the failed, cancelled and skipped steps again (or ``from_node`` and every
        step depending on it), with the steps depending on them; succeeded steps outside
        keep their results. Returns the ids of the steps re-opened.

        :raises NuvomError: the workflow is still RUNNING, ``from_node`` is not a step, or
            a settle ended it because its graph was found damaged (:func:`ended_by_damage`:
            re-opened, its steps waited forever for one whose outcome never reached the
            graph; it runs again only when submitted again).
        :raises CorruptWorkflowError: its graph is still damaged.
        """
        kernel = self._kernel
        graph = self._graph()
        if graph.flow.status == RUNNING:
            stranded = stranded_steps(kernel.queue, kernel.results, kernel.serializer, graph)
            if stranded:
                raise stranded_error(self.id, stranded)
            raise NuvomError(f"workflow {self.id} is still RUNNING; retry it once it ended "
                             f"(see `nuvom workflow inspect {self.id}`)")
        damaged = ended_by_damage(graph)
        if damaged is not None:
            raise damaged
        if from_node is not None and from_node not in {n.id for n in graph.nodes}:
            raise NuvomError(f"{from_node!r} is not a step of workflow {self.id}; the steps "
                             f"are listed by `nuvom workflow inspect {self.id}`")
        blocker = None if from_node is None else blocked_by(graph, from_node)
        if blocker is not None:
            raise NuvomError(
                f"step {from_node} of workflow {self.id} would not run: it waits on step "
                f"{blocker.id}, which stays {blocker.state} (re-opened alone, the step is "
                f"cancelled or skipped again at once). Re-run from that step: `nuvom "
                f"workflow retry {self.id} --from {blocker.id}`, or `nuvom workflow retry "
                f"{self.id}` for every failed, cancelled and skipped step")
        busy = [n.id for n in graph.nodes if kernel.queue.peek_state(n.id) is not None]
        if busy:
            raise NuvomError(f"step {busy[0]} of workflow {self.id} is still in the queue (its "
                             "outcome is being settled); try again in a moment")

        fresh: dict[str, Envelope] = {}  # the re-opened steps' next runs

        def next_run(bodies: dict[str, bytes]) -> dict[str, bytes]:
            out = {}
            for node_id, body in bodies.items():
                envelope = Envelope.from_message(Message(id=node_id, body=body),
                                                 kernel.serializer)
                record = kernel.results.get(node_id)
                envelope.run = max(envelope.run, record.run if record else 0) + 1
                envelope.history = []
                out[node_id] = envelope.to_body(kernel.serializer)
                fresh[node_id] = envelope
            return out

        start = None if from_node is None else [from_node]
        reopened, doomed = kernel.queue.workflow_transaction(
            lambda txn: reset(txn, self.id, start, next_run), [self.id])
        # A step released now is QUEUED in its next run: its last run's FAILED (or
        # CANCELLED) record was terminal, which wins over the queue, so it read FAILED and
        # `get()` raised its old error until a worker settled the new run. Stored after
        # the release, it cannot hide an outcome: a worker that settled the new run
        # already holds a record this one does not supersede (fencing). A step still
        # waiting for its parents keeps its old record until then: it may yet be doomed
        # again, and its doomed record (run 1) must not be fenced out by a newer QUEUED one.
        now = time.time()
        queued = [fresh[i].record(JobStatus.QUEUED, updated_at=now) for i in reopened
                  if i in fresh and kernel.queue.peek_state(i) is not None]
        if queued:
            kernel.results.put_many(queued)
        if doomed:  # re-opened beside a parent that stays failed, cancelled or skipped
            kernel.results.put_many([doomed_record(node) for node in doomed])
        return reopened

    def resume(self) -> list[str]:
        """Move on a RUNNING workflow past its stranded steps (a step whose outcome is
        recorded but never reached the graph: :mod:`~nuvom_kernel.workflow.stranded`),
        applying each one's recorded outcome as its settle would have. Returns their ids;
        none for a workflow with no stranded step. Safe beside running workers.
        """
        kernel = self._kernel
        return resume(kernel.queue, kernel.results, kernel.serializer, self._graph())


def get_workflow(workflow_id: str) -> Workflow:
    """A handle on any workflow by id, from any process."""
    from nuvom_kernel.kernel import get_kernel

    handle = Workflow(workflow_id, get_kernel())
    handle._graph(nodes=False)  # an unknown id fails here, not at the first .status
    return handle


def _flatten(ref: Any, out: list[str]) -> list[str]:
    if isinstance(ref, str):
        out.append(ref)
    else:
        for item in ref:
            _flatten(item, out)
    return out


def _value(record: JobRecord | None, job_id: str) -> Any:
    """A parent's result; ``None`` for a skipped one, a StepFailed for a failed one.

    :raises SerializationError: the parent's record is gone (purged while its workflow
        still ran): the step fails saying so rather than run with a made-up input.
    """
    if record is not None and record.status is JobStatus.SUCCEEDED:
        try:
            return from_wire(record.result)
        except Exception as exc:  # a TypeError from a hand-edited or foreign value: this
            # step's input cannot be decoded, which fails the step once (not a worker error
            # at every delivery until the delivery limit called it a crash)
            raise SerializationError(
                f"the result of workflow step {job_id} (an input of this step) cannot be "
                f"decoded ({type(exc).__name__}: {exc})") from exc
    if record is None:
        raise SerializationError(
            f"the result of workflow step {job_id} (an input of this step) is no longer "
            "stored: it was purged (`nuvom purge results`), or it expired (the result "
            "backend's result_ttl_secs counts from each step's end, so a workflow that runs "
            "longer loses its early steps' results). Re-run from that step: `nuvom workflow "
            f"retry WORKFLOW_ID --from {job_id}`")
    if record.error_type == SKIPPED_ERROR:
        return None
    return StepFailed(job_id, record.error_type, record.error_message)


def _resolve(kernel: Kernel, ref: Any) -> Any:
    ids = _flatten(ref, [])
    records = {i: kernel.results.get(i) for i in ids}

    def build(r: Any) -> Any:
        if isinstance(r, str):
            return _value(records[r], r)
        return [build(item) for item in r]

    return build(ref)


def resolve_input(kernel: Kernel, job: Job) -> None:
    """A workflow step's input, read from its parents' records and put first in its
    arguments (steps made with ``task.si()`` have none)."""
    ref = job.headers.get(INPUT_HEADER)
    if ref is not None:
        job.args = (_resolve(kernel, ref), *job.args)

