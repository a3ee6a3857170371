"""The ``workflows`` capability of the queue backend SPI: the calls a backend declaring it
overrides (``QueueBackend`` inherits them, with defaults that say it is not supported).

The kernel's rules (:mod:`nuvom_kernel.workflow.graph`) run inside
:meth:`WorkflowStore.workflow_transaction`; a backend only stores nodes, heads and the
messages of steps not released yet, and makes the transaction atomic where it can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

from nuvom_kernel.models import JobStatus, Lease

if TYPE_CHECKING:
    from nuvom_kernel.workflow.shape import GraphTxn, Node, WorkflowGraph

__all__ = ["WorkflowStore"]

T = TypeVar("T")


class WorkflowStore:
    """Mixed into :class:`~nuvom_kernel.backends.QueueBackend` (declare ``workflows``)."""

    name: ClassVar[str]

    def peek_state(self, job_id: str) -> JobStatus | None:
        raise NotImplementedError

    def workflow_transaction(self, fn: Callable[[GraphTxn], T],
                             workflows: Sequence[str] = ()) -> T:
        """Run ``fn`` with a :class:`~nuvom_kernel.workflow.graph.GraphTxn` over this
        backend's workflow store, atomically where the backend can (all of ``fn``'s writes,
        the messages it releases included, or none). ``workflows`` names the workflows
        whose nodes ``fn`` looks up by id (a backend that stores per workflow loads them up
        front)."""
        raise NotImplementedError(f"queue backend {self.name!r} does not support workflows")

    def read_workflow(self, workflow_id: str, *, nodes: bool = True) -> WorkflowGraph | None:
        """A snapshot of a workflow (its head only with ``nodes=False``); override with a
        plain read where a transaction would block writers.

        With ``nodes=False``, a transaction with a ``head(workflow_id)`` call (optional: a
        :class:`~nuvom_kernel.workflow.graph.WorkflowGraph` without nodes, or ``None``)
        reads the head without decoding the nodes, so a workflow with one damaged step
        still says its status; without one, the whole graph is read and its nodes dropped.
        """
        def read(txn: GraphTxn) -> WorkflowGraph | None:
            head: Callable[[str], WorkflowGraph | None] | None = getattr(txn, "head", None)
            if not nodes and head is not None:
                return head(workflow_id)
            graph = txn.graph(workflow_id)
            if graph is not None and not nodes:
                graph.nodes = []
            return graph
        return self.workflow_transaction(read)

    def advance_workflows(self, outcomes: Sequence[tuple[Lease, JobStatus, str]],
                          unseen: Callable[[list[str]], list[str]] | None = None,
                          record: Callable[[list[Node]], object] | None = None
                          ) -> list[Node]:
        """Apply final outcomes (lease, status, workflow id) of steps whose records are
        stored and whose leases are not acked yet: the settler calls it between the two
        when ``settle_many`` is not used. Fenced: an outcome whose lease no longer
        :meth:`holds` changes nothing, and a node already advanced is not advanced again,
        so a step that runs twice after a crash between this and its ack releases its
        dependents once (``unseen``: see :func:`~nuvom_kernel.workflow.graph.advance`).
        Returns the nodes cancelled or skipped as a consequence, after ``record`` stored
        their records: inside the transaction, before the graphs commit, so whoever sees a
        workflow ended finds every step's record (not UNKNOWN for a step it cancelled).
        The settler always passes it, and calls this only where the records live apart
        from the graphs (a store that shares one transaction with them settles through
        ``settle_many``): writing them to a store this transaction holds locked would
        wait for itself."""
        from nuvom_kernel.workflow.graph import advance

        def run(txn: GraphTxn) -> list[Node]:
            held = [(lease.id, status) for lease, status, _ in outcomes if self.holds(lease)]
            doomed = advance(txn, held, unseen)
            if doomed and record is not None:
                record(doomed)
            return doomed
        return self.workflow_transaction(run, sorted({wf for _, _, wf in outcomes}))

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` still holds its message (the fence of
        :meth:`advance_workflows`); override where the default (the id is still queued)
        cannot tell a lost lease."""
        return self.peek_state(lease.id) is not None

    def workflow_step(self, job_id: str, workflow: str | None = None) -> Node | None:
        """The node of ``job_id`` if it is a step of a stored workflow, else ``None``: a
        step WAITING for its parents is in no queue and has no record, and this is how
        ``get_job()`` reads it as QUEUED (not UNKNOWN) and ``nuvom retry job`` tells a step
        (which runs again only inside its workflow) from a lone job. ``workflow`` is where
        the step probably is (a handle that knows it passes it; a backend that stores per
        workflow looks there first). ``Job.get()`` polls this while a step waits: override
        with a plain read where a transaction would block writers."""
        return self.workflow_transaction(lambda txn: txn.nodes([job_id]).get(job_id),
                                         [workflow] if workflow else [])

    def waiting_steps(self) -> int:
        """Steps WAITING for their parents (``nuvom status`` counts them apart from queued
        jobs: they are not in the queue yet)."""
        return 0

    def purge_workflows(self, older_than: float) -> int:
        """Delete the graphs of workflows that ended before the epoch ``older_than``
        (``nuvom purge results`` calls it with the cutoff that purged their steps'
        records); how many."""
        return 0
