"""A :class:`~nuvom_kernel.workflow.graph.GraphTxn` over one JSON document per workflow,
for backends without tables: the memory backend keeps the documents in a dict, the file
backend in files. A transaction loads the documents it touches once and saves the changed
ones at the end; the backend supplies the lock that makes it atomic. Every settle rewrites
its workflow's document, so a fan-out of n steps costs O(n²) bytes written here (SQLite
updates one row per step instead).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nuvom_kernel.errors import CorruptWorkflowError
from nuvom_kernel.models import Message
from nuvom_kernel.workflow.shape import (
    WAITING,
    Flow,
    Node,
    WorkflowGraph,
    stored_flow,
    stored_node,
)

__all__ = ["DocGraphTxn", "checked_doc", "ended_before", "waiting_in"]

Doc = dict[str, Any]


class DocGraphTxn:
    """:param load: a workflow's document, or ``None``; :param save: store one;
    :param push: push released messages into the queue; :param preload: the workflows
    whose nodes :meth:`nodes` may be asked for (a node id alone does not say which);
    :param locate: the workflow of a node id outside them, found the slow way (a step
    cancelled by id: rare); :param where: where a workflow's document is kept (errors
    name it). ``load`` raises :class:`CorruptWorkflowError` for a document that does not
    decode (:func:`checked_doc`)."""

    def __init__(self, load: Callable[[str], Doc | None], save: Callable[[Doc], None],
                 push: Callable[[list[Message]], Any], preload: Iterable[str] = (),
                 locate: Callable[[str], str | None] | None = None,
                 where: Callable[[str], str] = lambda flow_id: "memory") -> None:
        self._load, self._save, self._push, self._locate = load, save, push, locate
        self.where = where
        self.docs: dict[str, Doc] = {}
        self.dirty: set[str] = set()
        self.owner: dict[str, str] = {}  # node id -> workflow id
        self.to_push: list[str] = []
        #: preloaded workflows whose documents do not decode: a node asked for that no
        #: other document holds is probably in one of them, and says so
        self.corrupt: dict[str, CorruptWorkflowError] = {}
        for flow_id in preload:
            try:
                self._doc(flow_id)
            except CorruptWorkflowError as exc:
                self.corrupt[flow_id] = exc

    def _doc(self, flow_id: str) -> Doc | None:
        if flow_id not in self.docs:
            if flow_id in self.corrupt:
                raise self.corrupt[flow_id]
            doc = self._load(flow_id)
            if doc is None:
                return None
            self.docs[flow_id] = doc
            self.owner.update((node_id, flow_id) for node_id in doc["order"])
        return self.docs[flow_id]

    def _node(self, flow_id: str, node_id: str) -> Node:
        return stored_node(self.docs[flow_id]["nodes"].get(node_id), flow_id,
                           self.where(flow_id))

    def _flow(self, flow_id: str) -> Flow:
        return stored_flow(self.docs[flow_id]["flow"], flow_id, self.where(flow_id))

    # --- GraphTxn -----------------------------------------------------------------------------

    def insert(self, flow: Flow, output: Any, nodes: Sequence[Node],
               messages: Sequence[Message]) -> bool:
        if self._doc(flow.id) is not None:
            return False
        doc = {"flow": flow.to_dict(), "output": output, "order": [n.id for n in nodes],
               "nodes": {n.id: n.to_dict() for n in nodes},
               "messages": {m.id: {"body": base64.b64encode(m.body).decode("ascii"),
                                   "queue": m.queue, "priority": m.priority, "task": m.task}
                            for m in messages}}
        self.docs[flow.id] = doc
        self.owner.update((n.id, flow.id) for n in nodes)
        self.dirty.add(flow.id)
        return True

    def flows(self, ids: Iterable[str]) -> dict[str, Flow]:
        out = {}
        for flow_id in ids:
            if self._doc(flow_id) is not None:
                out[flow_id] = self._flow(flow_id)
        return out

    def nodes(self, ids: Iterable[str]) -> dict[str, Node]:
        out = {}
        for node_id in ids:
            flow_id = self.owner.get(node_id)
            if flow_id is None and self.corrupt:
                raise next(iter(self.corrupt.values()))
            if flow_id is None and self._locate is not None:
                found = self._locate(node_id)
                flow_id = found if found and self._doc(found) is not None else None
            if flow_id is not None:
                out[node_id] = self._node(flow_id, node_id)
        return out

    def update(self, flows: Iterable[Flow], nodes: Iterable[Node],
               bodies: Mapping[str, bytes]) -> None:
        for flow in flows:
            self.docs[flow.id]["flow"] = flow.to_dict()
            self.dirty.add(flow.id)
        for node in nodes:
            self.docs[node.workflow]["nodes"][node.id] = node.to_dict()
            self.dirty.add(node.workflow)
        for node_id, body in bodies.items():
            flow_id = self.owner[node_id]
            self.docs[flow_id]["messages"][node_id]["body"] = \
                base64.b64encode(body).decode("ascii")
            self.dirty.add(flow_id)

    def release(self, ids: Sequence[str]) -> None:
        """Pushed by :meth:`commit`, after the documents are saved."""
        self.to_push += ids

    def _push_released(self) -> None:
        now = time.time()
        messages = []
        for node_id in self.to_push:
            m = self.docs[self.owner[node_id]]["messages"][node_id]
            messages.append(Message(id=node_id, body=base64.b64decode(m["body"]),
                                    queue=m["queue"], priority=m["priority"], created_at=now,
                                    task=m["task"]))
        self._push(messages)
        self.to_push = []

    def graph(self, flow_id: str) -> WorkflowGraph | None:
        doc = self._doc(flow_id)
        if doc is None:
            return None
        return WorkflowGraph(self._flow(flow_id), doc["output"],
                             [self._node(flow_id, i) for i in doc["order"]])

    def bodies(self, ids: Iterable[str]) -> dict[str, bytes]:
        return {i: base64.b64decode(self.docs[self.owner[i]]["messages"][i]["body"])
                for i in ids}

    # --- optional calls -----------------------------------------------------------------------

    def waiting_nodes(self, flow_id: str) -> list[Node]:
        """:meth:`~nuvom_kernel.workflow.graph.EndsDamaged.waiting_nodes`: the document's
        WAITING nodes that decode. A damaged one is left as it is in the document (saved
        back untouched), so restoring it by hand still finds the rest as they were."""
        doc = self._doc(flow_id)
        if doc is None:
            return []
        out = []
        for node_id in doc["order"]:
            try:
                node = self._node(flow_id, node_id)
            except CorruptWorkflowError:
                continue
            if node.state == WAITING:
                out.append(node)
        return out

    def head(self, flow_id: str) -> WorkflowGraph | None:
        """The workflow's head and output without decoding its nodes (what
        :meth:`~nuvom_kernel.workflow.spi.WorkflowStore.read_workflow` reads with
        ``nodes=False``): ``wf.status`` and ``wf.get()``'s polls then read a workflow whose
        one step is damaged — as FAILED once that ended it — as they do on SQLite, instead
        of raising for a step they never show."""
        doc = self._doc(flow_id)
        if doc is None:
            return None
        return WorkflowGraph(self._flow(flow_id), doc["output"])

    # --- the end of the transaction -----------------------------------------------------------

    def commit(self) -> None:
        """Save every changed document, then push the released steps (call after the
        transaction's function returned). In that order a crash can only leave a step
        RELEASED but not pushed, which :func:`~nuvom_kernel.workflow.graph.advance` with
        ``unseen`` mends when its parent's outcome is applied again; the other order could
        push a step twice."""
        for flow_id in sorted(self.dirty):
            self._save(self.docs[flow_id])
        self.dirty.clear()
        if self.to_push:
            self._push_released()


def checked_doc(data: Any, flow_id: str, where: str) -> Doc:
    """A workflow's document as read back, its shape checked (its nodes are checked as
    they are read, :func:`~nuvom_kernel.workflow.graph.stored_node`)."""
    if not isinstance(data, dict):
        raise CorruptWorkflowError(flow_id, where, f"the document is {type(data).__name__}, "
                                   "not an object")
    for key, kind in (("flow", dict), ("nodes", dict), ("order", list), ("messages", dict)):
        if not isinstance(data.get(key), kind):
            raise CorruptWorkflowError(flow_id, where, f"its {key!r} is not "
                                       f"{'an object' if kind is dict else 'a list'}")
    if "output" not in data or not all(isinstance(i, str) for i in data["order"]):
        raise CorruptWorkflowError(flow_id, where, "no 'output', or an 'order' of non-ids")
    return data


def ended_before(doc: Doc, older_than: float) -> bool:
    """Whether the workflow of ``doc`` ended before the epoch ``older_than`` (purgeable)."""
    flow = doc["flow"]
    return flow.get("status") != "RUNNING" and (flow.get("finished_at") or 0.0) < older_than


def waiting_in(docs: Iterable[Doc]) -> int:
    """WAITING steps in these documents (``nuvom status``)."""
    return sum(1 for doc in docs for node in doc["nodes"].values()
               if isinstance(node, dict) and node.get("state") == "WAITING")
