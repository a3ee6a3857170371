"""Hooks of ``nuvom-plugins-otel`` (entry point ``nuvom: otel``): producer spans from the
enqueue hooks, consumer spans from the execute hooks; nothing else (no backend call)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nuvom_kernel import hookimpl
from nuvom_plugins_otel.settings import OtelSettings
from nuvom_plugins_otel.spans import Tracing

if TYPE_CHECKING:
    from nuvom_kernel.config import Config
    from nuvom_kernel.job import Job

__all__ = ["nuvom_after_enqueue", "nuvom_after_execute", "nuvom_before_enqueue",
           "nuvom_before_execute", "nuvom_configure", "nuvom_on_execute_error",
           "nuvom_plugin_settings", "tracing"]

#: The process's tracing (its settings come from the last kernel configured in it).
tracing = Tracing()


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    return {"otel": OtelSettings}


@hookimpl
def nuvom_configure(config: Config) -> None:
    settings = OtelSettings(**config.plugin_settings("otel"))
    tracing.consumer_parent = settings.consumer_parent
    tracing.refresh_environment()


@hookimpl
def nuvom_before_enqueue(job: Job) -> None:
    if tracing.active():
        tracing.enqueueing(job)


@hookimpl
def nuvom_after_enqueue(job: Job) -> None:
    if tracing.active():  # inactive at the before hook too (a yes is kept): nothing began
        tracing.enqueued(job)


@hookimpl
def nuvom_before_execute(job: Job) -> None:
    if tracing.active():
        tracing.executing(job)


@hookimpl
def nuvom_after_execute(job: Job, result: Any) -> None:
    tracing.executed(job)


@hookimpl
def nuvom_on_execute_error(job: Job, error: BaseException) -> None:
    tracing.executed(job, error)
