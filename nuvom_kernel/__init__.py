"""Nuvom's microkernel: models, hook specs, plugin manager, config, dispatcher, worker, CLI.

Importing this package has no side effects: it loads no plugin, reads no file and touches no
environment variable. The kernel is built on first use (``.delay()``, ``get_job()``, the CLI).
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("nuvom")
"""Marker for hook implementations, in plugins and in the kernel's own modules."""

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
