"""The producer: turns calls into envelopes and envelopes into one queue backend call.

``.delay()``, ``.map()``, ``apply_async`` and ``nuvom retry job`` all enqueue through
:func:`enqueue` (one job whose id is not the caller's: :func:`enqueue_one`, the same steps
without a batch's lists): one capability check, the enqueue hooks, one ``push`` (one
transaction where the backend has them) and one error type
(:class:`~nuvom_kernel.errors.EnqueueError`) naming the backend, the task and what to check.

A job id names one job for its life: pushing an id the queue holds creates nothing, and an
id given by the caller (``apply_async(job_id=...)``, ``map(job_ids=...)``) that the result
backend knows is not pushed again; the caller gets a handle to the existing job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from nuvom_kernel import events
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import (
    BackendCapabilityError,
    EnqueueError,
    NuvomError,
    SerializationError,
)
from nuvom_kernel.job import Job
from nuvom_kernel.models import JobStatus, Message, TaskOptions
from nuvom_kernel.serialization import Serializer
from nuvom_kernel.values import MAX_ETA, is_text

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["BuiltOnRead", "check_capabilities", "enqueue", "enqueue_one", "existing_job",
           "importable_module", "rerun"]

T = TypeVar("T")


def importable_module(fn: Any, module: str | None = None) -> str | None:
    """The module a worker can import to find ``fn`` (``module`` if given, else its
    ``__module__``); resolves ``__main__`` to a real name."""
    if module is None:
        module = getattr(fn, "__module__", None)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    path = getattr(main, "__file__", None)
    if not path:
        return None
    # The script as it was named first: a symlinked ``app.py`` in the project is imported
    # by the worker under that name, though it resolves to a file outside the project.
    cwd = os.getcwd()
    for script, base in ((Path(os.path.abspath(path)), Path(cwd)),
                         (Path(path).resolve(), Path(cwd).resolve())):
        try:
            rel = script.relative_to(base)
        except ValueError:
            continue
        return ".".join(rel.with_suffix("").parts)
    return None


def _available_at(delay_secs: float) -> float:
    """When a job delayed ``delay_secs`` may start (0: at once). Capped at
    :data:`~nuvom_kernel.values.MAX_ETA`: an ``eta`` of that second, turned into a delay and
    back, came out a fraction of a millisecond past it, which PostgreSQL refused."""
    return min(time.time() + delay_secs, MAX_ETA) if delay_secs > 0 else 0.0


def check_capabilities(kernel: Kernel, options: TaskOptions, delay_secs: float) -> None:
    """Refuse, before anything is enqueued, what the queue backend declared it cannot do
    (and a result backend no plugin provides)."""
    kernel.before_first_enqueue()
    queue = kernel.queue
    caps = queue.capabilities
    name = queue.name
    if delay_secs > 0 and not caps.delayed:
        raise BackendCapabilityError(
            f"queue backend {name!r} does not support delayed jobs; drop the delay or use a "
            "backend that declares 'delayed' (sqlite, file, memory)"
        )
    if options.concurrency is not None and not caps.concurrency:
        raise BackendCapabilityError(
            f"queue backend {name!r} cannot limit concurrency, so concurrency= cannot be "
            "honoured; drop it or use a backend that declares 'concurrency' (sqlite, file, "
            "memory)")
    if options.priority != 0 and not caps.priorities:
        raise BackendCapabilityError(
            f"queue backend {name!r} does not support priorities; drop priority= or use a "
            "backend that declares 'priorities'"
        )


def _task_names(calls: Sequence[tuple[Envelope, Job]]) -> str:
    return ", ".join(repr(name) for name in sorted({job.task for _, job in calls}))


def _enqueue_error(kernel: Kernel, calls: Sequence[tuple[Envelope, Job]], exc: Exception
                   ) -> EnqueueError:
    """A backend's raw storage error (``OSError: No space left on device``, ``sqlite3
    OperationalError: unable to open database file``) names neither the backend nor the
    task; say both, and what to check."""
    return EnqueueError(
        f"queue backend {kernel.settings.queue_backend!r} could not store {len(calls)} "
        f"job(s) of task {_task_names(calls)}: {type(exc).__name__}: {exc}. Nothing was "
        f"enqueued if the backend stores a batch atomically. Check its storage (free space "
        f"and write permission; the built-in backends keep their data under "
        f"{kernel.data_dir}) and enqueue again."
    )


class BuiltOnRead(Sequence[T]):
    """A sequence whose items are built a run at a time, when first read, then kept.

    Why: a ``.map()``'s handles, envelopes and messages are built as the backend reads the
    batch, so a backend that stores a batch as pipelined chunks (SQLite, PostgreSQL, Redis:
    ``QueueBackend.streams_push``) stores one chunk while this process builds the next,
    instead of waiting for the whole batch first (~7-10 µs a job here, as long as the
    server's insert). Where enqueue observers are registered and the backend does not
    declare ``observed_as_read``, they see every handle first: then only the messages are
    built as read. Items may be read as often and in any order, from one thread; in order
    is what overlaps.

    :param build: the items ``start`` to ``stop``, built in order (each run right after the
        run before it, never twice).
    """

    __slots__ = ("_build", "_built", "_length")

    def __init__(self, length: int, build: Callable[[int, int], list[T]]) -> None:
        self._length = length
        self._build = build
        self._built: list[T] = []

    def __len__(self) -> int:
        return self._length

    def _to(self, stop: int) -> list[T]:
        built, stop = self._built, min(stop, self._length)
        if stop > len(built):
            built += self._build(len(built), stop)
        return built

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        n = self._length
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            return self._to(max(start, stop) if step > 0 else n)[index]
        if not -n <= index < n:
            raise IndexError("index out of range")
        index %= n
        return self._to(max(index + 1, len(self._built) + _RUN))[index]

    def __iter__(self) -> Iterator[T]:
        for i in range(0, self._length, _RUN):
            yield from self._to(i + _RUN)[i:i + _RUN]


#: Items built at a time when a reader goes one by one.
_RUN = 100


def observed(calls: Sequence[tuple[Envelope, Job]], before: list[Any]) -> None:
    """Show every job to the ``nuvom_before_enqueue`` observers; the headers they set
    travel with the job. Also a workflow's steps, all of them when it is submitted."""
    events.call_per_job(before, "nuvom_before_enqueue", [job for _, job in calls])
    for env, job in calls:
        if job.headers:
            env.headers.update(job.headers)


def _encoded(calls: Sequence[tuple[Envelope, Job]], serializer: Serializer,
             available_at: float) -> list[Message]:
    """The calls' messages.

    :raises SerializationError: a job cannot be encoded, named with what to fix.
    """
    try:
        if len(calls) == 1:  # .delay(): nothing to share
            return [calls[0][0].to_message(serializer, available_at)]
        return Envelope.to_messages([env for env, _ in calls], serializer, available_at)
    except Exception as exc:  # headers an observer added, a plugin serializer
        failed: tuple[Envelope, Exception] = (calls[0][0], exc)
    for env, _ in calls:  # name the job that cannot be encoded
        try:
            env.to_message(serializer, available_at)
        except Exception as exc:
            failed = (env, exc)
            break
    env, error = failed
    raise SerializationError(
        f"job {env.id} ({env.task}) cannot be encoded by the {serializer.name!r} "
        f"serializer{_culprit(env, serializer)}: {type(error).__name__}: {error}. Check its "
        f"arguments (an integer of "
        f"more than 4,300 digits, or a value nested hundreds of levels deep, is refused "
        f"here) and any headers set by enqueue observers, which must be JSON-native") \
        from error


def _culprit(env: Envelope, serializer: Serializer) -> str:
    """`` in <argument>`` for the first argument that fails to encode alone, else ``""``:
    what the argument checks at ``.delay()`` cannot see (an int of 5,000 digits is an int)
    is named as they name it. Only on the error path: each argument encoded once more."""
    named = [*((f"argument #{i}", v) for i, v in enumerate(env.args)),
             *((f"argument {k!r}", v) for k, v in env.kwargs.items())]
    for label, value in named:
        try:
            serializer.dumps(value)
        except Exception:
            return f" in {label}"
    return ""


def _messages(calls: Sequence[tuple[Envelope, Job]], serializer: Serializer,
              available_at: float, before: list[Any]) -> BuiltOnRead[Message]:
    """:func:`_encoded`, a run at a time as the backend reads the batch, each run shown to
    the ``before`` observers first (none: they saw the batch already)."""
    def build(start: int, stop: int) -> list[Message]:
        run = calls[start:stop]
        if before:
            observed(run, before)
        return _encoded(run, serializer, available_at)

    return BuiltOnRead(len(calls), build)


def _push(kernel: Kernel, calls: Sequence[tuple[Envelope, Job]], messages: Sequence[Message]
          ) -> list[bool]:
    """``enqueue_many``, its raw storage errors turned into an :class:`EnqueueError` that
    says where and what to do."""
    try:
        return kernel.queue.enqueue_many(messages)
    except EnqueueError as exc:  # the backend's own words (a full disk, a read-only
        # folder), which cannot know whose jobs these were: the caller's traceback says
        exc.add_note(f"while enqueuing {len(calls)} job(s) of task {_task_names(calls)}")
        raise
    except NuvomError:
        raise
    except Exception as exc:
        raise _enqueue_error(kernel, calls, exc) from exc


def enqueue(
    kernel: Kernel,
    calls: Sequence[tuple[Envelope, Job]],
    delay_secs: float = 0.0,
    *,
    known_ids: bool = False,
) -> list[Job]:
    """Push jobs in one backend call and return a handle per call, in order.

    :param known_ids: the caller chose the ids; skip those the result backend already
        holds (a finished job keeps its id), returning their handles.
    """
    if not calls:
        return []
    if len(calls) == 1 and not known_ids:
        return [enqueue_one(kernel, *calls[0], delay_secs)]
    try:
        check_capabilities(kernel, calls[0][1].options, delay_secs)
        existing = kernel.results.known([env.id for env, _ in calls]) if known_ids else None
    except NuvomError:
        raise
    except Exception as exc:  # the backend could not even be opened (read-only, missing)
        raise _enqueue_error(kernel, calls, exc) from exc
    fresh = calls if not existing else [call for call in calls if call[0].id not in existing]
    # Looked up once per batch (an empty list: no plugin observes enqueues).
    before = events.observers(kernel.pm, "nuvom_before_enqueue")
    after = events.observers(kernel.pm, "nuvom_after_enqueue")
    available_at = _available_at(delay_secs)
    queue = kernel.queue
    if before and not (queue.streams_push and queue.observed_as_read):
        observed(fresh, before)  # every job, before the backend is called
        before = []
    messages: Sequence[Message] = _messages(fresh, kernel.serializer, available_at, before)
    if not queue.streams_push:
        messages = list(messages)  # encoded before the backend call
    stored = _push(kernel, calls, messages) if fresh else []
    jobs = [job for _, job in calls]
    for job in jobs:
        job._kernel = kernel
    if len(stored) == len(jobs) and all(stored):  # the usual case: every job is new
        events.call_per_job(after, "nuvom_after_enqueue", jobs)
        return jobs
    # The handles pushed as new, by identity: an id given twice in one batch is stored for
    # its first item only, and the second item's handle must describe that job too.
    created = {id(job) for (_, job), new in zip(fresh, stored, strict=True) if new}
    events.call_per_job(after, "nuvom_after_enqueue", [j for j in jobs if id(j) in created])
    return [job if id(job) in created else existing_job(kernel, job.id) for job in jobs]


def enqueue_one(kernel: Kernel, envelope: Envelope, job: Job, delay_secs: float = 0.0
                ) -> Job:
    """:func:`enqueue` of one call without ``known_ids`` (``.delay()``, and any single call
    :func:`enqueue` gets): the same steps without the batch's lists and sets, which were a
    tenth of a ``.delay()``'s Python time."""
    try:
        check_capabilities(kernel, job.options, delay_secs)
    except NuvomError:
        raise
    except Exception as exc:  # the backend could not even be opened (read-only, missing)
        raise _enqueue_error(kernel, [(envelope, job)], exc) from exc
    pm = kernel.pm
    call = [(envelope, job)]
    before = events.observers(pm, "nuvom_before_enqueue")
    if before:
        observed(call, before)
    messages = _encoded(call, kernel.serializer,
                        _available_at(delay_secs))
    stored = _push(kernel, call, messages)
    job._kernel = kernel
    if not stored[0]:  # the id was queued already: that job's handle and state
        return existing_job(kernel, job.id)
    after = events.observers(pm, "nuvom_after_enqueue")
    if after:
        events.call_each(after, "nuvom_after_enqueue", {"job": job})
    return job


def existing_job(kernel: Kernel, job_id: str) -> Job:
    """The handle of a job that was there before this call: built from its queued message
    (task, arguments, options, run) and its record (state, outcome; all of it once the
    queue no longer holds the job), as ``get_job`` builds it. Not the caller's handle
    refreshed: that one carries this call's arguments and options, which were not stored,
    so a handle to the existing job would show what the job is not. Costs a ``peek`` more;
    only an id that exists takes this path."""
    return kernel.refresh_job(kernel._handle(job_id))


def rerun(kernel: Kernel, job_id: str) -> Job:
    """Start the next run of a finished (FAILED or CANCELLED) job: same id and arguments.

    The new run's QUEUED record is stored *before* its message becomes visible, fenced like
    every record (run ``n + 1`` supersedes run ``n``), so the worker's outcome of the new run
    always lands on top of it and two concurrent re-runs start one run, not two.

    A workflow step is refused, whoever asks (``nuvom retry job``, the dashboard's retry,
    this function): run on its own, its workflow would stay as it is and the steps depending
    on it would never run; ``nuvom workflow retry`` runs it inside its workflow.

    :raises NuvomError: the id is unknown, the job is not finished or is a workflow step, or
        another re-run won.
    """
    if not is_text(job_id):  # refused at enqueue: no store holds it (or can be asked)
        raise NuvomError(f"unknown job id {job_id!r}: it holds a NUL or undecodable bytes, "
                         "which no job id does; check the id")
    if kernel.queue.capabilities.workflows:
        from nuvom_kernel.workflow.steps import rerun_from, workflow_of

        workflow = workflow_of(kernel, job_id)
        if workflow is not None:
            start = rerun_from(kernel, workflow, job_id)
            raise NuvomError(
                f"job {job_id} is a step of workflow {workflow}: run on its own, it would "
                "leave its workflow as it is and the steps depending on it would never run. "
                f"Run it again inside its workflow: `nuvom workflow retry {workflow} --from "
                f"{start}`" + ("" if start == job_id else
                               f" (step {start}, which it waits on, ended as it did)")
                + f" (or `nuvom workflow retry {workflow}` for every failed, cancelled and "
                "skipped step)")
    record = kernel.results.get(job_id)
    if record is None:
        # No record yet is not unknown: a job that has not run (or not finished a first
        # attempt) lives only in the queue, and `nuvom inspect job` shows it from there.
        state = kernel.queue.peek_state(job_id)
        if state is not None:
            raise NuvomError(f"job {job_id} is {state.value} (it has not finished, so "
                             "there is nothing to run again); only FAILED or CANCELLED jobs "
                             f"can be run again. See `nuvom inspect job {job_id}`")
        raise NuvomError(f"unknown job id {job_id!r}: no stored record and not in the queue; "
                         "check the id and that this process uses the producer's backends")
    if record.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise NuvomError(f"job {job_id} is {record.status.value}; only FAILED or CANCELLED "
                         "jobs can be run again")
    if not record.options:
        raise NuvomError(f"job {job_id} has no stored task options; enqueue it anew")
    if kernel.queue.peek_state(job_id) is not None:
        raise NuvomError(f"job {job_id} is still in the queue (its last outcome is being "
                         "settled); try again in a moment")
    envelope = Envelope.for_rerun(record)
    job = envelope.job()
    queued = envelope.record(JobStatus.QUEUED, updated_at=time.time())
    if not kernel.results.put(queued):
        raise NuvomError(f"job {job_id} was run again by someone else meanwhile; see "
                         f"`nuvom inspect job {job_id}`")
    enqueue(kernel, [(envelope, job)])
    return job

