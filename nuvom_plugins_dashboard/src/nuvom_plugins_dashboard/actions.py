"""Retry and cancel, one job or every job a filter lists: the same kernel calls as
``nuvom retry job`` and ``nuvom cancel job``, each outcome reported back to the page.

A bulk action acts on at most :data:`BULK_LIMIT` jobs per confirmation so one request stays
short with 200,000 failed jobs; a retried job leaves the ``failed`` list (its new run is
QUEUED), so confirming again acts on the next ones, and the report says how many are left.

Why a confirmation carries what it showed: the page said "retry 3 jobs", and the POST
acted on whatever matched the filter by then (43 after 40 more failed). A confirmation
form now carries each job it counted with the run it was at (:func:`encode_confirmed`),
and the POST acts on exactly those, each only while its record still matches the filter at
that run (:func:`bulk`): never on a job the page did not show, and a job that moved on
(retried, cancelled, run again by someone else) is left alone and reported. One job's retry
form carries its run the same way, so a form posted twice (a double click, a second tab, a
resent POST) after the job failed again does not start yet another run.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from nuvom_kernel.dispatcher import rerun
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobStatus
from nuvom_plugins_dashboard.views import BadRequest, JobFilter, list_jobs

__all__ = ["ACTIONS", "BULK_LIMIT", "BulkReport", "act", "bulk", "check_bulk_filter",
           "decode_confirmed", "encode_confirmed", "matching", "parse_run", "without_steps"]

#: Jobs one bulk confirmation acts on at most.
BULK_LIMIT = 1000

#: Action name -> the states it applies to (the page offers it only there).
ACTIONS: dict[str, tuple[JobStatus, ...]] = {
    "retry": (JobStatus.FAILED, JobStatus.CANCELLED),
    "cancel": (JobStatus.QUEUED, JobStatus.RETRYING),
}


def parse_run(value: str | None, *, required: bool = False) -> int | None:
    """The ``run`` of a form (the run the confirmation page showed); ``None`` if absent.

    :param required: a retry's form always names its run (a job that can be retried has a
        record); one posted without it skipped the double-submit check, and each post
        queued the job again.
    :raises BadRequest: not a run number, or absent where ``required``.
    """
    if value is None or value == "":
        if required:
            raise BadRequest("the retry form names no run (the run its confirmation page "
                             "showed); submit the confirmation page's form as it was "
                             "rendered")
        return None
    try:
        run = int(value)
    except ValueError:
        run = 0
    if run < 1:
        raise BadRequest(f"run={value!r} is not a run number; submit the confirmation page's "
                         "form as it was rendered")
    return run


def _moved_on(kernel: Any, job_id: str, expected_run: int) -> str | None:
    """Why ``job_id`` is no longer at the run a confirmation showed, or ``None`` when it
    is. Read just before acting: the kernel's ``rerun`` takes no expected run, so this
    check and its own read are two steps (see :func:`act`)."""
    record = kernel.results.get(job_id)
    if record is None:
        return f"job {job_id} has no record any more (purged?)"
    if record.run != expected_run:
        return (f"job {job_id} is at run {record.run} ({record.status.value}) now, not run "
                f"{expected_run} that was confirmed: it moved on since the page was shown "
                "(submitted twice, or retried elsewhere); open its page to see what happened")
    return None


def act(kernel: Any, action: str, job_id: str, expected_run: int | None = None
        ) -> tuple[bool, str]:
    """Retry or cancel one job; ``(done, sentence for the page)``.

    :param expected_run: the run the confirmation page showed; the action is refused when
        the job's record is at another run now. The check reads the record just before the
        kernel call: a job that moves on between the two (microseconds, against the seconds
        between two submits) is not caught here; ``dispatcher.rerun`` would have to take the
        expected run and make its fenced write conditional on it to close that window.
    """
    if expected_run is not None:
        why = _moved_on(kernel, job_id, expected_run)
        if why is not None:
            return False, f"not {'retried' if action == 'retry' else 'cancelled'}: {why}"
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
        if job.status is JobStatus.CANCELLED:  # (not "has started": it never ran)
            return False, f"not cancelled: job {job_id} was cancelled already"
        return False, (f"not cancelled: job {job_id} is {job.status.value}; only a job "
                       "waiting to run (QUEUED, or RETRYING: waiting for its next attempt) "
                       "can be cancelled")
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
    more: bool  # jobs beyond BULK_LIMIT matched when the confirmation was shown
    changed: int = 0  # confirmed jobs left alone: no longer as the confirmation showed them

    def summary(self) -> str:
        text = f"bulk {self.action}: {self.done} job(s) done"
        if self.changed:
            text += (f", {self.changed} left alone (changed since the confirmation: no longer "
                     "listed, or at another run)")
        if self.refused:
            text += f", {len(self.refused)} refused ({self.refused[0]}"
            text += ", …)" if len(self.refused) > 1 else ")"
        if self.more:
            text += f"; more jobs match: confirm again for the next {BULK_LIMIT}"
        return text


def matching(kernel: Any, flt: JobFilter, limit: int = BULK_LIMIT
             ) -> tuple[list[tuple[str, int]], bool]:
    """``(job id, run)`` of up to ``limit`` jobs ``flt`` lists, and whether more match."""
    found: list[tuple[str, int]] = []
    cursor = None
    while len(found) <= limit:
        page = list_jobs(kernel.results, flt, after=cursor,
                         limit=min(500, limit + 1 - len(found)))
        found += [(record.job_id, record.run) for record in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found[:limit], len(found) > limit


def without_steps(kernel: Any, action: str, jobs: list[tuple[str, int]]
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``jobs`` less the workflow steps a bulk ``action`` would refuse, and those steps
    (id, workflow). Why: a retry refuses a step (run alone, its workflow would never move
    on), and the confirmation counted them anyway ("retry 2 jobs", then "1 done, 1
    refused"). One graph lookup per listed job, for a retry on a store with workflows."""
    if action != "retry" or not kernel.queue.capabilities.workflows:
        return jobs, []
    from nuvom_kernel.workflow.steps import workflow_of

    kept, steps = [], []
    for job_id, run in jobs:
        workflow = workflow_of(kernel, job_id)
        if workflow is None:
            kept.append((job_id, run))
        else:
            steps.append((job_id, workflow))
    return kept, steps


