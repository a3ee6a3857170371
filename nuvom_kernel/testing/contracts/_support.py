"""What the contract classes share: a picklable backend factory, deadlines, capability gates.

Waiting in the contracts always polls a condition against a deadline (never a bare sleep as
synchronization), so a slow machine makes the suite slower, not flaky.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

import attrs
import pytest

from nuvom_kernel.backends import BackendContext, Capabilities
from nuvom_kernel.models import JobRecord, JobStatus, Message

__all__ = ["BackendFactory", "SlowlyRead", "make_message", "make_record", "requires",
           "wait_until"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen(eq=False)
class BackendFactory:
    """Builds a backend exactly as the kernel does: ``cls.from_settings(settings, context)``.

    It is a plain value (a class and a dict), so it pickles by reference: the multi-process
    contract tests send it to child processes, which rebuild the same backend from the same
    settings and context. A lambda could not cross that boundary.

    :param cls: the backend class (importable at module level, for pickling).
    :param settings: what the ``[plugins.<name>]`` table would hold.
    """

    cls: type[Any]
    settings: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)

    def __call__(self, context: BackendContext) -> Any:
        return self.cls.from_settings(dict(self.settings), context)


def wait_until(
    condition: Callable[[], T], timeout: float, message: str, interval: float = 0.005
) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` at the
    deadline. Returns the truthy value (e.g. the leases a claim finally returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:.1f} s)")
        time.sleep(interval)
        interval = min(interval * 2, 0.05)


def requires(*capabilities: str) -> Callable[[F], F]:
    """Mark a contract test as checking a promise only backends declaring ``capabilities``
    make; the contract's gate fixture skips it for the others (and says why)."""
    names = {f.name for f in attrs.fields(Capabilities)}
    unknown = set(capabilities) - names
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(names)}")

    def mark(fn: F) -> F:
        fn.__nuvom_requires__ = capabilities  # type: ignore[attr-defined]
        return fn

    return mark


def skip_unless_capable(request: pytest.FixtureRequest, backend: Any) -> None:
    """Skip the running test if ``backend`` lacks a capability the test ``requires``."""
    wanted = getattr(request.function, "__nuvom_requires__", ())
    caps = type(backend).capabilities
    missing = [c for c in wanted if not getattr(caps, c)]
    if missing:
        pytest.skip(f"{type(backend).__name__} does not declare {', '.join(missing)}")


_counter = iter(range(1, 1 << 62))


def make_message(
    job_id: str | None = None,
    body: bytes | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    available_at: float = 0.0,
    created_at: float | None = None,
    task: str = "tasks.add",
) -> Message:
    """A message with a unique id and a strictly increasing ``created_at`` (FIFO is defined
    by ``created_at``, so tests never depend on clock resolution)."""
    n = next(_counter)
    return Message(
        id=job_id or uuid.uuid4().hex,
        body=body if body is not None else f"body-{n}".encode(),
        queue=queue,
        priority=priority,
        available_at=available_at,
        created_at=created_at if created_at is not None else 1_700_000_000.0 + n * 1e-3,
        task=task,
    )


def make_record(
    job_id: str | None = None,
    *,
    task: str = "tasks.add",
    status: JobStatus = JobStatus.SUCCEEDED,
    updated_at: float | None = None,
    **fields: Any,
) -> JobRecord:
    """A job record with every field filled, so a backend that drops one is caught."""
    now = time.time()
    values: dict[str, Any] = {
        "job_id": job_id or uuid.uuid4().hex,
        "task": task,
        "status": status,
        "queue": "default",
        "args": [1, "two", [3.5, None], {"k": True}],
        "kwargs": {"name": "Zoë ✓", "nested": {"list": [1, 2], "none": None}},
        "module": "project.tasks",
        "options": {"retries": 2, "queue": "default", "tags": ["a", "b"]},
        "result": {"total": 3, "items": ["x", "y"]} if status is JobStatus.SUCCEEDED else None,
        "attempts": 1,
        "max_retries": 2,
        "history": [{"attempt": 1, "kind": "error", "error_type": "ValueError"}],
        "created_at": now - 10,
        "started_at": now - 5,
        "finished_at": now - 1,
        "updated_at": now if updated_at is None else updated_at,
        "worker": "host:123",
        "trace_id": "abcdef0123456789",
        "run": 1,
        "token": "0123456789abcdef",
    }
    if status is JobStatus.FAILED:
        values.update(error_type="builtins.ValueError", error_message="bad input",
                      traceback="Traceback (most recent call last):\n  ...\nValueError")
    values.update(fields)
    return JobRecord(**values)


class SlowlyRead(Sequence[Message]):
    """A batch whose last messages take ``secs`` to read, once: what a backend meets when
    the kernel encodes a long ``.map()`` as the backend reads it, chunk by chunk."""

    def __init__(self, messages: Sequence[Message], secs: float, tail: int = 10) -> None:
        self.messages, self.secs, self.split = list(messages), secs, len(messages) - tail

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, i: int) -> Message: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Message]: ...

    def __getitem__(self, i: int | slice) -> Message | Sequence[Message]:
        last = (i.indices(len(self))[1] - 1) if isinstance(i, slice) else i % len(self)
        if last >= self.split and self.secs:
            deadline, self.secs = time.monotonic() + self.secs, 0.0
            while time.monotonic() < deadline:  # the encoding's cost, not a wait
                pass
        return self.messages[i]
