"""The one set of rules that moves a workflow's stored graph.

A workflow is a graph of *nodes* (one job each) in the queue backend: a node whose parents
are not done is WAITING (its message is kept beside it, not claimable); when a node's job
settles with a final outcome, :func:`advance` decrements each child's ``pending`` count and
releases (pushes) the children that reach zero, or cancels/skips them when a parent failed.
A counter per node keeps a fan-out of n members with one join at O(n) work in all: a settle
never scans its siblings.

Backends only store: they implement :class:`GraphTxn` over their own atomic section (an
SQLite transaction, a lock, a file lock) and call these functions inside it, so every backend
follows the same rules. A node that is not RELEASED is not advanced again, which makes
:func:`advance` idempotent: a step that runs twice (its worker died after the graph moved
but before the ack) releases its children once.

The stored shape (states, :class:`Node`, :class:`Flow`, :class:`GraphTxn`) is
:mod:`.shape`, and what a settle does on finding a graph damaged is :mod:`.damage`; both
are re-exported here, the import path plugins use.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from nuvom_kernel.models import JobRecord, JobStatus, Message
from nuvom_kernel.workflow.damage import EndsDamaged, advance_past_damage
from nuvom_kernel.workflow.shape import (
    CANCELLED,
    CANCELLED_ERROR,
    DOOM_CANCELLED,
    DOOM_DAMAGED,
    DOOM_FAILED,
    DOOM_SKIPPED,
    FAILED,
    INPUT_HEADER,
    NODE_FINAL,
    POLICIES,
    RELEASED,
    RUNNING,
    SKIPPED,
    SKIPPED_ERROR,
    SUCCEEDED,
    WAITING,
    WF_HEADER,
    Flow,
    GraphTxn,
    Node,
    WorkflowGraph,
    stored_flow,
    stored_node,
)

__all__ = ["CANCELLED", "CANCELLED_ERROR", "DOOM_CANCELLED", "DOOM_DAMAGED", "DOOM_FAILED",
           "DOOM_SKIPPED", "FAILED", "INPUT_HEADER", "NODE_FINAL", "NOT_RUN", "POLICIES",
           "RELEASED", "RUNNING", "SKIPPED", "SKIPPED_ERROR", "SUCCEEDED", "WAITING",
           "WF_HEADER", "CancelOutcome", "EndsDamaged", "Flow", "GraphTxn", "Node",
           "WorkflowGraph", "advance", "blocked_by", "cancel_waiting", "create",
           "doomed_record", "reset", "stored_flow", "stored_node"]

_DOOM_RANK = {None: 0, DOOM_SKIPPED: 1, DOOM_CANCELLED: 2, DOOM_FAILED: 3, DOOM_DAMAGED: 3}
#: How the record of a node that never runs begins (:func:`doomed_record`): its reason
#: follows, then its workflow's id.
NOT_RUN = "not run: "


class _Session:
    """Nodes and heads loaded once per transaction, written back once."""

    def __init__(self, txn: GraphTxn) -> None:
        self.txn = txn
        self.node_cache: dict[str, Node] = {}
        self.flow_cache: dict[str, Flow] = {}
        self.released: list[str] = []
        self.doomed: list[Node] = []

    def nodes(self, ids: Iterable[str]) -> list[Node]:
        wanted = [i for i in ids if i not in self.node_cache]
        if wanted:
            self.node_cache.update(self.txn.nodes(wanted))
        return [self.node_cache[i] for i in ids if i in self.node_cache]

    def flow(self, flow_id: str) -> Flow:
        if flow_id not in self.flow_cache:
            self.flow_cache.update(self.txn.flows([flow_id]))
        return self.flow_cache[flow_id]

    def release(self, node: Node) -> None:
        node.state = RELEASED
        self.released.append(node.id)

    def finish(self, node: Node, state: str, *, doomed: bool = False) -> None:
        """``node`` reached ``state``; move its children (a worklist: a chain of 10,000
        cancelled steps needs no recursion)."""
        work = deque([(node, state, doomed)])
        while work:
            node, state, doomed = work.popleft()
            node.state = state
            flow = self.flow(node.workflow)
            if doomed:
                self.doomed.append(node)
            if node.final:
                flow.failed = flow.failed or state != SUCCEEDED
                self._close(flow)
                continue
            effect = _effect(node, state, doomed)
            if state == FAILED:
                flow.failed = flow.failed or node.policy == "fail"
            elif state == CANCELLED:
                flow.cancelled = flow.cancelled or not doomed
            flow.open -= 1
            for child in self.nodes(node.children):
                child.pending -= 1
                child.doom = _worse(child.doom, effect)
                if child.pending <= 0 and child.state == WAITING:
                    if child.doom is None:
                        self.release(child)
                    else:
                        work.append((child, _doomed_state(child.doom), True))
            if flow.open <= 0:
                final = self.nodes([flow.final])[0] if flow.final else None
                if final is not None and final.state == WAITING:
                    self.release(final)
                elif final is None or final.state in NODE_FINAL:
                    self._close(flow)

    @staticmethod
    def _close(flow: Flow) -> None:
        if flow.status == RUNNING:
            flow.status = (FAILED if flow.failed else CANCELLED if flow.cancelled
                           else SUCCEEDED)
            flow.finished_at = time.time()

    def commit(self, bodies: Mapping[str, bytes] | None = None) -> list[Node]:
        self.txn.update(self.flow_cache.values(), self.node_cache.values(), bodies or {})
        if self.released:
            self.txn.release(self.released)
        return self.doomed


def _effect(node: Node, state: str, doomed: bool) -> str | None:
    """What ``node`` ending in ``state`` does to its children (a doom, or ``None``: they may
    run). A node doomed itself passes its own cause on, so a chain after a cancelled step
    says it was cancelled, not that something failed."""
    if state == FAILED:
        return {"fail": DOOM_FAILED, "continue": None, "skip": DOOM_SKIPPED}[node.policy]
    if state == CANCELLED:
        return node.doom if doomed and node.doom in (DOOM_FAILED, DOOM_CANCELLED) \
            else DOOM_CANCELLED
    if state == SKIPPED:
        return DOOM_SKIPPED
    return None


def blocked_by(graph: WorkflowGraph, node_id: str) -> Node | None:
    """The step that keeps ``node_id`` from running if it is re-opened alone, or ``None``:
    a parent staying as it ended dooms it again at once (:func:`reset`), so ``workflow
    retry --from`` it re-ran nothing and said it re-ran it. Followed up through parents
    doomed in turn, to the step that failed or was cancelled by hand: the one to re-run
    from."""
    found, current = None, node_id
    while (parent := next((n for n in graph.nodes if current in n.children and
                           _effect(n, n.state, n.doom is not None) is not None), None)):
        found, current = parent, parent.id
        if parent.doom is None:  # it failed, or was cancelled by hand
            break
    return found


def _worse(doom: str | None, effect: str | None) -> str | None:
    """The doom of a node that had ``doom`` when a parent's ``effect`` reaches it."""
    return effect if _DOOM_RANK.get(effect, 3) > _DOOM_RANK.get(doom, 3) else doom


