"""A workflow step by its job id, for the job commands (``get_job``, ``nuvom cancel job``,
``nuvom retry job``).

A step WAITING for its parents is in no queue and has no record yet: only its graph knows
it. Read as an ordinary job it would be UNKNOWN (an id no backend has seen), ``Job.get()``
would give up at once and ``nuvom cancel job`` would refuse it, though it was enqueued with
its workflow and runs later. These helpers ask the graph (:meth:`WorkflowStore.workflow_step
<nuvom_kernel.workflow.spi.WorkflowStore.workflow_step>`) in those cases only: a job that is
queued or recorded never gets here, so ordinary jobs pay nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import (
    CorruptWorkflowError,
    JobCancelledError,
    SerializationError,
    error_text,
)
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, Message, TaskOptions
from nuvom_kernel.workflow.damage import damaged_advice
from nuvom_kernel.workflow.graph import NOT_RUN, CancelOutcome, cancel_waiting, doomed_record
from nuvom_kernel.workflow.shape import (
    CANCELLED,
    CANCELLED_ERROR,
    DOOM_DAMAGED,
    NODE_FINAL,
    RELEASED,
    RUNNING,
    SKIPPED,
    SKIPPED_ERROR,
    WAITING,
    WF_HEADER,
    GraphTxn,
    Node,
)

if TYPE_CHECKING:
    from nuvom_kernel.job import Job
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.serialization import Serializer

__all__ = ["cancel_step", "cancelled_error", "rerun_from", "unqueued_step", "workflow_of"]


def _node(kernel: Kernel, job: Job) -> Node | None:
    node = kernel.queue.workflow_step(job.id, job.headers.get(WF_HEADER))
    if node is not None:
        job.headers[WF_HEADER] = node.workflow  # the next read (a poll) looks there first
        if not job.task:  # a handle made from the id alone: what the graph says it is
            job.task, job.options = node.task, TaskOptions(queue=node.queue)
    return node


def _ended(kernel: Kernel, node: Node) -> bool:
    """Whether ``node``'s workflow has ended: its head read, at each poll of a waiting
    step's ``get()``, as ``wf.get()`` reads it at each of its polls."""
    graph = kernel.queue.read_workflow(node.workflow, nodes=False)
    return graph is not None and graph.flow.status != RUNNING


def unqueued_step(kernel: Kernel, job: Job) -> tuple[JobStatus, JobRecord | None]:
    """The status of ``job``, which the queue did not hold and the results did not record
    when :meth:`~nuvom_kernel.kernel.Kernel.refresh_job` read them, and its record if one
    landed since.

    QUEUED for a step WAITING for its parents: it was enqueued with its workflow, and runs
    (or is cancelled) when they end. CANCELLED if its workflow ended all the same: only a
    damaged graph does that (the step's entry unreadable when the settle that found it
    cancelled the others, restored since), and the step will never run; it read QUEUED, and
    ``get()`` waited out every timeout. A step released or ended since the first reads is read
    again, in the same order (the queue, then the results: a worker stores the record
    before it acks, and the graph moves before the ack too). A cancelled or skipped step
    without a record is CANCELLED (the graph committed, the record write did not happen: a
    crash in between). Anything else is UNKNOWN, as before: an id no backend knows, or a
    finished step whose record was purged.
    """
    if not kernel.queue.capabilities.workflows:
        return JobStatus.UNKNOWN, None
    node = _node(kernel, job)
    if node is None:
        return JobStatus.UNKNOWN, None
    if node.state == WAITING:
        return (JobStatus.CANCELLED if _ended(kernel, node) else JobStatus.QUEUED), None
    if node.state == RELEASED:
        status = kernel.queue.peek_state(job.id)
        if status is not None:
            return status, None
    record = kernel.results.get(job.id)
    if record is not None:
        return record.status, record
    if node.state == RELEASED:  # saved released, not pushed yet (a crash: its parent's
        return JobStatus.QUEUED, None  # repeated settle pushes it)
    if node.state in (CANCELLED, SKIPPED):
        return JobStatus.CANCELLED, None
    return JobStatus.UNKNOWN, None


def cancel_step(kernel: Kernel, job: Job, stored: JobRecord | None) -> bool | None:
    """Cancel ``job``, which the queue did not hold, if it is a workflow step that only its
    graph can cancel (``stored``: its record as the cancel read it).

    A step WAITING for its parents: its node CANCELLED, its dependents cancelled and its
    workflow ended as for a cancelled queued step
    (:func:`~nuvom_kernel.workflow.graph.cancel_waiting`, in one workflow transaction, so
    atomic against a parent settling at the same moment), then the records stored: its own
    CANCELLED one (from its stored message, so ``get_job`` shows its task and arguments;
    its run supersedes an older run's record after a ``workflow retry``) and its
    dependents'. A RELEASED step that its own CANCELLED record says was cancelled, which the
    queue no longer holds: a cancel that failed (or died) after removing its message and
    storing that record, before its graph moved; repeating the cancel finishes it, instead
    of leaving the workflow RUNNING forever. A RELEASED step with no outcome recorded, which
    the queue does not hold (it quarantined the step's damaged message, so no worker will
    settle it): cancelled the same way, with its CANCELLED record, so that its workflow
    ends instead of waiting for it forever.

    Returns ``True`` if it cancelled the step now, ``None`` if a parent released it
    meanwhile (it is a queued job now: cancel it in the queue), ``False`` if there is
    nothing to cancel (not a step, or one that started or ended).
    """
    node = _node(kernel, job)  # a plain read: a job that is no step costs no lock
    if node is None or node.state in NODE_FINAL:
        return False
    queue = kernel.queue
    half_done = stored is not None and stored.status is JobStatus.CANCELLED

    def gone(step: str) -> bool:
        return queue.peek_state(step) is None

    maybe_lost = node.state == RELEASED and not half_done and gone(job.id)
    if node.state == RELEASED and not (half_done or maybe_lost):
        return None  # queued (or running): the queue's cancel decides
    lost = False

    def cancel(txn: GraphTxn) -> CancelOutcome:
        nonlocal lost
        if maybe_lost:  # no outcome of the run its stored message would run: lost
            lost = stored is None or stored.status not in TERMINAL_STATES or stored.run < \
                stored_run(job.id, txn.bodies([job.id]).get(job.id), kernel.serializer)
        return cancel_waiting(txn, job.id, gone if half_done or lost else None)

    outcome = queue.workflow_transaction(cancel, [node.workflow])
    if outcome.found is None or not outcome.done:
        released = outcome.found is not None and outcome.found.state == RELEASED
        return None if released and not half_done else False
    records = [doomed_record(n) for n in outcome.doomed]
    if outcome.found.state == WAITING:
        records.insert(0, _cancelled_record(kernel, outcome.found, outcome.body))
    if records:
        kernel.results.put_many(records)
    if lost:  # over the record it has (a retry's, of this run), fenced like any cancel's
        kernel._record_cancelled(job, _envelope(kernel.serializer, job.id, outcome.body))
    return True


