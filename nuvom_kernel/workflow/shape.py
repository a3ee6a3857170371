"""The stored shape of a workflow: node states, :class:`Node`, :class:`Flow`, the reader's
:class:`WorkflowGraph`, their checked decoding, and :class:`GraphTxn`, what a backend stores
them with.

Separate from :mod:`.graph` (the rules that move a graph) so that :mod:`.damage`, which
those rules call when a stored graph does not decode, can use the shape without an import
loop; and a backend's store needs only this. :mod:`.graph` re-exports every public name
here, the import path plugins and docs use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from nuvom_kernel.errors import CorruptWorkflowError
from nuvom_kernel.models import Message

__all__ = ["CANCELLED", "CANCELLED_ERROR", "DOOM_CANCELLED", "DOOM_DAMAGED", "DOOM_FAILED",
           "DOOM_SKIPPED", "FAILED", "INPUT_HEADER", "NODE_FINAL", "POLICIES", "RELEASED",
           "RUNNING", "SKIPPED", "SKIPPED_ERROR", "SUCCEEDED", "WAITING", "WF_HEADER", "Flow",
           "GraphTxn", "Node", "WorkflowGraph", "stored_flow", "stored_node"]

# Node states. WAITING and RELEASED are the graph's own; the rest are final.
WAITING, RELEASED = "WAITING", "RELEASED"
SUCCEEDED, FAILED, CANCELLED, SKIPPED = "SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"
NODE_FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED})
POLICIES = ("fail", "continue", "skip")
_NODE_STATES = NODE_FINAL | {WAITING, RELEASED}
RUNNING = "RUNNING"  # a workflow's status until every node is final
_FLOW_STATES = frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED})
#: The error_type of the CANCELLED record of a node that never runs: skipped, or cancelled
#: by its graph (:func:`~nuvom_kernel.workflow.graph.doomed_record`).
SKIPPED_ERROR, CANCELLED_ERROR = "nuvom.Skipped", "nuvom.Cancelled"
#: Envelope headers of a step: its workflow's id, and its input (absent for ``si`` steps).
WF_HEADER, INPUT_HEADER = "wf", "wf_in"
#: Why a node will never run (``Node.doom``): a parent FAILED under ``"fail"``, a parent was
#: CANCELLED, a parent was skipped (or FAILED under ``"skip"``). The first two end the node
#: CANCELLED, the last SKIPPED; one beats the next (a join with a failed parent and a
#: cancelled one was cancelled by the failure). ``"cancelled"`` is newer than the others:
#: graphs stored before it say ``"cancel"`` for both causes.
DOOM_FAILED, DOOM_CANCELLED, DOOM_SKIPPED = "cancel", "cancelled", "skip"
#: A step still WAITING when its workflow was ended FAILED because its stored graph is
#: damaged (:mod:`.damage`): CANCELLED like the others, with its own reason.
DOOM_DAMAGED = "damaged"


@attrs.define
class Node:
    """One step: its job id, what it waits for and what waits for it.

    ``pending`` counts parents not final yet; ``doom`` is set when a parent failed
    (``"cancel"``), was cancelled (``"cancelled"``) or was skipped (``"skip"``): the node
    then never runs. ``final`` marks a ``finally_`` step, released once every other node is
    final.
    """

    id: str
    workflow: str
    task: str
    state: str = WAITING
    pending: int = 0
    doom: str | None = None
    policy: str = "fail"
    final: bool = False
    children: list[str] = attrs.field(factory=list)
    queue: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Flow:
    """A workflow's mutable head: its status and how many (non-``finally_``) nodes are open."""

    id: str
    status: str = RUNNING
    open: int = 0
    failed: bool = False
    cancelled: bool = False
    final: str | None = None  # the finally_ node's id
    created_at: float = attrs.field(factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class WorkflowGraph:
    """A snapshot for readers: the head, the output shape (node ids in nested lists: what
    ``get()`` returns once they are resolved) and the nodes in submission order."""

    flow: Flow
    output: Any
    nodes: list[Node] = attrs.field(factory=list)


def stored_node(data: Any, workflow: str, where: str) -> Node:
    """A node of ``workflow`` as a store read it back, checked: a hand-edited or damaged
    entry raises a :class:`CorruptWorkflowError` naming it (``where``: the store's file or
    table) here, not a ``TypeError`` deep inside a settle, which the settler took for an
    outage and ran the step again, forever."""
    if not isinstance(data, Mapping):
        raise CorruptWorkflowError(workflow, where, f"a step is {_brief(data)}, not an object")
    step = f"step {data.get('id')!r}"
    try:
        node = Node(**data)
    except TypeError as exc:
        raise CorruptWorkflowError(workflow, where, f"{step}: {exc}") from None
    problem = _node_problem(node)
    if problem is not None:
        raise CorruptWorkflowError(workflow, where, f"{step}: {problem}")
    return node


def _node_problem(node: Node) -> str | None:
    if not (isinstance(node.id, str) and isinstance(node.workflow, str)):
        return "its ids are not text"
    if node.state not in _NODE_STATES:
        return f"state {node.state!r} is none of {sorted(_NODE_STATES)}"
    if type(node.pending) is not int:
        return f"pending {node.pending!r} is not a count"
    if node.policy not in POLICIES:
        return f"policy {node.policy!r} is none of {list(POLICIES)}"
    children = node.children
    if not (isinstance(children, list) and all(isinstance(c, str) for c in children)):
        return f"children {_brief(children)} is not a list of step ids"
    return None


def stored_flow(data: Any, workflow: str, where: str) -> Flow:
    """A workflow's head as a store read it back, checked as :func:`stored_node` checks."""
    if not isinstance(data, Mapping):
        raise CorruptWorkflowError(workflow, where, f"its head is {_brief(data)}")
    try:
        flow = Flow(**data)
    except TypeError as exc:
        raise CorruptWorkflowError(workflow, where, f"its head: {exc}") from None
    if not isinstance(flow.status, str) or type(flow.open) is not int:
        raise CorruptWorkflowError(workflow, where, f"its head: status {flow.status!r}, "
                                   f"open {flow.open!r}")
    if flow.status not in _FLOW_STATES:  # read as given, it was RUNNING to no one: its
        # steps ran, and nothing ended it, retried it or raised
        raise CorruptWorkflowError(workflow, where, f"its head: status {flow.status!r} is "
                                   f"none of {sorted(_FLOW_STATES)}")
    return flow


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class GraphTxn(Protocol):
    """What a backend stores for workflows, inside one atomic section of its own.

    Every method here is required. One more is optional
    (:class:`~nuvom_kernel.workflow.damage.EndsDamaged`): a store that has it lets
    :func:`~nuvom_kernel.workflow.graph.advance` end a workflow whose stored graph is found
    damaged; one without it keeps such a workflow RUNNING, its waiting steps waiting (as
    before).
    """

    def insert(self, flow: Flow, output: Any, nodes: Sequence[Node],
               messages: Sequence[Message]) -> bool:
        """Store a new graph (each node with its message); ``False`` if the id exists."""

    def flows(self, ids: Iterable[str]) -> dict[str, Flow]: ...

    def nodes(self, ids: Iterable[str]) -> dict[str, Node]:
        """The stored nodes of these ids (unknown ids are left out)."""

    def update(self, flows: Iterable[Flow], nodes: Iterable[Node],
               bodies: Mapping[str, bytes]) -> None:
        """Write back changed heads and nodes, and new message bodies where given."""

    def release(self, ids: Sequence[str]) -> None:
        """Push the stored messages of these nodes into the queue, claimable now."""

    def graph(self, flow_id: str) -> WorkflowGraph | None: ...

    def bodies(self, ids: Iterable[str]) -> dict[str, bytes]:
        """The stored message bodies of these nodes."""
