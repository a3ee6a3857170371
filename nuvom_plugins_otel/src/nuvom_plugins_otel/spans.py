"""The spans: one producer span per enqueued job, one consumer span per attempt.

Why the W3C context rides in ``job.headers``: the headers travel in the envelope, so the
worker on any host continues the trace without the queue backend knowing anything about it.
Spans are keyed by the :class:`~nuvom_kernel.Job` object the hooks pass (weakly: a span
whose end hook never comes — the queue refused the job, a worker was stopped mid-task —
is dropped with its job, never leaked).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from nuvom_kernel.job import Job

__all__ = ["Tracing"]

SYSTEM = "nuvom"


def _qualname(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"


class Tracing:
    """Starts and ends the spans of the hooks, with the tracer of ``tracer_provider``
    (default: the global one the application configured)."""

    def __init__(self, consumer_parent: bool = False,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        from nuvom_plugins_otel import __version__

        self.consumer_parent = consumer_parent
        self._provider = tracer_provider
        self.tracer = trace.get_tracer("nuvom_plugins_otel", __version__,
                                       tracer_provider=tracer_provider)
        self._lock = threading.Lock()
        self._producing: weakref.WeakKeyDictionary[Job, Any] = weakref.WeakKeyDictionary()
        self._consuming: weakref.WeakKeyDictionary[Job, tuple[Any, object, int]] = \
            weakref.WeakKeyDictionary()
        self._active = tracer_provider is not None
        self._env_provider = True
        self.refresh_environment()

    def refresh_environment(self) -> None:
        """Read whether the environment names a tracer provider (see :meth:`active`)."""
        self._env_provider = OTEL_PYTHON_TRACER_PROVIDER in os.environ

    def active(self) -> bool:
        """Whether an SDK is configured: without one every span would be a no-op, so the
        hooks skip the work (an installed, unconfigured plugin costs a check per job). The
        global provider can be set once, so a yes is remembered.

        A no costs one module attribute read: OpenTelemetry's global provider is still unset
        and ``OTEL_PYTHON_TRACER_PROVIDER`` (which ``get_tracer_provider()`` would load) was
        not in the environment when this process configured Nuvom (``refresh_environment``).
        ``get_tracer_provider()`` itself tests ``os.environ`` on every call: ~2 µs per job
        enqueued, measured, most of the idle plugin's cost."""
        if not self._active:
            if getattr(trace, "_TRACER_PROVIDER", self) is None and not self._env_provider:
                return False
            provider = trace.get_tracer_provider()
            self._active = not isinstance(provider, trace.ProxyTracerProvider
                                          | trace.NoOpTracerProvider)
        return self._active

    # --- producer ---------------------------------------------------------------------------

    def enqueueing(self, job: Job) -> None:
        span = self.tracer.start_span(
            f"send {job.queue}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": SYSTEM, "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": job.queue, "messaging.message.id": job.id,
                "nuvom.task": job.task})
        propagate.inject(job.headers, context=trace.set_span_in_context(span))
        with self._lock:
            self._producing[job] = span

    def enqueued(self, job: Job) -> None:
        if not self._producing:  # idle: nothing was started
            return
        with self._lock:
            span = self._producing.pop(job, None)
        if span is not None:
            span.end()

    # --- consumer ---------------------------------------------------------------------------

    def executing(self, job: Job) -> None:
        carried = propagate.extract(job.headers)
        producer = trace.get_current_span(carried).get_span_context()
        links = [Link(producer)] if producer.is_valid and not self.consumer_parent else []
        parent = carried if self.consumer_parent else otel_context.Context()
        span = self.tracer.start_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, links=links,
            attributes={
                "messaging.system": SYSTEM, "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": job.queue, "messaging.message.id": job.id,
                "nuvom.task": job.task, "nuvom.run": job.run,
                "nuvom.attempt": job.attempts})
        token = otel_context.attach(trace.set_span_in_context(span))  # the task's spans nest
        with self._lock:
            self._consuming[job] = (span, token, threading.get_ident())

    def executed(self, job: Job, error: BaseException | None = None) -> None:
        if not self._consuming:  # idle: nothing was started
            return
        with self._lock:
            entry = self._consuming.pop(job, None)
        if entry is None:
            return
        span, token, thread = entry
        if error is not None:
            # The job's own error type: for a task run in a pool child, the child's
            # exception class (the error raised here only wraps it).
            kind = job.error_type or _qualname(error)
            span.record_exception(error)
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, f"{kind}: {error}"))
        span.end()
        if thread == threading.get_ident():  # a timeout ends the span on another thread
            otel_context.detach(token)  # type: ignore[arg-type]
