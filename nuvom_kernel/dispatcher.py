"""Turns calls into jobs and jobs into queue messages (and back, in the worker).

Arguments are converted to wire-safe data when the job is built, so a value JSON cannot carry
fails at ``.delay()`` naming the argument, and nothing is enqueued. The message body is one
versioned envelope; the backend indexes only the routing fields of :class:`Message`.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nuvom_kernel import events
from nuvom_kernel.errors import (
    BackendCapabilityError,
    EnqueueError,
    NuvomError,
    SerializationError,
)
from nuvom_kernel.models import Backoff, Job, JobStatus, Message, TaskOptions
from nuvom_kernel.serialization import Serializer, from_wire, to_wire

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["ENVELOPE_VERSION", "build_job", "decode_message", "encode_job", "enqueue_jobs"]

ENVELOPE_VERSION = 1
_HOST = f"{socket.gethostname()}:{os.getpid()}"


def origin() -> str:
    """``host:pid`` of this process (recomputed after fork)."""
    global _HOST
    pid = os.getpid()
    if not _HOST.endswith(f":{pid}"):
        _HOST = f"{socket.gethostname()}:{pid}"
    return _HOST


def importable_module(fn: Any) -> str | None:
    """The module a worker can import to find ``fn``; resolves ``__main__`` to a real name."""
    module = getattr(fn, "__module__", None)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    path = getattr(main, "__file__", None)
    if path:
        try:
            rel = Path(path).resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            return None
        return ".".join(rel.with_suffix("").parts)
    return None


def build_job(
    func_name: str,
    module: str | None,
    options: TaskOptions,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    param_names: Sequence[str] = (),
) -> tuple[Job, dict[str, Any]]:
    """A new QUEUED job and its wire-safe envelope.

    :raises SerializationError: naming the argument (by parameter name where known) and type.
    """
    wire_args = []
    for i, value in enumerate(args):
        label = f"argument {param_names[i]!r}" if i < len(param_names) else f"argument #{i}"
        wire_args.append(to_wire(value, f"{func_name}(): {label}"))
    wire_kwargs = {k: to_wire(v, f"{func_name}(): argument {k!r}") for k, v in kwargs.items()}
    job = Job(
        id=uuid.uuid4().hex,
        func_name=func_name,
        args=tuple(args),
        kwargs=dict(kwargs),
        module=module,
        options=options,
        enqueued_by=origin(),
        trace_id=os.urandom(8).hex(),
    )
    envelope = {
        "v": ENVELOPE_VERSION,
        "id": job.id,
        "task": func_name,
        "module": module,
        "args": wire_args,
        "kwargs": wire_kwargs,
        "opts": options_to_wire(options),
        "created_at": job.created_at,
        "enqueued_by": job.enqueued_by,
        "trace_id": job.trace_id,
        "failures": 0,
        "history": [],
    }
    return job, envelope


@functools.lru_cache(maxsize=1024)
def options_to_wire(options: TaskOptions) -> dict[str, Any]:
    """The options as envelope data; cached because a task's options rarely change and
    ``attrs.asdict`` is a measurable share of an enqueue. Callers must not mutate it."""
    data = attrs.asdict(options)
    data["backoff"] = options.backoff.value
    data["tags"] = list(options.tags)
    return data


def encode_job(envelope: dict[str, Any], serializer: Serializer, available_at: float = 0.0
               ) -> Message:
    opts = envelope["opts"]
    return Message(
        id=envelope["id"],
        body=serializer.dumps(envelope),
        queue=opts["queue"],
        priority=opts["priority"],
        available_at=available_at,
        created_at=envelope["created_at"],
    )


def decode_message(message: Message, serializer: Serializer) -> tuple[Job, dict[str, Any]]:
    """The job a message carries and its envelope (kept to re-encode on retry).

    :raises SerializationError: the body is not a job envelope this kernel understands.
    """
    envelope = serializer.loads(message.body)
    version = envelope.get("v")
    if version != ENVELOPE_VERSION:
        raise SerializationError(
            f"job {message.id}: envelope version {version!r} is not supported by this "
            f"worker (expects {ENVELOPE_VERSION}); upgrade nuvom on the worker"
        )
    try:
        raw = dict(envelope["opts"])
        raw["backoff"] = Backoff(raw.get("backoff", "fixed"))
        raw["tags"] = tuple(raw.get("tags", ()))
        names = {f.name for f in attrs.fields(TaskOptions)}
        options = TaskOptions(**{k: v for k, v in raw.items() if k in names})
        job = Job(
            id=envelope["id"],
            func_name=envelope["task"],
            args=tuple(from_wire(envelope["args"])),
            kwargs=from_wire(envelope["kwargs"]),
            module=envelope.get("module"),
            options=options,
            created_at=envelope["created_at"],
            enqueued_by=envelope.get("enqueued_by", ""),
            trace_id=envelope.get("trace_id", ""),
            failures=int(envelope.get("failures", 0)),
            history=list(envelope.get("history", [])),
            status=JobStatus.RUNNING,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SerializationError(f"job {message.id}: malformed envelope: {exc!r}") from exc
    return job, envelope


def check_capabilities(kernel: Kernel, options: TaskOptions, delay_secs: float) -> None:
    """Refuse, before anything is enqueued, what the queue backend declared it cannot do."""
    caps = kernel.queue.capabilities
    name = kernel.queue.name
    if delay_secs > 0 and not caps.delayed:
        raise BackendCapabilityError(
            f"queue backend {name!r} does not support delayed jobs; drop the delay or use a "
            "backend that declares 'delayed' (sqlite, file, memory)"
        )
    if options.priority != 0 and not caps.priorities:
        raise BackendCapabilityError(
            f"queue backend {name!r} does not support priorities; drop priority= or use a "
            "backend that declares 'priorities'"
        )


def _enqueue_error(kernel: Kernel, items: Sequence[tuple[Job, dict[str, Any]]],
                   exc: Exception) -> EnqueueError:
    """A backend's raw storage error (``OSError: No space left on device``, ``sqlite3
    OperationalError: unable to open database file``) names neither the backend nor the
    task; say both, and what to check."""
    tasks = ", ".join(repr(name) for name in sorted({job.func_name for job, _ in items}))
    return EnqueueError(
        f"queue backend {kernel.settings.queue_backend!r} could not store {len(items)} "
        f"job(s) of task {tasks}: {type(exc).__name__}: {exc}. Nothing was enqueued if the "
        f"backend stores a batch atomically. Check its storage (free space and write "
        f"permission; the built-in backends keep their data under {kernel.data_dir}) and "
        f"enqueue again."
    )


def enqueue_jobs(
    kernel: Kernel, items: Sequence[tuple[Job, dict[str, Any]]], delay_secs: float = 0.0
) -> list[Job]:
    """Hand jobs to the queue backend in one call (one transaction where it has them)."""
    if not items:
        return []
    try:
        check_capabilities(kernel, items[0][0].options, delay_secs)
    except NuvomError:
        raise
    except Exception as exc:  # the backend could not even be opened (read-only, missing)
        raise _enqueue_error(kernel, items, exc) from exc
    pm, serializer = kernel.pm, kernel.serializer
    observed = bool(pm.hook.nuvom_before_enqueue.get_hookimpls()
                    or pm.hook.nuvom_after_enqueue.get_hookimpls())
    if observed:
        for job, _ in items:
            events.emit(pm, "nuvom_before_enqueue", job=job)
    available_at = (items[0][0].created_at + delay_secs) if delay_secs > 0 else 0.0
    messages = [encode_job(env, serializer, available_at) for _, env in items]
    try:
        kernel.queue.enqueue_many(messages)
    except NuvomError:
        raise
    except Exception as exc:  # a storage failure must say where and what to do (DESIGN §5)
        raise _enqueue_error(kernel, items, exc) from exc
    jobs = []
    for job, _ in items:
        job._kernel = kernel
        jobs.append(job)
        if observed:
            events.emit(pm, "nuvom_after_enqueue", job=job)
    return jobs
