"""Lifecycle events: call every observer, log one that raises, never fail the job for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import pluggy

__all__ = ["HookInterrupted", "call_each", "call_per_job", "emit", "observers"]

log = logging.getLogger("nuvom.events")


class HookInterrupted(BaseException):
    """Raised by the worker's signal handler to pull the main thread out of a hung lifecycle
    hook: the one exception an observer's isolation lets through (with a ``KeyboardInterrupt``
    on the main thread, a user's Ctrl-C), and the one BaseException a task's call lets
    through."""


def _isolated(impl: Any, hook_name: str, exc: BaseException) -> None:
    """Log ``exc``, raised by the observer ``impl``, and carry on; re-raise what is not the
    observer's to swallow.

    Why every BaseException: an observer that called ``sys.exit()`` or raised
    ``KeyboardInterrupt`` (or any BaseException of its own) in a worker ended the executor
    thread, the settler or the event loop that called it, silently, and the worker went on
    looking healthy with nothing left to run its jobs.
    """
    if isinstance(exc, HookInterrupted) or (
            isinstance(exc, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()):
        raise exc
    log.critical("plugin %r raised in %s; ignored", impl.plugin_name, hook_name,
                 exc_info=exc)


def observers(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    """The implementations of ``hook_name`` in pluggy's calling order (the last registered
    first); callers must not change the list. A batch looks them up once and calls
    :func:`call_each` per job: the lookup and the keyword dict were a third of an idle
    observer's cost per job. Kept per hook by Nuvom's plugin manager until a plugin is
    registered or unregistered (two hooks per job in a worker)."""
    cache: dict[str, list[Any]] | None = getattr(pm, "observer_cache", None)
    impls = None if cache is None else cache.get(hook_name)
    if impls is None:
        generation = getattr(pm, "observer_generation", None)
        impls = getattr(pm.hook, hook_name).get_hookimpls()[::-1]
        if cache is not None and generation == getattr(pm, "observer_generation", None):
            cache[hook_name] = impls  # (not if the plugins changed during the lookup)
            if generation != getattr(pm, "observer_generation", None):
                cache.pop(hook_name, None)  # they changed between the check and the store
    return impls


def call_each(impls: Sequence[Any], hook_name: str, kwargs: dict[str, Any]) -> None:
    """Call every implementation of :func:`observers`, isolating each one (see :func:`emit`)."""
    for impl in impls:
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except BaseException as exc:
            _isolated(impl, hook_name, exc)


def call_per_job(impls: Sequence[Any], hook_name: str, jobs: Sequence[Any]) -> None:
    """:func:`call_each` with ``job=`` for every job of a batch (``.map()``), each plugin
    for the whole batch before the next plugin: the same calls, isolated the same way, at
    about a third of the cost per job of a :func:`call_each` per job (no keyword dict, no
    argument list)."""
    for impl in impls:
        if tuple(impl.argnames) != ("job",):
            for job in jobs:
                call_each((impl,), hook_name, {"job": job})
            continue
        function = impl.function
        for job in jobs:
            try:
                function(job)
            except BaseException as exc:
                _isolated(impl, hook_name, exc)


def emit(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call ``hook_name`` on every plugin, in pluggy's order, isolating each observer.

    Observers cannot stop the run: an exception (a ``SystemExit`` too) is logged at
    CRITICAL with the plugin's name and the next observer still runs (dramatiq's
    ``emit_after`` does the same); see :func:`_isolated` for the two it lets through.
    """
    call_each(observers(pm, hook_name), hook_name, kwargs)
