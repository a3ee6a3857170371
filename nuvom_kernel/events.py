"""Lifecycle events: call every observer, log one that raises, never fail the job for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pluggy

__all__ = ["HookInterrupted", "call_each", "call_per_job", "emit", "observers"]

log = logging.getLogger("nuvom.events")


class HookInterrupted(BaseException):
    """Raised by the worker's signal handler to pull the main thread out of a hung lifecycle
    hook: the one exception an observer's isolation lets through (with a ``KeyboardInterrupt``
    on the main thread, a user's Ctrl-C), and the one BaseException a task's call lets
    through. ``plugin``: the plugin whose hook it interrupted, once known."""

    plugin: str | None = None


def _isolated(impl: Any, hook_name: str, exc: BaseException) -> None:
    """Log ``exc``, raised by the observer ``impl``, and carry on; re-raise what is not the
    observer's to swallow.

    Why every BaseException: an observer that called ``sys.exit()`` or raised
    ``KeyboardInterrupt`` (or any BaseException of its own) in a worker ended the executor
    thread, the settler or the event loop that called it, silently, and the worker went on
    looking healthy with nothing left to run its jobs.
    """
    if isinstance(exc, HookInterrupted):
        if exc.plugin is None:  # the innermost hook: the one that hung (for the log)
            exc.plugin = impl.plugin_name
        raise exc
    if isinstance(exc, KeyboardInterrupt) and \
            threading.current_thread() is threading.main_thread():
        raise exc
    repeats = _repeats(impl, hook_name, exc)
    if repeats is None:
        return
    if repeats < 0:  # the first of its kind: the traceback, and the way out
        log.critical("plugin %r raised in %s; ignored (the job goes on). The same error from "
                     "this hook is logged again at most once a minute; "
                     "NUVOM_DISABLE_PLUGINS=%s runs without the plugin", impl.plugin_name,
                     hook_name, impl.plugin_name, exc_info=exc)
    else:
        log.critical("plugin %r raised in %s again; ignored: %s: %s (%d more time(s) since "
                     "the last report)", impl.plugin_name, hook_name, type(exc).__name__,
                     exc, repeats)


#: An observer's error is logged with its traceback once, then at most this often.
REPEAT_SECS = 60.0
_seen_lock = threading.Lock()
#: (implementation id, hook, error type) -> [the implementation (kept, so its id is not
#: reused), when the next report is due, errors not reported since the last]
_seen: dict[tuple[int, str, type], list[Any]] = {}


def _repeats(impl: Any, hook_name: str, exc: BaseException) -> int | None:
    """``-1`` for the first error of this kind from ``impl``'s ``hook_name``; the number
    left unreported since the last report when one is due; ``None`` when it is not.

    Why: a metrics or tracing plugin broken in one hook raised on every job, and each was
    a CRITICAL line with a traceback: thousands a second in a drain, burying the rest.
    """
    key = (id(impl), hook_name, type(exc))
    now = time.monotonic()
    with _seen_lock:
        state = _seen.get(key)
        if state is None:
            _seen[key] = [impl, now + REPEAT_SECS, 0]
            return -1
        if now < state[1]:
            state[2] += 1
            return None
        repeats, state[1], state[2] = state[2], now + REPEAT_SECS, 0
        return int(repeats)


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
