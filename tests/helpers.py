"""Helpers shared by the kernel's tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.testing.contracts._support import wait_until as _wait_until

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def installed_backends(hook: str = "nuvom_register_queue_backends") -> set[str]:
    pm = NuvomPluginManager()
    from nuvom_kernel.config import load_config

    pm.load(load_config(FIXTURES / "empty"), environ={})
    return set(pm.collect(hook))


#: Backends the end-to-end tests run on: every installed one of these joins automatically.
E2E_BACKENDS = [b for b in ("memory", "sqlite", "file", "redis", "postgres")
                if b in installed_backends()]
PERSISTENT_BACKENDS = [b for b in E2E_BACKENDS if b != "memory"]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
               ) -> object:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    return _wait_until(predicate, timeout, f"timed out waiting for {what}")




def write_module(project: Path, name: str, source: str) -> str:
    """Write ``name``.py into the project and forget any stale import of it."""
    (project / f"{name}.py").write_text(source)
    sys.modules.pop(name, None)
    return name
