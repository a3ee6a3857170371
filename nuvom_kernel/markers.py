"""The pluggy markers: ``hookimpl`` for plugins, ``hookspec`` for :mod:`.hookspecs`.

A module of its own, importing nothing but pluggy, so that a plugin's
``from nuvom_kernel import hookimpl`` loads no worker, no asyncio and no signal handling.
"""

from __future__ import annotations

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookimpl = pluggy.HookimplMarker("nuvom")
"""Marker for hook implementations, in plugins and in the kernel's own modules."""

hookspec = pluggy.HookspecMarker("nuvom")
"""Marker for the hook specifications (only :mod:`nuvom_kernel.hookspecs` uses it)."""
