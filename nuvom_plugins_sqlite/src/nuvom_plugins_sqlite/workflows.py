"""Workflow graphs in the queue's file: ``nuvom_workflows`` (one row per workflow) and
``nuvom_wf_nodes`` (one row per step, its message kept beside it until it is released).

:class:`SQLiteGraphTxn` is the kernel's :class:`~nuvom_kernel.workflow.graph.GraphTxn` on a
connection inside a transaction: :meth:`SQLiteJobQueue.settle_many` advances the graph in the
same transaction that stores a step's outcome and acks it, so a crash can neither lose a
release nor make one twice. A settle reads and writes only the settled node, its children and
its workflow's row (never the siblings), and a released node's message is copied into
``nuvom_queue`` by one ``INSERT ... SELECT``: a fan-out of n members costs O(n).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nuvom_kernel.errors import CorruptWorkflowError
from nuvom_kernel.models import Message
from nuvom_kernel.workflow.graph import Flow, Node, WorkflowGraph, stored_flow, stored_node

__all__ = ["MIGRATION", "SQLiteGraphTxn", "id_chunks", "purge_ended"]

#: Schema version 5 (appended to :data:`~nuvom_plugins_sqlite.schema.MIGRATIONS`).
MIGRATION = [
    """
    CREATE TABLE nuvom_workflows (
        id          TEXT PRIMARY KEY,
        status      TEXT NOT NULL,
        open        INTEGER NOT NULL,
        failed      INTEGER NOT NULL,
        cancelled   INTEGER NOT NULL,
        final       TEXT,                  -- the finally_ node's id
        created_at  REAL NOT NULL,
        finished_at REAL,
        output      TEXT NOT NULL          -- JSON: node ids in nested lists
    )
    """,
    """
    CREATE TABLE nuvom_wf_nodes (
        seq       INTEGER PRIMARY KEY,     -- submission order
        id        TEXT NOT NULL UNIQUE,
        workflow  TEXT NOT NULL,
        task      TEXT NOT NULL,
        state     TEXT NOT NULL,
        pending   INTEGER NOT NULL,
        doom      TEXT,
        policy    TEXT NOT NULL,
        final     INTEGER NOT NULL,
        children  TEXT NOT NULL,           -- JSON list of node ids
        queue     TEXT NOT NULL,
        priority  INTEGER NOT NULL,
        body      BLOB NOT NULL            -- the message, pushed when the node is released
    )
    """,
    "CREATE INDEX nuvom_wf_nodes_workflow ON nuvom_wf_nodes (workflow, seq)",
    # `nuvom status` counts waiting steps without reading the finished ones
    "CREATE INDEX nuvom_wf_nodes_waiting ON nuvom_wf_nodes (state) WHERE state = 'WAITING'",
]

_CHUNK = 500  # ids per IN (...) list
_NODE_COLS = "id, workflow, task, state, pending, doom, policy, final, children, queue"
_FLOW_COLS = "id, status, open, failed, cancelled, final, created_at, finished_at"


def id_chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    """``ids`` in slices short enough for one ``IN (...)`` list each (under every
    SQLite's 999-variable limit)."""
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def _node(row: Sequence[Any]) -> Node:
    children = _json(row[8], row[1], "nuvom_wf_nodes", f"the children list of step {row[0]!r}")
    return stored_node({"id": row[0], "workflow": row[1], "task": row[2], "state": row[3],
                        "pending": row[4], "doom": row[5], "policy": row[6],
                        "final": bool(row[7]), "children": children, "queue": row[9]},
                       row[1], "SQLite table nuvom_wf_nodes")


def _flow(row: Sequence[Any]) -> Flow:
    return stored_flow({"id": row[0], "status": row[1], "open": row[2],
                        "failed": bool(row[3]), "cancelled": bool(row[4]), "final": row[5],
                        "created_at": row[6], "finished_at": row[7]},
                       row[0], "SQLite table nuvom_workflows")


def _json(text: Any, workflow: str, table: str, what: str) -> Any:
    """A JSON column, or the error that says which row holds what instead."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CorruptWorkflowError(workflow, f"SQLite table {table}",
                                   f"{what} is not JSON ({exc}): {str(text)[:80]!r}") from None


class SQLiteGraphTxn:
    """The workflow tables through ``conn``, which the caller holds in a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.released = 0
        self._saved: dict[str, tuple[Any, ...]] = {}  # node id -> row as loaded

    def insert(self, flow: Flow, output: Any, nodes: Sequence[Node],
               messages: Sequence[Message]) -> bool:
        stored = self.conn.execute(
            "INSERT INTO nuvom_workflows (id, status, open, failed, cancelled, final, "
            "created_at, finished_at, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (flow.id, flow.status, flow.open, flow.failed, flow.cancelled, flow.final,
             flow.created_at, flow.finished_at, json.dumps(output, separators=(",", ":"))),
        ).rowcount
        if stored != 1:
            return False
        bodies = {m.id: m for m in messages}
        self.conn.executemany(
            "INSERT INTO nuvom_wf_nodes (id, workflow, task, state, pending, doom, policy, "
            "final, children, queue, priority, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(n.id, n.workflow, n.task, n.state, n.pending, n.doom, n.policy, n.final,
              json.dumps(n.children, separators=(",", ":")), n.queue,
              bodies[n.id].priority, bodies[n.id].body) for n in nodes])
        return True

    def flows(self, ids: Iterable[str]) -> dict[str, Flow]:
        wanted = list(ids)
        out: dict[str, Flow] = {}
        for chunk in id_chunks(wanted):
            rows = self.conn.execute(
                f"SELECT {_FLOW_COLS} FROM nuvom_workflows WHERE id IN "
                f"({', '.join('?' * len(chunk))})", chunk).fetchall()
            out.update((row[0], _flow(row)) for row in rows)
        return out

    def nodes(self, ids: Iterable[str]) -> dict[str, Node]:
        wanted = list(ids)
        out: dict[str, Node] = {}
        for chunk in id_chunks(wanted):
            rows = self.conn.execute(
                f"SELECT {_NODE_COLS} FROM nuvom_wf_nodes WHERE id IN "
                f"({', '.join('?' * len(chunk))})", chunk).fetchall()
            for row in rows:
                out[row[0]] = _node(row)
                self._saved[row[0]] = (row[3], row[4], row[5])
        return out

    def update(self, flows: Iterable[Flow], nodes: Iterable[Node],
               bodies: Mapping[str, bytes]) -> None:
        self.conn.executemany(
            "UPDATE nuvom_workflows SET status = ?, open = ?, failed = ?, cancelled = ?, "
            "finished_at = ? WHERE id = ?",
            [(f.status, f.open, f.failed, f.cancelled, f.finished_at, f.id) for f in flows])
        # Only the nodes that changed: a settle loads a join to decrement it, not its
        # 10,000 siblings, and writes back that one row.
        changed = [(n.state, n.pending, n.doom, n.id) for n in nodes
                   if self._saved.get(n.id) != (n.state, n.pending, n.doom)]
        if changed:
            self.conn.executemany("UPDATE nuvom_wf_nodes SET state = ?, pending = ?, doom = ? "
                                  "WHERE id = ?", changed)
        if bodies:
            self.conn.executemany("UPDATE nuvom_wf_nodes SET body = ? WHERE id = ?",
                                  [(body, node_id) for node_id, body in bodies.items()])

    def release(self, ids: Sequence[str]) -> None:
        now = time.time()
        for chunk in id_chunks(list(ids)):
            self.conn.execute(
                "INSERT INTO nuvom_queue (id, queue, priority, created_at, available_at, "
                "visible_at, body, task) SELECT id, queue, priority, ?, 0, NULL, body, task "
                f"FROM nuvom_wf_nodes WHERE id IN ({', '.join('?' * len(chunk))}) "
                "ON CONFLICT (id) DO NOTHING", (now, *chunk))
        self.released += len(ids)

    def graph(self, flow_id: str) -> WorkflowGraph | None:
        row = self.conn.execute(f"SELECT {_FLOW_COLS}, output FROM nuvom_workflows "
                                "WHERE id = ?", (flow_id,)).fetchone()
        if row is None:
            return None
        # fetched whole before decoding: a damaged row raising mid-iteration left the cursor
        # open, and the traceback that keeps it (a caught error, a REPL's last one) held
        # this thread's read snapshot: its later reads missed every commit since
        rows = self.conn.execute(
            f"SELECT {_NODE_COLS} FROM nuvom_wf_nodes WHERE workflow = ? ORDER BY seq",
            (flow_id,)).fetchall()
        nodes = [_node(r) for r in rows]
        for node in nodes:
            self._saved[node.id] = (node.state, node.pending, node.doom)
        return WorkflowGraph(_flow(row), _json(row[-1], flow_id, "nuvom_workflows",
                                               "its output"), nodes)

    def head(self, flow_id: str) -> WorkflowGraph | None:
        """The workflow's row without its nodes, and its output once it ended (``get()``
        polls this: a 10,000-member output is not parsed on every poll)."""
        row = self.conn.execute(
            f"SELECT {_FLOW_COLS}, CASE WHEN status = 'RUNNING' THEN 'null' ELSE output END "
            "FROM nuvom_workflows WHERE id = ?", (flow_id,)).fetchone()
        return None if row is None else WorkflowGraph(
            _flow(row), _json(row[-1], flow_id, "nuvom_workflows", "its output"))

    def waiting_nodes(self, flow_id: str) -> list[Node]:
        """:meth:`~nuvom_kernel.workflow.graph.EndsDamaged.waiting_nodes`: the workflow's
        WAITING rows that decode, a damaged row left as it is, so restoring it by hand
        finds the rest as they were."""
        out = []
        for row in self.conn.execute(
                f"SELECT {_NODE_COLS} FROM nuvom_wf_nodes WHERE state = 'WAITING' "
                "AND workflow = ? ORDER BY seq", (flow_id,)).fetchall():
            try:
                node = _node(row)
            except CorruptWorkflowError:
                continue
            out.append(node)
            self._saved[node.id] = (row[3], row[4], row[5])
        return out

    def bodies(self, ids: Iterable[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for chunk in id_chunks(list(ids)):
            out.update(self.conn.execute(
                f"SELECT id, body FROM nuvom_wf_nodes WHERE id IN "
                f"({', '.join('?' * len(chunk))})", chunk).fetchall())
        return out


def purge_ended(conn: sqlite3.Connection, older_than: float) -> int:
    """Delete workflows that ended before ``older_than`` with their steps (in the caller's
    transaction); how many workflows."""
    ids = [row[0] for row in conn.execute(
        "SELECT id FROM nuvom_workflows WHERE status <> 'RUNNING' AND finished_at < ?",
        (older_than,))]
    for chunk in id_chunks(ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM nuvom_wf_nodes WHERE workflow IN ({marks})", chunk)
        conn.execute(f"DELETE FROM nuvom_workflows WHERE id IN ({marks})", chunk)
    return len(ids)