def _doomed_state(doom: str) -> str:
    return SKIPPED if doom == DOOM_SKIPPED else CANCELLED


def create(txn: GraphTxn, flow: Flow, output: Any, nodes: Sequence[Node],
           messages: Sequence[Message]) -> bool:
    """Store a new workflow and release its first steps; ``False`` if its id exists."""
    flow.open = sum(1 for n in nodes if not n.final)
    session = _Session(txn)
    session.flow_cache[flow.id] = flow
    session.node_cache.update((n.id, n) for n in nodes)
    for node in nodes:
        if node.pending == 0 and not node.final:
            node.state = RELEASED
            session.released.append(node.id)
    if flow.open == 0:
        final = session.node_cache.get(flow.final) if flow.final else None
        if final is not None:
            session.release(final)
        else:
            session._close(flow)
    if not txn.insert(flow, output, nodes, messages):
        return False
    if session.released:
        txn.release(session.released)
    return True


def advance(txn: GraphTxn, outcomes: Sequence[tuple[str, JobStatus]],
            unseen: Callable[[list[str]], list[str]] | None = None) -> list[Node]:
    """Apply final job outcomes to their nodes (ids that are not RELEASED nodes are
    ignored: not a step, or already applied); returns the nodes cancelled or skipped as a
    consequence, whose records the caller writes (:func:`doomed_record`).

    :param unseen: for a store whose release is not atomic with the graph (it saves the
        graph, then pushes): of these RELEASED step ids, those that were never pushed
        (neither queued nor recorded). An outcome applied again (its step ran again
        because its worker died before the ack) then pushes the children a crash between
        the save and the push left behind — and only those, so none runs twice.

    An outcome whose workflow's graph is corrupt (:class:`CorruptWorkflowError`) is logged
    and left out: its step is settled, its workflow does not move on, and the other
    outcomes are applied. Where the store can still write that workflow's head (it has
    :meth:`EndsDamaged.waiting_nodes` and the head decodes), the workflow is ended FAILED
    and its waiting steps CANCELLED (returned with the others, so the caller records them):
    nothing would ever release them, and their readers waited out every timeout
    (:mod:`.damage`).
    """
    return advance_past_damage(txn, outcomes, lambda some: _advance(txn, some, unseen))


