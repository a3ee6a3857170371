"""Helpers for the dashboard's tests: job records as a worker stores them, CSRF forms."""

from __future__ import annotations

import html as htmllib
import re
import time
from typing import Any

from nuvom_kernel.envelope import options_to_wire
from nuvom_kernel.models import JobRecord, JobStatus, TaskOptions


def record(job_id: str, status: JobStatus = JobStatus.FAILED, *, task: str = "tasks.boom",
           queue: str = "default", updated_at: float | None = None, **fields: Any
           ) -> JobRecord:
    """A record as a worker settles it (FAILED ones carry an error and a traceback)."""
    now = time.time() if updated_at is None else updated_at
    values: dict[str, Any] = {
        "options": options_to_wire(TaskOptions(queue=queue)), "module": "tasks", "attempts": 1,
        "created_at": now - 1, "started_at": now - 0.5, "finished_at": now,
        "updated_at": now, "args": [1, 2], "kwargs": {}}
    if status is JobStatus.FAILED:
        values.update(error_type="ValueError", error_message="bad input",
                      traceback="Traceback (most recent call last):\nValueError: bad input\n",
                      history=[{"attempt": 1, "run": 1, "kind": "error",
                                "error_type": "ValueError", "error_message": "bad input",
                                "started_at": now - 0.5, "finished_at": now}])
    values.update(fields)
    return JobRecord(job_id=job_id, task=task, status=status, queue=queue, **values)


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def form_of(html: str) -> dict[str, str]:
    """The hidden fields of the page's POST form, as a browser would submit them (the
    CSRF token, a bulk action's filter and the jobs its confirmation counted, a retry's
    run)."""
    form = re.search(r'<form method="post".*?</form>', html, re.S)
    assert form, "the page has no POST form"
    return {name: htmllib.unescape(value) for name, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(0))}
