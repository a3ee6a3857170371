"""One exception hierarchy: every message says what was wrong, where, and what to do."""

from __future__ import annotations

import logging
from typing import Any

from nuvom_kernel.values import MAX_SECONDS

__all__ = [
    "BackendCapabilityError",
    "BackendNotFoundError",
    "ChildKilledError",
    "ChildTaskError",
    "ConfigError",
    "CorruptWorkflowError",
    "DuplicateBackendError",
    "EnqueueError",
    "JobCancelledError",
    "JobExpiredError",
    "JobFailedError",
    "JobTimeoutError",
    "LeaseLostError",
    "NoRetry",
    "NotWrittenError",
    "NuvomError",
    "PluginConfigError",
    "PluginLoadError",
    "Retry",
    "SerializationError",
    "TaskRegistrationError",
    "UnknownJobError",
    "UnknownTaskError",
    "WorkerPrepareError",
    "byte_size",
    "encoding_error",
    "error_text",
    "log_retried",
    "qualname",
    "too_large",
]


class NuvomError(Exception):
    """Base of every error Nuvom raises on purpose."""


class ConfigError(NuvomError):
    """A setting has a value Nuvom cannot use (environment variable or settings table)."""


class PluginConfigError(ConfigError):
    """``.nuvom_plugins.toml`` cannot be read or lists something invalid."""


class PluginLoadError(NuvomError):
    """A plugin could not be imported, registered or configured; the message names it."""


class WorkerPrepareError(NuvomError):
    """A plugin's ``nuvom_worker_prepare`` raised, so the worker did not start; the message
    names the plugin and its exception is the ``__cause__``."""


class BackendNotFoundError(NuvomError):
    """No installed plugin provides the backend name the configuration asks for."""


class DuplicateBackendError(NuvomError):
    """Two plugins register a backend under the same name."""


class BackendCapabilityError(NuvomError):
    """A job asks for something its backend declared it cannot do (e.g. a delay)."""


class EnqueueError(NuvomError):
    """The queue backend failed to store jobs (disk full, read-only, connection lost); the
    backend's own exception is the ``__cause__``."""


class SerializationError(NuvomError):
    """A value cannot be encoded or a payload cannot be decoded."""


class TaskRegistrationError(NuvomError):
    """A task name is registered twice without ``force``."""


class UnknownTaskError(NuvomError):
    """A job names a task this worker cannot find or import.

    ``import_failed`` tells the two cases apart: a module that cannot be imported fails the
    job at once, while a module that imports but lacks the task may be a rolling deploy
    (this worker is older than the producer) and the job may be handed back. ``tried``
    says what was tried (``"importing 'tasks' failed: ..."``), empty when no module was
    known: a command that is not a worker words its own advice around it.
    """

    def __init__(self, message: str, *, import_failed: bool = True, tried: str = "") -> None:
        super().__init__(message)
        self.import_failed = import_failed
        self.tried = tried


class CorruptWorkflowError(NuvomError):
    """A workflow's stored graph does not decode (edited by hand, a disk fault): reading the
    workflow says which entry and why, instead of a parser's traceback. Why an error of its
    own: the settler must tell it from a store that is down. An outage passes, so a step's
    outcome waits for it; corrupt data stays, so the step's outcome is recorded and acked
    without its workflow moving on (it ran again forever before).

    :param status: what the workflow's head says when the settle that found the damage
        could still write it (``"FAILED"``): the message then says the workflow ended and
        its waiting steps will not run, where without it (the head unreadable, or a store
        that cannot end a damaged workflow) they wait forever. ``where`` and ``detail`` are
        kept so a reader that learns the status later can say it with the same entry named.
    """

    def __init__(self, workflow_id: str, where: str, detail: str, *,
                 status: str | None = None) -> None:
        if status is None:
            # (a reader's find, or a settle that could not write the head: a later settle
            # may still end it FAILED, so "stay waiting" would not always be true)
            outcome = ("so it cannot move on: its steps waiting for others do not run "
                       "while the entry is damaged (the next of its steps to end ends the "
                       "workflow FAILED if its head still reads). Restore that entry, or "
                       "submit the workflow again")
        else:
            outcome = (f"so it ended {status}: its steps that were waiting for others will not "
                       "run (each reads CANCELLED). Restore that entry to read the graph again; "
                       "submit the workflow again to run it")
        super().__init__(
            f"workflow {workflow_id!r}: its stored graph is corrupt ({where}: {detail}), "
            f"{outcome}")
        self.workflow_id, self.where, self.detail, self.status = \
            workflow_id, where, detail, status