def _advance(txn: GraphTxn, outcomes: Sequence[tuple[str, JobStatus]],
             unseen: Callable[[list[str]], list[str]] | None) -> list[Node]:
    session = _Session(txn)
    session.nodes([job_id for job_id, _ in outcomes])
    again: list[str] = []
    for job_id, status in outcomes:
        node = session.node_cache.get(job_id)
        if node is not None and node.state == RELEASED and status.value in NODE_FINAL:
            session.finish(node, status.value)
        elif node is not None and node.state in NODE_FINAL and unseen is not None:
            flow = session.flow(node.workflow)
            again += [c.id for c in session.nodes([*node.children, *filter(None, [flow.final])])
                      if c.state == RELEASED and c.id not in session.released]
    if again and unseen is not None:
        session.released += unseen(list(dict.fromkeys(again)))
    return session.commit()


def reset(txn: GraphTxn, flow_id: str, start: Sequence[str] | None,
          rebody: Callable[[dict[str, bytes]], dict[str, bytes]]
          ) -> tuple[list[str], list[Node]]:
    """Re-open the failed, cancelled and skipped nodes (or ``start`` and every node that
    depends on it) and release those whose parents all succeeded; succeeded nodes outside
    keep their results. ``rebody`` turns the re-opened nodes' stored bodies into their next
    run's (a higher ``run``, so the new outcome supersedes the old record). Returns
    the re-opened node ids, and the re-opened nodes cancelled or skipped again at once,
    whose records the caller writes (:func:`doomed_record`).

    A parent that stays final (not re-opened) counts as it did when it ended, exactly as
    :func:`advance` applied it: a join re-opened beside a parent still FAILED under
    ``"fail"`` (or CANCELLED) is CANCELLED again, beside one skipped it is SKIPPED again,
    and never runs with a failure it was never meant to receive.
    """
    graph = txn.graph(flow_id)
    if graph is None:
        return [], []
    by_id = {n.id: n for n in graph.nodes}
    position = {node_id: i for i, node_id in enumerate(by_id)}
    if start is None:
        seeds = [n.id for n in graph.nodes if n.state in (FAILED, CANCELLED, SKIPPED)]
    else:
        seeds = list(start)
    reopen: set[str] = set()
    work = deque(seeds)
    while work:
        node_id = work.popleft()
        if node_id in reopen or node_id not in by_id:
            continue
        reopen.add(node_id)
        work.extend(by_id[node_id].children)
    final = graph.flow.final
    if reopen and final:
        reopen.add(final)
    if not reopen:
        return [], []
    parents: dict[str, int] = {}
    dooms: dict[str, str | None] = {}
    for node in graph.nodes:
        for child in node.children:
            if node.id in reopen or node.state not in NODE_FINAL:
                parents[child] = parents.get(child, 0) + 1
            elif child in reopen:  # a parent staying final: its effect, as advance had it
                effect = _effect(node, node.state, node.doom is not None)
                dooms[child] = _worse(dooms.get(child), effect)
    session = _Session(txn)
    flow = session.flow_cache[flow_id] = graph.flow
    flow.status, flow.failed, flow.cancelled, flow.finished_at = RUNNING, False, False, None
    for node in graph.nodes:
        session.node_cache[node.id] = node
        if node.id in reopen:
            node.state, node.pending = WAITING, parents.get(node.id, 0)
            node.doom = dooms.get(node.id)
        elif node.state in (FAILED, CANCELLED, SKIPPED) and not node.final:
            flow.failed = flow.failed or (node.state == FAILED and node.policy == "fail")
            # a step cancelled by hand (not doomed) that stays so keeps the status honest
            flow.cancelled = flow.cancelled or (node.state == CANCELLED and node.doom is None)
    flow.open = sum(1 for n in graph.nodes if not n.final and n.state not in NODE_FINAL)
    # Submission order puts every parent before its children, so a node doomed here has
    # passed its doom on before its children are looked at.
    for node_id in sorted(reopen, key=position.__getitem__):
        node = by_id[node_id]
        if node.pending == 0 and not node.final and node.state == WAITING:
            if node.doom is None:
                session.release(node)
            else:
                session.finish(node, _doomed_state(node.doom), doomed=True)
    if flow.open == 0 and final and by_id[final].state == WAITING:
        session.release(by_id[final])
    doomed = session.commit(rebody(txn.bodies(reopen)))
    return sorted(reopen, key=position.__getitem__), doomed


