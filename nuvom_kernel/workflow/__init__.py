"""Workflows: chains, groups and joins stored as a graph with the queue backend.

:mod:`.canvas` builds them (``task.s()``, :func:`chain`, :func:`group`), :mod:`.shape` holds
the stored shape, :mod:`.graph` the rules every backend applies in its own transaction and
:mod:`.damage` what a settle does with a graph found damaged, :mod:`.spi` the backend
calls, :mod:`.handle` reads them back (:class:`Workflow`, :func:`get_workflow`).
Names are imported on first access, so the backend SPI importing :mod:`.spi` loads no more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"Chain": "canvas", "Group": "canvas", "Step": "canvas", "chain": "canvas",
            "group": "canvas", "StepFailed": "handle", "Workflow": "handle",
            "WorkflowNode": "handle", "get_workflow": "handle"}

__all__ = ["Chain", "Group", "Step", "StepFailed", "Workflow", "WorkflowNode", "chain",
           "get_workflow", "group"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nuvom_kernel.workflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nuvom_kernel.workflow.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from nuvom_kernel.workflow.canvas import Chain, Group, Step, chain, group
    from nuvom_kernel.workflow.handle import StepFailed, Workflow, WorkflowNode, get_workflow