class NotWrittenError(NuvomError, NotImplementedError):
    """A method of a plugin scaffolded by ``nuvom plugin new`` that its author has not
    written yet; the message names it and the section of the guide that explains it. A
    ``NuvomError``, so a command that meets one prints it as one ``Error:`` line (a stub's
    ``NotImplementedError`` was a traceback from ``nuvom status``)."""


class UnknownJobError(NuvomError):
    """No backend has ever seen this job id."""


class LeaseLostError(NuvomError):
    """The worker's lease expired and another worker now owns the job."""


class JobExpiredError(NuvomError):
    """A job was not started within its ``expires_secs`` of being enqueued: it is failed
    without running (history kind ``expired``, never retried). Why failed, not dropped or
    cancelled: its record says what it was and why it never ran, ``nuvom retry job`` can
    still run it, and a queue that falls behind shows up where failures are watched."""


class JobTimeoutError(NuvomError):
    """A job ran past its ``timeout_secs`` (recorded as a failure kind, retried per policy)."""

    @classmethod
    def of(cls, job: Any, limit_secs: float | None, detail: str = "") -> JobTimeoutError:
        """One wording whichever pool noticed it: the job, its time limit, what was done."""
        return cls(f"job {job.id} ({job.task}) exceeded its timeout of "
                   f"{limit_secs or 0:.3g} s" + (f" {detail}" if detail else ""))


class Retry(NuvomError):
    """Raised by a task to be run again: a failed attempt like any other (it counts against
    the task's ``retries``; with none left the job is FAILED), retried after ``delay_secs``
    when given instead of the task's own delay. Celery's ``self.retry(countdown=...)``,
    Huey's ``RetryTask(delay=...)``: ``raise Retry("rate limited", delay_secs=30) from exc``.
    """

    def __init__(self, reason: str = "", *, delay_secs: float | None = None) -> None:
        if delay_secs is not None and (isinstance(delay_secs, bool) or not isinstance(
                delay_secs, int | float) or not 0 <= delay_secs <= MAX_SECONDS):
            raise ValueError(f"Retry(delay_secs=...) takes a number of seconds from 0 to "
                             f"{MAX_SECONDS} (366 days) or None, got {delay_secs!r}")
        super().__init__(reason or "the task asked to be retried")
        self.delay_secs = None if delay_secs is None else float(delay_secs)


class NoRetry(NuvomError):
    """Raised by a task to fail its job now, whatever ``retries`` remain: an error no retry
    can fix (bad input, a record that does not exist), which would otherwise be retried
    like a timeout. ``raise NoRetry(f"no user {user_id}") from exc``; the record keeps the
    chained traceback. (Celery retries only ``autoretry_for``; Dramatiq skips ``throws``.)
    """


class ChildKilledError(NuvomError):
    """A process-pool child died while running a job (a signal such as SIGKILL from the
    OOM killer, a segfault, or its memory limit). ``details`` holds the signal and the
    child's resource usage; the attempt history keeps them."""

    details: dict[str, Any]