@attrs.define
class CancelOutcome:
    """What :func:`cancel_waiting` found and did: the node as found (``None``: not a step),
    whether it cancelled it now, its stored message body when it was WAITING, and the
    dependents cancelled with it (the caller writes their records)."""

    found: Node | None
    done: bool = False
    body: bytes | None = None
    doomed: list[Node] = attrs.field(factory=list)


def cancel_waiting(txn: GraphTxn, job_id: str,
                   lost: Callable[[str], bool] | None = None) -> CancelOutcome:
    """Cancel the step ``job_id`` while it is WAITING for its parents (``nuvom cancel job``
    on a step not released yet: it is in no queue, so only the graph can cancel it).

    It ends CANCELLED as a cancelled queued step would (its dependents cancelled once their
    other parents are done, the workflow CANCELLED unless a step failed); its parents, still
    running, find it final when they settle and leave it alone. In the backend's workflow
    transaction, so a parent settling at the same moment either released it first (then
    this changes nothing: cancel its message in the queue instead) or finds it cancelled.

    :param lost: for a RELEASED step whose message the queue no longer holds, and whose
        workflow would stay RUNNING forever: a cancel repeated after one that removed the
        message and stored its CANCELLED record but failed before its graph moved, or a
        step whose message the queue quarantined. Whether the queue still does not hold
        it; if so, it is cancelled here, as a cancel of its message would have.
    """
    session = _Session(txn)
    found = session.nodes([job_id])
    if not found:
        return CancelOutcome(None)
    node = found[0]
    was = attrs.evolve(node)
    if node.state == WAITING:
        body = txn.bodies([job_id]).get(job_id)
        if node.final:  # the finally_ step: the workflow ends when its last other step does
            node.state = CANCELLED
            session.flow(node.workflow).cancelled = True
        else:
            session.finish(node, CANCELLED)
        return CancelOutcome(was, True, body, session.commit())
    if node.state == RELEASED and lost is not None and lost(job_id):
        body = txn.bodies([job_id]).get(job_id)
        session.finish(node, CANCELLED)
        return CancelOutcome(was, True, body, session.commit())
    return CancelOutcome(was)


def doomed_record(node: Node) -> JobRecord:
    """The CANCELLED record of a node that will never run (a parent failed, was cancelled
    or was skipped), so ``get_job()`` on it says so, and why, instead of UNKNOWN."""
    now = time.time()
    reason = ("a step it depends on failed with on_failure('skip')" if node.state == SKIPPED
              else "a step it depends on was cancelled" if node.doom == DOOM_CANCELLED
              else "its workflow's stored graph is damaged (`nuvom workflow inspect` names "
                   "the entry), so the workflow ended FAILED" if node.doom == DOOM_DAMAGED
              else "a step it depends on failed")
    kind = SKIPPED_ERROR if node.state == SKIPPED else CANCELLED_ERROR
    return JobRecord(job_id=node.id, task=node.task, status=JobStatus.CANCELLED,
                     queue=node.queue, error_type=kind,
                     error_message=f"{NOT_RUN}{reason} (workflow {node.workflow})",
                     created_at=now, finished_at=now, updated_at=now)
