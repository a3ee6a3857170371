"""Where jobs end and workflows move: for backends without ``settle_many``, the settler
advances the graph after the outcomes are stored and before the leases are acked (a crash in
between runs the step again; its second advance changes nothing, so its dependents are
released once); and a step cancelled before it ran ends its node too."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nuvom_kernel.models import TERMINAL_STATES, JobStatus, Settlement
from nuvom_kernel.workflow.graph import advance, doomed_record

if TYPE_CHECKING:
    from nuvom_kernel.backends import QueueBackend, ResultBackend

__all__ = ["advance_steps", "cancelled_step", "final_steps", "never_pushed"]

log = logging.getLogger("nuvom.worker")


def final_steps(batch: Sequence[Settlement]) -> list[Settlement]:
    """The settlements that end a workflow step (a retry is not an end)."""
    return [s for s in batch if s.workflow and s.retry_in is None
            and s.record.status in TERMINAL_STATES]


def advance_steps(queue: QueueBackend, results: ResultBackend,
                  steps: Sequence[Settlement]) -> bool:
    """Advance the graphs of ``steps`` (outcomes already stored); ``False`` if the backend
    failed: the caller then leaves the leases to expire, so the steps run and advance
    again."""
    try:
        queue.advance_workflows([(s.lease, s.record.status, s.workflow or "") for s in steps],
                                never_pushed(queue, results), lambda doomed: results.put_many(
                                    [doomed_record(node) for node in doomed]))
    except Exception as exc:
        log.error("queue backend %r failed to advance %d workflow step(s) (%r); not acked, "
                  "they will run again after the visibility timeout", queue.name, len(steps),
                  exc)
        return False
    return True


def never_pushed(queue: QueueBackend, results: ResultBackend
                 ) -> Callable[[list[str]], list[str]]:
    """:func:`advance`'s ``unseen``: of these released step ids, those never pushed
    (neither queued nor recorded), which a crash between saving a graph and pushing its
    released steps left behind, where a store does those apart."""
    return lambda ids: [i for i in ids
                        if queue.peek_state(i) is None and results.get(i) is None]


def cancelled_step(queue: QueueBackend, results: ResultBackend, job_id: str) -> None:
    """A job cancelled before it ran (``nuvom cancel job``): if it is a workflow step, its
    dependents are cancelled and its workflow ends CANCELLED, instead of waiting forever."""
    doomed = queue.workflow_transaction(
        lambda txn: advance(txn, [(job_id, JobStatus.CANCELLED)]))
    if doomed:
        results.put_many([doomed_record(node) for node in doomed])
