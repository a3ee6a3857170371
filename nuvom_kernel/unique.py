"""Unique jobs: ``@task(unique=True)`` and ``unique_for=SECS``.

The job id *is* the uniqueness key — derived from the task name and the canonical encoded
arguments (positional ones named after their parameters, so ``f(1)`` and ``f(x=1)`` are the
same call) — so no backend needs a new index: a push of an id the queue holds (queued,
running or waiting for a retry) stores nothing, and the caller gets that job's handle. Once
the job is finished, its record still holds the id: within ``unique_for`` the finished job
is returned, after it (or at once without ``unique_for``) the same id starts its next run,
as ``nuvom retry job`` does, its QUEUED record stored first so two producers start one run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom_kernel.dispatcher import enqueue
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.job import Job
from nuvom_kernel.models import TERMINAL_STATES, JobStatus
from nuvom_kernel.serialization import TAG

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["enqueue_unique", "unique_id"]


def unique_id(envelope: Envelope, param_names: Sequence[str]) -> str:
    """``unique.<task>.<hash>`` of the envelope's task and wire-form arguments."""
    named: dict[str, Any] = {}
    extra = []
    for i, value in enumerate(envelope.args):
        if i < len(param_names):
            named[param_names[i]] = value
        else:
            extra.append(value)
    # A keyword of a positional parameter's name reaches **kwargs (the parameter is
    # positional-only: `def f(a, /, **kw)`): kept apart, or f(1, a=2) was f(1)'s job.
    clash = {k: v for k, v in envelope.kwargs.items() if k in named}
    named.update((k, v) for k, v in envelope.kwargs.items() if k not in clash)
    canonical = _canonical_json([envelope.task, named, extra, *([clash] if clash else [])])
    return f"unique.{envelope.task}.{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def _canonical_json(value: Any) -> str:
    """``value`` (wire data) as JSON that equal arguments share: keys sorted, and the items
    of a set and of a dict with non-string keys too, which the wire form lists in iteration
    order (``{1: "a", 2: "b"}`` and ``{2: "b", 1: "a"}``, or one set of strings in two
    processes with different hash seeds, hashed to two ids). A sort key is an item's own
    canonical JSON: any mix of types sorts."""
    return json.dumps(_sorted_items(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def _sorted_items(value: Any) -> Any:
    if type(value) is list:
        return [_sorted_items(v) for v in value]
    if type(value) is not dict:
        return value
    if len(value) == 1 and TAG in value:
        tag, payload = value[TAG]
        if tag in ("set", "frozenset", "dict"):
            return {TAG: [tag, sorted((_sorted_items(v) for v in payload),
                                      key=_canonical_json)]}
    return {k: _sorted_items(v) for k, v in value.items()}


def enqueue_unique(kernel: Kernel, envelope: Envelope, job: Job,
                   param_names: Sequence[str], delay_secs: float = 0.0) -> Job:
    """Enqueue ``job`` unless an equal one is unfinished (or finished within
    ``unique_for``); the handle of whichever job stands for the call."""
    envelope.id = job.id = unique_id(envelope, param_names)
    record = kernel.results.get(job.id)
    if record is not None and record.status in TERMINAL_STATES:
        window = job.options.unique_for
        finished = record.finished_at or record.updated_at
        if (window is not None and finished + window > time.time()) or \
                kernel.queue.peek_state(job.id) is not None:
            return _existing(kernel, job)
        envelope.run = job.run = record.run + 1
        if not kernel.results.put(envelope.record(JobStatus.QUEUED, updated_at=time.time())):
            return _existing(kernel, job)  # another producer started that run
    elif record is not None:
        # A run under way (queued by another producer, running, retrying) or whose push was
        # lost after its QUEUED record (a rolled-back transaction): push as that run; a
        # no-op where the queue holds the id. Run 1 here left a stale message whose outcome
        # every later run's record refused.
        envelope.run = job.run = record.run
    return enqueue(kernel, [(envelope, job)], delay_secs)[0]


def _existing(kernel: Kernel, job: Job) -> Job:
    job._kernel = kernel
    return kernel.refresh_job(job)


