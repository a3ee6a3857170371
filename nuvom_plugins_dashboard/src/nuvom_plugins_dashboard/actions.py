"""Retry and cancel, one job or every job a filter lists: the same kernel calls as
``nuvom retry job`` and ``nuvom cancel job``, each outcome reported back to the page.

A bulk action acts on at most :data:`BULK_LIMIT` jobs per confirmation so one request stays
short with 200,000 failed jobs; a retried job leaves the ``failed`` list (its new run is
QUEUED), so confirming again acts on the next ones, and the report says how many are left.
"""

from __future__ import annotations

from typing import Any

import attrs

from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobStatus
from nuvom_plugins_dashboard.views import BadRequest, JobFilter, list_jobs

__all__ = ["ACTIONS", "BULK_LIMIT", "BulkReport", "act", "bulk", "check_bulk_filter"]

#: Jobs one bulk confirmation acts on at most.
BULK_LIMIT = 1000

#: Action name -> the states it applies to (the page offers it only there).
ACTIONS: dict[str, tuple[JobStatus, ...]] = {
    "retry": (JobStatus.FAILED, JobStatus.CANCELLED),
    "cancel": (JobStatus.QUEUED, JobStatus.RETRYING),
}


def act(kernel: Any, action: str, job_id: str) -> tuple[bool, str]:
    """Retry or cancel one job; ``(done, sentence for the page)``."""
    if action == "retry":
        try:
            job = rerun(kernel, job_id)
        except NuvomError as exc:
            return False, f"not retried: {exc}"
        return True, f"job {job_id} ({job.task}) queued again on {job.queue!r} (run {job.run})"
    if action == "cancel":
        job = kernel.refresh_job(Job(id=job_id, task="", kernel=kernel))
        if kernel.cancel(job):
            return True, f"job {job_id} cancelled"
        return False, (f"not cancelled: job {job_id} is {job.status.value}; only a job that "
                       "has not started can be cancelled")
    raise BadRequest(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")


def check_bulk_filter(action: str, flt: JobFilter) -> None:
    """:raises BadRequest: unless the filter's status is one ``action`` applies to (a bulk
    action never guesses which jobs were meant)."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    states = ACTIONS[action]
    if flt.status not in states:
        names = " or ".join(f"status={s.value.lower()}" for s in states)
        raise BadRequest(f"bulk {action} acts on the jobs of one filter with {names}; "
                         "pick that status on the jobs page first")


@attrs.frozen
class BulkReport:
    action: str
    done: int
    refused: list[str]  # one sentence per job that was not acted on
    more: bool  # jobs beyond BULK_LIMIT still match the filter

    def summary(self) -> str:
        text = f"bulk {self.action}: {self.done} job(s) done"
        if self.refused:
            text += f", {len(self.refused)} refused ({self.refused[0]}"
            text += ", …)" if len(self.refused) > 1 else ")"
        if self.more:
            text += f"; more jobs match: confirm again for the next {BULK_LIMIT}"
        return text


def matching(kernel: Any, flt: JobFilter, limit: int = BULK_LIMIT) -> tuple[list[str], bool]:
    """The ids of up to ``limit`` jobs ``flt`` lists, and whether more match."""
    ids: list[str] = []
    cursor = None
    while len(ids) <= limit:
        page = list_jobs(kernel.results, flt, after=cursor, limit=min(500, limit + 1 - len(ids)))
        ids += [record.job_id for record in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return ids[:limit], len(ids) > limit


def bulk(kernel: Any, action: str, flt: JobFilter, limit: int = BULK_LIMIT) -> BulkReport:
    """Apply ``action`` to every job ``flt`` lists, up to ``limit`` of them."""
    check_bulk_filter(action, flt)
    ids, more = matching(kernel, flt, limit)
    done, refused = 0, []
    for job_id in ids:
        ok, sentence = act(kernel, action, job_id)
        if ok:
            done += 1
        else:
            refused.append(sentence)
    return BulkReport(action=action, done=done, refused=refused, more=more)