class ChildTaskError(NuvomError):
    """What a task raised in a process-pool child, carried back as data: ``error_type`` is
    the qualified name of the child's exception (the class itself stays in the child)."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class JobFailedError(NuvomError):
    """A job ended FAILED; carries the remote exception's type, message and traceback.

    :param job_id: the failed job.
    :param error_type: the qualified name of the exception raised in the worker.
    :param error_message: ``str()`` of that exception.
    :param remote_traceback: the formatted traceback from the worker's last attempt.
    """

    def __init__(
        self,
        job_id: str,
        error_type: str | None,
        error_message: str | None,
        remote_traceback: str | None,
    ) -> None:
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = remote_traceback
        super().__init__(f"job {job_id} failed: {error_type}: {error_message}")

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class JobCancelledError(JobFailedError):
    """``Job.get()`` on a job that was cancelled before it ended: there is no result.

    :param workflow: the workflow of a cancelled step, when known: a step runs again only
        inside its workflow (``nuvom workflow retry``, which runs its dependents too);
        ``nuvom retry job`` would run it alone and refuses a step.
    :param attempts: attempts it had made (a job cancelled while waiting out a retry
        delay ran, and failed: it was said to have never run), the last one's error in
        ``error_type`` and ``error_message``.
    :param reason: why it was cancelled, as its record says, when it was not by hand: a
        step its workflow's graph cancelled (a step it depends on failed or was cancelled,
        or the graph was found damaged). Without it, the message said only "cancelled".
    :param advice: what to do, for a cause the default hint does not mend: a step of a
        workflow a damaged graph ended, which ``nuvom workflow retry`` cannot run.
    """

    def __init__(self, job_id: str, workflow: str | None = None, *, attempts: int = 0,
                 error_type: str | None = None, error_message: str | None = None,
                 reason: str | None = None, advice: str | None = None) -> None:
        super().__init__(job_id, error_type, error_message, None)
        self.workflow, self.reason = workflow, reason
        if advice is not None:
            hint = advice
        elif workflow is not None:
            hint = (f"it is a step of workflow {workflow}: run it again with the steps "
                    f"depending on it with `nuvom workflow retry {workflow}`")
        else:
            hint = (f"re-enqueue it with `nuvom retry job {job_id}` to run it; a workflow "
                    "step with `nuvom workflow retry WORKFLOW_ID`")
        when = "before it ran"
        if attempts > 0:
            when = f"after {attempts} attempt{'s' if attempts != 1 else ''}" + (
                f" (the last failed: {error_type}: {error_message})" if error_type else "")
        if reason:
            when += f": {reason}"
        self.args = (f"job {job_id} was cancelled {when}; it has no result ({hint})",)

    def __str__(self) -> str:
        return str(self.args[0])


def qualname(exc: BaseException) -> str:
    """The name a job's record gives ``exc``'s type (``error_type``): builtins bare, others
    with their module, and a pool child's exception by the name the child sent."""
    if isinstance(exc, ChildTaskError):  # raised in a pool child: its class stayed there
        return exc.error_type
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def error_text(exc: BaseException) -> str:
    """The text a job's record gives ``exc`` (``error_message``): ``str(exc)``, or, when
    that raises, a text naming its type and why (``<ValueError: str() raised ValueError:
    Exceeds the limit (4300 digits) ...>``).

    Why: an exception whose ``__str__`` raises (a bug in a task's exception class, or
    ``ValueError(10**5000)``, past Python's digit limit) must still be recorded: its
    attempt was never settled and ran again at every visibility timeout, and a process-pool
    child died over it. Only ``Exception`` is caught: a ``KeyboardInterrupt`` or
    ``SystemExit`` from there still stops the process.
    """
    try:
        return str(exc)
    except Exception as err:
        try:
            why = f"{type(err).__name__}: {err}"
        except Exception:  # its own text raises too
            why = type(err).__name__
        return f"<{type(exc).__name__}: str() raised {why}>"


def log_retried(logger: logging.Logger, exc: Exception, message: str, *args: Any) -> None:
    """Log, at ERROR, a failure a loop retries (``message % args``, then ``exc``): one line
    for a :class:`NuvomError`, whose message already says what is wrong and where (a store
    that is away), the traceback for anything else (a bug to find).

    Why: the worker's claim loop and its scheduler logged ~70 lines of traceback at every
    retry during an outage, for an error whose message already named the server.
    """
    logger.error(f"{message}: %s: %s", *args, qualname(exc), error_text(exc),
                 exc_info=None if isinstance(exc, NuvomError) else exc)

def encoding_error(task: str, exc: Exception) -> SerializationError:
    """The error a job fails with when its return value cannot be encoded: ``exc`` itself
    if it is one, else a :class:`SerializationError` naming the task and what the encoder
    raised (an int past 4,300 digits, a list nested past the recursion limit). One place,
    as both the worker and a process pool's child build it."""
    if isinstance(exc, SerializationError):
        return exc
    if isinstance(exc, RecursionError):  # its own text names neither the value nor a fix
        return SerializationError(
            f"{task}() return value is nested too deeply to encode (hundreds of levels of "
            "lists, dicts or tuples, or a value that holds itself): return it flatter, or "
            "as text")
    return SerializationError(f"{task}() return value cannot be encoded: "
                              f"{type(exc).__name__}: {error_text(exc)}")


def byte_size(n: int) -> str:
    """``n`` bytes as a reader compares them with a limit: ``1,100.0 MiB (1,153,433,600
    bytes)`` (the exact count too, since limits are set and read in bytes)."""
    return f"{n / 2**20:,.1f} MiB ({n:,} bytes)"


def too_large(what: str, limit: str, *, size: int | None = None, advice: str = "") -> str:
    """The text refusing a value a store cannot hold in one piece, worded alike by every
    backend: ``what`` it is (the job and the value), its ``size`` when known, the store's
    ``limit`` (what it is and where it comes from), the one fix that always works (a
    reference instead of the data), then the backend's own ``advice`` (how to raise the
    limit). Backends raise it as a :class:`SerializationError` (or a subclass of theirs),
    which the worker's settler records as that job's failure alone, storing its neighbours.
    """
    measured = f" is {byte_size(size)}," if size is not None else " is"
    return (f"{what}{measured} larger than {limit}. Keep large data elsewhere (a file, "
            "object storage, a table of your own) and pass a reference to it (a path, a URL, "
            f"a key) instead{advice}.")
