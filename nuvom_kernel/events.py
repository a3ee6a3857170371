"""Lifecycle events: call every observer, log one that raises, never fail the job for it."""

from __future__ import annotations

import logging
from typing import Any

import pluggy

__all__ = ["emit"]

log = logging.getLogger("nuvom.events")


def emit(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call ``hook_name`` on every plugin, in pluggy's order, isolating each observer.

    Observers cannot stop the run: an exception is logged at CRITICAL with the plugin's name
    and the next observer still runs (dramatiq's ``emit_after`` does the same).
    """
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in reversed(impls):  # pluggy calls the last registered first
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception:
            log.critical("plugin %r raised in %s; ignored", impl.plugin_name, hook_name,
                         exc_info=True)
