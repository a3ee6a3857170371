"""A worker cut off past its lease still finishes its attempt: what its late outcome may
change where the queue and the job records are separate stores (no ``settle_many``), so
nothing but the result backend's fence stands between that outcome and the record."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import pytest

from nuvom_kernel import JobStatus
from nuvom_kernel.job import Job
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobRecord, Message, Settlement
from nuvom_kernel.worker.settle import Settler


@pytest.mark.parametrize("queue_backend", ["memory", "file"])
def test_a_late_outcome_does_not_undo_a_cancel(make_kernel: Callable[..., Kernel],
                                                queue_backend: str):
    """The worker checked its lease, then its store took long enough for the lease to lapse
    and an operator to cancel the job waiting in its queue again. The late SUCCEEDED was
    stored over the CANCELLED record (the ack was refused, so it was never acked): the job
    read SUCCEEDED, and the operator's cancel as undone."""
    kernel = make_kernel(queue_backend, "sqlite")
    kernel.queue.push([Message(id="late-1", body=b"{}", task="t", created_at=time.time())])
    [lease] = kernel.queue.claim(1)
    assert kernel.queue.extend(lease, 0)  # the lease lapsed: the job waits in its queue
    assert kernel.cancel(kernel.refresh_job(Job(id=lease.id, task="", kernel=kernel)))
    # as far as the worker knew when it checked, its lease held
    seen = attrs.evolve(lease, expires_at=time.time() + 30)
    late = Settlement(seen, JobRecord(job_id=lease.id, task="t", status=JobStatus.SUCCEEDED,
                                      attempts=1, token=lease.token, result=3))
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    assert settler.settle([late]) == [False]
    record = kernel.results.get(lease.id)
    assert record is not None and record.status is JobStatus.CANCELLED, record
    assert kernel.queue.peek_state(lease.id) is None, "a cancelled job never runs again"
