"""The ``workflows`` promise of a queue backend: graphs stored atomically, steps released
once and only by a lease that still holds (skipped for backends that do not declare it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs

from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.models import JobStatus, Lease, Message
from nuvom_kernel.testing.contracts._queue_base import QueueContractBase
from nuvom_kernel.testing.contracts._support import make_message, requires, wait_until
from nuvom_kernel.workflow.graph import Flow, Node, create

__all__ = ["QueueWorkflowTests"]


def _graph(edges: dict[str, list[str]]) -> tuple[Flow, list[Node], list[Message]]:
    """A workflow whose steps are ``edges``' keys (in order), each with its children."""
    flow = Flow(id=uuid.uuid4().hex)
    ids = {name: uuid.uuid4().hex for name in edges}
    parents = {name: sum(name in kids for kids in edges.values()) for name in edges}
    nodes = [Node(id=ids[name], workflow=flow.id, task=f"tasks.{name}",
                  pending=parents[name], children=[ids[k] for k in kids])
             for name, kids in edges.items()]
    messages = [make_message(ids[name], body=name.encode(), task=f"tasks.{name}")
                for name in edges]
    return flow, nodes, messages


class QueueWorkflowTests(QueueContractBase):
    def _submit(self, backend: QueueBackend, edges: dict[str, list[str]]
                ) -> tuple[Flow, dict[str, str]]:
        flow, nodes, messages = _graph(edges)
        assert backend.workflow_transaction(
            lambda txn: create(txn, attrs.evolve(flow), [n.id for n in nodes], nodes,
                               messages)) is True
        return flow, {m.body.decode(): m.id for m in messages}

    def _claim_named(self, backend: QueueBackend) -> dict[str, Lease]:
        return {lease.message.body.decode(): lease for lease in backend.claim(10)}

    @requires("workflows")
    def test_workflow_submit_makes_only_ready_steps_claimable(
            self, queue_backend: QueueBackend) -> None:
        flow, _ = self._submit(queue_backend, {"a": ["b"], "b": [], "c": []})
        assert sorted(self._claim_named(queue_backend)) == ["a", "c"], \
            "a step with a parent not done must wait (not claimable)"
        assert queue_backend.waiting_steps() == 1
        graph = queue_backend.read_workflow(flow.id)
        assert graph is not None and graph.flow.status == "RUNNING"
        assert [n.state for n in graph.nodes] == ["RELEASED", "WAITING", "RELEASED"]

    @requires("workflows")
    def test_workflow_join_is_released_once_by_its_last_parent(
            self, queue_backend: QueueBackend) -> None:
        flow, _ = self._submit(queue_backend, {"a": ["j"], "b": ["j"], "j": []})
        leases = self._claim_named(queue_backend)
        queue_backend.advance_workflows([(leases["a"], JobStatus.SUCCEEDED, flow.id)])
        assert queue_backend.claim(1) == [], "the join waits for its other parent"
        for _ in range(2):  # a repeat (a step run twice after a crash) releases nothing more
            queue_backend.advance_workflows([(leases["b"], JobStatus.SUCCEEDED, flow.id)])
        assert queue_backend.ack(leases["a"]) and queue_backend.ack(leases["b"])
        join = self._claim_named(queue_backend)
        assert list(join) == ["j"]
        assert queue_backend.ack(join["j"])
        queue_backend.advance_workflows([(leases["b"], JobStatus.SUCCEEDED, flow.id)])
        assert queue_backend.qsize() == 0, "a finished join must not be released again"
        queue_backend.advance_workflows([(join["j"], JobStatus.SUCCEEDED, flow.id)])
        graph = queue_backend.read_workflow(flow.id)
        assert graph is not None
        assert graph.flow.status == "RUNNING", "the join's lease was acked: not advanced"

    @requires("workflows")
    def test_workflow_failure_cancels_dependents(self, queue_backend: QueueBackend) -> None:
        flow, _ = self._submit(queue_backend, {"a": ["b"], "b": ["c"], "c": []})
        lease = self._claim_named(queue_backend)["a"]
        recorded: list[Node] = []
        doomed = queue_backend.advance_workflows([(lease, JobStatus.FAILED, flow.id)],
                                                 None, recorded.extend)
        assert sorted(n.task for n in doomed) == ["tasks.b", "tasks.c"]
        assert [n.id for n in recorded] == [n.id for n in doomed], \
            "the cancelled steps' records are stored (record) before the graph commits"
        assert queue_backend.ack(lease)
        graph = queue_backend.read_workflow(flow.id)
        assert graph is not None and graph.flow.status == "FAILED"
        assert [n.state for n in graph.nodes] == ["FAILED", "CANCELLED", "CANCELLED"]
        assert queue_backend.qsize() == 0 and queue_backend.waiting_steps() == 0

    @requires("workflows")
    def test_workflow_advance_by_a_lost_lease_changes_nothing(
            self, build_queue: Callable[..., QueueBackend]) -> None:
        backend = build_queue(visibility_timeout_secs=self.short_visibility_secs)
        flow, _ = self._submit(backend, {"a": ["b"], "b": []})
        stale = self._claim_named(backend)["a"]
        wait_until(lambda: backend.claim(1), self.patience_secs, "the lease never expired")
        backend.advance_workflows([(stale, JobStatus.SUCCEEDED, flow.id)])
        graph = backend.read_workflow(flow.id)
        assert graph is not None
        assert [n.state for n in graph.nodes] == ["RELEASED", "WAITING"], \
            "a worker that lost its lease must not advance the graph"

    @requires("workflows")
    def test_workflow_step_finds_a_node_by_its_job_id(self, queue_backend: QueueBackend) -> None:
        flow, ids = self._submit(queue_backend, {"a": ["b"], "b": []})
        other, _ = self._submit(queue_backend, {"x": []})
        for hint in (None, flow.id, other.id):  # a hint names where to look first, only
            node = queue_backend.workflow_step(ids["b"], hint)
            assert node is not None, f"a waiting step must be found (hint {hint!r})"
            assert (node.id, node.workflow, node.state) == (ids["b"], flow.id, "WAITING")
        first = queue_backend.workflow_step(ids["a"])
        assert first is not None and first.state == "RELEASED" and first.task == "tasks.a"
        assert queue_backend.workflow_step("never-" + uuid.uuid4().hex) is None, \
            "an id that is no step is None"
