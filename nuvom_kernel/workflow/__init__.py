"""Workflows: chains, groups and joins stored as a graph with the queue backend.

:mod:`.canvas` builds them (``task.s()``, :func:`chain`, :func:`group`), :mod:`.graph` holds
the stored shape and the rules every backend applies in its own transaction, and
:mod:`.handle` reads them back (:class:`Workflow`, :func:`get_workflow`).
"""

from nuvom_kernel.workflow.canvas import Chain, Group, Step, chain, group
from nuvom_kernel.workflow.handle import StepFailed, Workflow, WorkflowNode, get_workflow

__all__ = ["Chain", "Group", "Step", "StepFailed", "Workflow", "WorkflowNode", "chain",
           "get_workflow", "group"]
