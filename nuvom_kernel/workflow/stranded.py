"""Stranded steps: a workflow step whose outcome is recorded but never reached its graph,
so its workflow reads RUNNING with nothing left to move it on; and moving it on.

A step is stranded when its node is RELEASED, its message is gone (acked) and the record
of its current run is terminal. No healthy settle leaves that: one without
``settle_many`` moves the graph before it acks, one with it does both in one transaction.
What does: a settle that met its workflow's head unreadable (a damaged entry, restored
since: :mod:`.damage` settles the step and cannot end the workflow), a message that did
not decode whose node could not be looked up either (the store failing then), and a
cancel that stopped after recording the step CANCELLED. ``wf.get()`` waited out its
timeout on such a workflow, ``nuvom workflow retry`` refused it as RUNNING; now ``get()``
raises, ``retry`` and ``inspect`` say so, and ``nuvom workflow resume`` (:func:`resume`)
applies each stranded step's recorded outcome as its settle would have.

One moment looks stranded and is not: a cancel records the step CANCELLED, then moves the
graph, and may wait for the store's write lock in between (SQLite's ``busy_timeout_secs``).
Applying the outcome then is what the cancel does next, so :func:`resume` is harmless
there; a reader that raises on it (:class:`StrandedWatch`) waits out a grace first.

A step can also be *lost*: RELEASED, its message in no queue, and no outcome of its current
run recorded. A queue backend quarantines a message it cannot read (a damaged row or file)
instead of handing it out, so no worker ever settles that step, and ``wf.get()`` waited
forever. Nothing here can mend that (the message's damaged copy is the backend's to give
back, and a second push could run a step that a cancel is removing at this moment, which
looks the same for a moment), so it is only told: ``get()`` raises once the step has stayed
lost for the grace, and ``nuvom workflow inspect`` names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from nuvom_kernel.errors import NuvomError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus
from nuvom_kernel.workflow.graph import advance, doomed_record
from nuvom_kernel.workflow.settle import never_pushed
from nuvom_kernel.workflow.shape import (
    NODE_FINAL,
    RELEASED,
    RUNNING,
    GraphTxn,
    Node,
    WorkflowGraph,
)
from nuvom_kernel.workflow.steps import stored_run

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.serialization import Serializer

__all__ = ["Look", "StrandedWatch", "look", "lost_error", "resume", "stranded_error",
           "stranded_steps"]

Stranded = list[tuple[str, JobStatus]]


class Look(NamedTuple):
    """The RELEASED steps of a RUNNING workflow whose message is gone: ``stranded`` (an
    outcome recorded, never applied) and ``lost`` (no outcome: quarantined or removed)."""

    stranded: Stranded
    lost: list[str]

#: ``wf.get()`` looks for stranded steps this long after it starts waiting, then ever more
#: rarely (doubling, up to the maximum) while no step ends: a look reads the whole graph
#: and peeks at each released step.
CHECK_SECS = 1.0
CHECK_MAX_SECS = 60.0
#: How long a step must stay stranded before ``wf.get()`` raises on it: longer than a
#: cancel may wait for a write lock between recording the step and moving the graph.
GRACE_SECS = 60.0
#: How many visibility timeouts a step must stay lost before ``wf.get()`` raises on it.
LOST_GRACE_LEASES = 2


def stranded_steps(queue: QueueBackend, results: ResultBackend, serializer: Serializer,
                   graph: WorkflowGraph) -> Stranded:
    """The stranded steps of ``graph`` (read whole, before this call), each with its
    recorded outcome (:func:`look`)."""
    return look(queue, results, serializer, graph).stranded


def look(queue: QueueBackend, results: ResultBackend, serializer: Serializer,
         graph: WorkflowGraph) -> Look:
    """The stranded and the lost steps of ``graph`` (read whole, before this call).

    Confirmed in one workflow transaction after the queue and the records were read: the
    node still RELEASED (a settle that ran meanwhile moved the graph, then acked), and the
    record of the run its stored message would run (after ``nuvom workflow retry``, a step
    keeps its last run's terminal record until the new run settles: that step is lost, not
    stranded, if its message is gone).
    """
    if graph.flow.status != RUNNING:
        return Look([], [])
    records: dict[str, JobRecord | None] = {}
    for node in graph.nodes:
        if node.state == RELEASED and queue.peek_state(node.id) is None:
            records[node.id] = results.get(node.id)
    if not records:
        return Look([], [])

    def confirm(txn: GraphTxn) -> Look:
        flow = txn.flows([graph.flow.id]).get(graph.flow.id)
        if flow is None or flow.status != RUNNING:
            return Look([], [])
        nodes = txn.nodes(list(records))
        still = [i for i in records if i in nodes and nodes[i].state == RELEASED
                 and queue.peek_state(i) is None]  # (a push or a cancel went on meanwhile)
        ended = {i: r for i in still
                 if (r := records[i]) is not None and r.status in TERMINAL_STATES}
        bodies = txn.bodies(list(ended))
        stranded = [(i, r.status) for i, r in ended.items()
                    if r.run >= stored_run(i, bodies.get(i), serializer)]
        done = {i for i, _ in stranded}
        return Look(stranded, [i for i in still if i not in done])

    return queue.workflow_transaction(confirm, [graph.flow.id])


def stranded_error(workflow_id: str, stranded: Sequence[tuple[str, JobStatus]]) -> NuvomError:
    """Why the workflow cannot move on, and the command that moves it: one wording for
    ``wf.get()``, ``nuvom workflow retry`` and ``nuvom workflow inspect``."""
    step, status = stranded[0]
    more = f" (and {len(stranded) - 1} more)" if len(stranded) > 1 else ""
    return NuvomError(
        f"workflow {workflow_id} is RUNNING but cannot move on: step {step}{more} ended "
        f"{status.value}, but its outcome never reached the workflow's stored graph (it was "
        "settled while the graph could not be read, or a cancel stopped half-way). `nuvom "
        f"workflow resume {workflow_id}` applies the recorded outcome, and the workflow "
        "continues from there")


def lost_error(workflow_id: str, lost: Sequence[str]) -> NuvomError:
    """Why the workflow cannot move on, for steps whose message is gone with no outcome:
    one wording for ``wf.get()`` and ``nuvom workflow inspect``."""
    step = lost[0]
    more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
    return NuvomError(
        f"workflow {workflow_id} is RUNNING but cannot move on: step {step}{more} was "
        "released to its queue, but its message is in no queue and no outcome of it is "
        "recorded, so no worker will run it. A queue backend quarantines a message it cannot "
        "read (`nuvom status` lists quarantined entries; the backend's README says how to put "
        "one back, and the workflow then runs on); or it was removed from the store by hand. "
        f"`nuvom cancel job {step}` cancels it and the steps depending on it instead, "
        "which ends the workflow")


def resume(queue: QueueBackend, results: ResultBackend, serializer: Serializer,
           graph: WorkflowGraph) -> list[str]:
    """Apply the recorded outcome of each stranded step of ``graph`` (read whole), as its
    settle would have; the ids it moved.

    A step's outcome moves the graph once (:func:`advance` leaves a node that is no longer
    RELEASED alone), so a settle or cancel racing this one releases nothing twice. A store
    whose release is not atomic with the graph (the file backend saves, then pushes) can
    leave a released step unpushed if the process dies in between; a settle mends that by
    running again, which this has no lease to do, so this also hands every terminal step
    with a RELEASED child to ``advance``'s ``unseen`` pass, which pushes the ones neither
    queued nor recorded: running it again finishes what a crash left.
    """
    if graph.flow.status != RUNNING:
        return []
    stranded = stranded_steps(queue, results, serializer, graph)
    released = {n.id for n in graph.nodes if n.state == RELEASED}
    # the status of a node already terminal is not read: only its children are looked at
    parents = [(n.id, JobStatus.SUCCEEDED) for n in graph.nodes
               if n.state in NODE_FINAL and released.intersection(n.children)]

    def apply(txn: GraphTxn) -> tuple[list[str], list[Node]]:
        nodes = txn.nodes([step for step, _ in stranded])
        moved = [step for step, _ in stranded
                 if step in nodes and nodes[step].state == RELEASED]
        return moved, advance(txn, [*stranded, *parents], never_pushed(queue, results))

    moved, doomed = queue.workflow_transaction(apply, [graph.flow.id])
    if doomed:
        results.put_many([doomed_record(node) for node in doomed])
    return moved


class StrandedWatch:
    """``wf.get()``'s look for stranded and lost steps while it waits: rare and cheap while
    steps end (a look is made only when the head's count of open steps has not moved since
    the last one), and a step raises only once it has stayed so :data:`GRACE_SECS`."""

    def __init__(self, queue: QueueBackend, results: ResultBackend, serializer: Serializer,
                 workflow_id: str, lease_secs: float = 0.0) -> None:
        self._look: Callable[[WorkflowGraph], Look] = (
            lambda graph: look(queue, results, serializer, graph))
        self._id = workflow_id
        self._every = CHECK_SECS
        self._next = time.monotonic() + CHECK_SECS
        self._open: int | None = None
        self._since: dict[str, float] = {}
        self._lost: set[str] = set()
        # A step saved RELEASED whose push a crash cut off looks lost until its parent's
        # next delivery pushes it (its lease, ``lease_secs``, expired): wait that out too.
        self._lost_grace = max(GRACE_SECS, LOST_GRACE_LEASES * lease_secs)

    def check(self, head: WorkflowGraph, read: Callable[[], WorkflowGraph]) -> None:
        """Look if it is time, given the head just polled; ``read`` reads the whole graph.

        :raises NuvomError: a step has stayed stranded (:func:`stranded_error`) or lost
            (:func:`lost_error`) for the grace.
        """
        now = time.monotonic()
        if now < self._next:
            return
        if head.flow.open != self._open:  # a step ended: look again once none does
            self._open, self._since, self._every = head.flow.open, {}, CHECK_SECS
            self._lost = set()
        else:
            found = self._look(read())
            self._lost = set(found.lost)
            steps = [*(step for step, _ in found.stranded), *found.lost]
            self._since = {step: self._since.get(step, now) for step in steps}
            stranded = [(step, status) for step, status in found.stranded
                        if now - self._since[step] >= GRACE_SECS]
            if stranded:
                raise stranded_error(self._id, stranded)
            lost = [step for step in found.lost
                    if now - self._since[step] >= self._lost_grace]
            if lost:
                raise lost_error(self._id, lost)
            self._every = min(self._every * 2, CHECK_MAX_SECS)
        self._next = now + self._every

    def hint(self) -> str:
        """For a ``get()`` that timed out while a step looked stranded or lost, within the
        grace."""
        if not self._since:
            return ""
        step, since = min(self._since.items(), key=lambda item: item[1])
        waited = time.monotonic() - since
        if step in self._lost:
            return (f" Step {step} has been released for {waited:.0f} s, but its message is "
                    "in no queue and no outcome of it is recorded: see `nuvom status` for "
                    "quarantined entries.")
        return (f" Step {step}'s outcome has not reached the workflow's graph for "
                f"{waited:.0f} s: if it stays so, `nuvom workflow resume "
                f"{self._id}` applies it.")