def _envelope(serializer: Serializer, job_id: str, body: bytes | None) -> Envelope | None:
    """A step's stored message decoded; ``None`` for none, or one that does not decode
    (its worker would fail it)."""
    try:
        return None if body is None else Envelope.from_message(Message(id=job_id, body=body),
                                                               serializer)
    except SerializationError:
        return None


def stored_run(job_id: str, body: bytes | None, serializer: Serializer) -> int:
    """The run a step's stored message would run; 0 where it does not say (a body that
    does not decode fails its step without running it)."""
    envelope = _envelope(serializer, job_id, body)
    return 0 if envelope is None else envelope.run


def _cancelled_record(kernel: Kernel, node: Node, body: bytes | None) -> JobRecord:
    now = time.time()
    envelope = _envelope(kernel.serializer, node.id, body)
    if envelope is not None:
        record = envelope.record(JobStatus.CANCELLED)
    else:  # none stored, or its worker would have failed it: say what we know
        record = JobRecord(job_id=node.id, task=node.task, status=JobStatus.CANCELLED,
                           queue=node.queue, created_at=now)
    record.finished_at = record.updated_at = now
    return record


def workflow_of(kernel: Kernel, job_id: str) -> str | None:
    """The workflow whose step ``job_id`` is (its graph still stored), else ``None``."""
    if not kernel.queue.capabilities.workflows:
        return None
    node = kernel.queue.workflow_step(job_id)
    return None if node is None else node.workflow


def rerun_from(kernel: Kernel, workflow: str, job_id: str) -> str:
    """The step to re-run ``workflow`` from for ``job_id`` to run again: itself, or the
    step that keeps it from running (:func:`~.graph.blocked_by`: `--from` itself is then
    refused). Itself where the graph cannot be read: the advice is a hint."""
    from nuvom_kernel.workflow.graph import blocked_by

    try:
        graph = kernel.queue.read_workflow(workflow, nodes=True)
    except Exception:
        return job_id
    blocker = None if graph is None else blocked_by(graph, job_id)
    return job_id if blocker is None else blocker.id


def cancelled_error(kernel: Kernel, job: Job) -> JobCancelledError:
    """The error ``Job.get()`` raises for ``job``, which reads CANCELLED.

    A step its graph cancelled says why, as its record does (:func:`doomed_record`: a step
    it depends on failed, was cancelled or skipped, or its workflow's graph was found
    damaged): the error said only "cancelled before it ran". And a step of a workflow a
    damaged graph ended gets the advice that works (submit it again), not ``nuvom workflow
    retry``, which cannot run it. The graph is read (once, for a cancelled job only) for
    what the record does not hold: the step's workflow, when the handle was made from the
    id alone, and whether the damage ended it. A graph that does not read now says so
    itself; a store that does not answer leaves the record's words alone (the workflow
    then taken from them: the record names it).
    """
    workflow, advice, doom = job.headers.get(WF_HEADER), None, None
    if kernel.queue.capabilities.workflows:
        try:
            node = _node(kernel, job)
        except CorruptWorkflowError as exc:
            node, workflow, advice = None, exc.workflow_id, error_text(exc)
        except Exception:  # the store is away or failing: the record's words are still
            node = None  # true, and this error must carry them, not the store's
        if node is not None:
            workflow, doom = node.workflow, node.doom
            if node.state == WAITING and _ended(kernel, node):  # never cancelled: its
                doom = DOOM_DAMAGED  # workflow ended by damage (a re-opened step waits)
    if doom == DOOM_DAMAGED and workflow is not None:
        advice = damaged_advice(workflow)
    reason = None
    message = job.error or ""
    if job.error_type in (CANCELLED_ERROR, SKIPPED_ERROR) and message.startswith(NOT_RUN):
        # doomed_record's words: "not run: <reason> (workflow <id>)"; the id read here
        # too, for a handle made from the id alone whose graph did not read
        reason, named, flow_id = message.removeprefix(NOT_RUN).rpartition(" (workflow ")
        if named and flow_id.endswith(")"):
            workflow = workflow or flow_id[:-1]
        else:
            reason = message.removeprefix(NOT_RUN)
    return JobCancelledError(job.id, workflow, attempts=job.attempts,
                             error_type=job.error_type, error_message=job.error,
                             reason=reason, advice=advice)