def encode_confirmed(jobs: list[tuple[str, int]]) -> str:
    """The jobs a confirmation page counted, for its form: one field (a form of 1,000
    fields would meet the form parser's limit on fields), JSON with every non-ASCII
    character escaped, so any job id (a lone surrogate included) comes back unchanged."""
    return json.dumps([[run, job_id] for job_id, run in jobs])


def decode_confirmed(text: str | None, limit: int = BULK_LIMIT) -> list[tuple[str, int]]:
    """:func:`encode_confirmed`'s list back.

    :raises BadRequest: missing, malformed, or longer than ``limit`` (a form this dashboard
        did not render).
    """
    problem = "a bulk action's form carries the jobs its confirmation page counted"
    try:
        items = json.loads(text or "")
    except ValueError:
        raise BadRequest(f"{problem}, and this one carries none: open the confirmation page "
                         "again (from the jobs page) and confirm there") from None
    if (not isinstance(items, list) or len(items) > limit
            or not all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], int)
                       and isinstance(i[1], str) and i[0] >= 1 and "\x00" not in i[1]
                       for i in items)):
        raise BadRequest(f"{problem} (at most {limit}); this one is malformed: open the "
                         "confirmation page again and confirm there")
    return [(job_id, run) for run, job_id in items]


def bulk(kernel: Any, action: str, flt: JobFilter, confirmed: list[tuple[str, int]],
         more: bool = False) -> BulkReport:
    """Apply ``action`` to the jobs a confirmation page counted (``confirmed``: id and
    run), each only while its record still matches ``flt`` at that run: never to a job
    the page did not show (one that failed since is for the next confirmation)."""
    check_bulk_filter(action, flt)
    done, changed, refused = 0, 0, []
    for job_id, run in confirmed:
        record = kernel.results.get(job_id)
        if record is None or record.run != run or not flt.matches(record):
            changed += 1
            continue
        ok, sentence = act(kernel, action, job_id, expected_run=run)
        if ok:
            done += 1
        else:
            refused.append(sentence)
    return BulkReport(action=action, done=done, refused=refused, more=more, changed=changed)
