"""A workflow whose stored graph is found damaged (a row or document edited by hand, a disk
fault): the settle that finds it, and what readers are told about a workflow it ended.

Separate from :mod:`.graph` because none of it is a rule of a healthy graph: it is what
happens when the graph cannot be read, from the settle (its step's outcome stays settled,
the workflow ends FAILED and its waiting steps CANCELLED, where the store can write that)
to ``wf.get()``, ``nuvom workflow retry`` and ``Job.get()`` on a cancelled step, which must
all say the same thing: a workflow ended this way runs again only when it is submitted
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from nuvom_kernel.errors import CorruptWorkflowError, NuvomError
from nuvom_kernel.models import JobStatus
from nuvom_kernel.workflow.shape import (
    CANCELLED,
    DOOM_DAMAGED,
    FAILED,
    RELEASED,
    RUNNING,
    WAITING,
    GraphTxn,
    Node,
    WorkflowGraph,
)

__all__ = ["EndsDamaged", "advance_past_damage", "damaged_advice", "ended_by_damage"]

log = logging.getLogger("nuvom.worker")

Outcomes = Sequence[tuple[str, JobStatus]]


class EndsDamaged(Protocol):
    """The optional :class:`GraphTxn` call that lets a damaged workflow end (FAILED, its
    waiting steps CANCELLED) instead of hanging its readers: ``wf.get()`` polled RUNNING
    and ``Job.get()`` on a waiting step QUEUED until their timeouts. Optional so that a
    backend written before it keeps working unchanged (:func:`_end_damaged` looks it up by
    name and, without it, leaves the workflow as it was)."""

    def waiting_nodes(self, flow_id: str) -> list[Node]:
        """The WAITING nodes of ``flow_id`` that still decode, its damaged entries left out
        (a damaged node cannot be written back, and its own reads keep naming it); like
        :meth:`GraphTxn.nodes`, they are the ones :meth:`GraphTxn.update` then writes. Raises
        :class:`CorruptWorkflowError` only when the workflow as a whole does not read (its
        document, its head)."""
        ...


def advance_past_damage(txn: GraphTxn, outcomes: Outcomes,
                        apply: Callable[[Outcomes], list[Node]]) -> list[Node]:
    """``apply(outcomes)`` (:func:`~nuvom_kernel.workflow.graph.advance`'s rules); where a
    workflow's graph is corrupt, its outcomes settled without it moving on (:func:`_corrupt`)
    and the others applied. The steps cancelled or skipped, as ``apply`` returns them."""
    try:
        return apply(outcomes)
    except CorruptWorkflowError as exc:
        if len(outcomes) == 1:
            return _corrupt(txn, exc, outcomes)
    # One workflow's corrupt graph must not hold up the others' steps settled with it: each
    # outcome on its own (a session writes only when it commits, so the failed one wrote
    # nothing), and those of the corrupt workflow are settled without it moving on.
    doomed: list[Node] = []
    for outcome in outcomes:
        try:
            doomed += apply([outcome])
        except CorruptWorkflowError as exc:
            doomed += _corrupt(txn, exc, [outcome])
    return doomed


def _corrupt(txn: GraphTxn, exc: CorruptWorkflowError, outcomes: Outcomes) -> list[Node]:
    """Settle ``outcomes`` without their workflow moving on, ending it if it can be
    (:func:`_end_damaged`); the steps that cancelled. The log says how the workflow stands
    (ended, or stuck), as a reader's error then does."""
    status, cancelled = _end_damaged(txn, exc)
    if status is not None:
        exc = CorruptWorkflowError(exc.workflow_id, exc.where, exc.detail, status=status)
    for job_id, outcome in outcomes:
        log.error("job=%s ended %s; its outcome is settled, but %s", job_id, outcome.value,
                  exc)
    return cancelled


def _end_damaged(txn: GraphTxn, exc: CorruptWorkflowError) -> tuple[str | None, list[Node]]:
    """End the workflow ``exc`` names FAILED and cancel its waiting steps (``doom``
    :data:`DOOM_DAMAGED`). Returns its status if it has ended (here, or before: ``None``
    while it stays RUNNING) and the steps cancelled here.

    Not ended here: a store without :meth:`EndsDamaged.waiting_nodes` (as before it
    existed); a head that is itself damaged (it cannot be written, and nothing can say the
    workflow ended); a workflow already ended, by another worker that found the same damage
    first (the store serialises these transactions, so the second finds FAILED and changes
    nothing) or before the damage. The head's ``open`` count is left as it was (the damaged
    step's end is never counted). Runs in the settle's own transaction, after its fence (an
    outcome whose lease was lost reaches no ``advance``), so it is written with the
    outcome's ack or not at all.
    """
    waiting_nodes = getattr(txn, "waiting_nodes", None)
    flow_id = exc.workflow_id
    if waiting_nodes is None or not isinstance(flow_id, str):
        return None, []
    try:
        flow = txn.flows([flow_id]).get(flow_id)
        if flow is None or flow.status != RUNNING:
            return (None if flow is None else flow.status), []
        waiting: list[Node] = waiting_nodes(flow_id)
    except CorruptWorkflowError:
        return None, []
    flow.status, flow.failed, flow.finished_at = FAILED, True, time.time()
    for node in waiting:
        node.state, node.doom = CANCELLED, DOOM_DAMAGED
    txn.update([flow], waiting, {})
    return FAILED, waiting


def ended_by_damage(graph: WorkflowGraph) -> NuvomError | None:
    """Why the workflow of ``graph`` (read whole, its entries restored) cannot finish, if a
    settle ended it because its graph was damaged; ``None`` for any other workflow.

    Such a workflow shows it two ways: steps cancelled with :data:`DOOM_DAMAGED`, and a
    step still RELEASED though the workflow ended (its outcome was settled while the graph
    could not move: it never reached its children). A healthy ended workflow has neither:
    it ends only once every step is final. Why ``nuvom workflow retry`` is refused (it
    re-opened the cancelled steps, which then waited for that RELEASED step forever): what
    the settle left undone is not stored, so no retry can be sure to finish it.
    """
    flow = graph.flow
    if flow.status == RUNNING:
        return None
    # (a step WAITING in an ended workflow: damaged when that settle cancelled the others)
    cancelled = [n.id for n in graph.nodes if n.doom == DOOM_DAMAGED or n.state == WAITING]
    stuck = [n.id for n in graph.nodes if n.state == RELEASED]
    if not (cancelled or stuck):
        return None
    what = [f"{len(stuck)} step(s) released to run then (first {stuck[0]}) can no longer "
            "move it on"] if stuck else []
    if cancelled:
        what.append(f"its {len(cancelled)} step(s) still waiting then (first {cancelled[0]}) "
                    "were cancelled, or will never run")
    return NuvomError(
        f"workflow {flow.id} ended {flow.status} because its stored graph was found damaged "
        f"while it ran: {'; '.join(what)}. The graph reads again now, but "
        f"{damaged_advice(flow.id)}")


def damaged_advice(workflow_id: str) -> str:
    """What to do about a workflow a damaged graph ended, or one of its cancelled steps: one
    wording for ``wf.get()``, ``nuvom workflow retry`` and ``Job.get()``."""
    return (f"no retry can finish workflow {workflow_id}, ended this way (`nuvom workflow "
            "retry` refuses it): submit the workflow again to run it")
