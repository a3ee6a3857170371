"""The kernel's own reference backends, under the name ``stub``.

They exist for two reasons. The user pytest plugin needs an isolated queue and result store
without depending on any plugin distribution (the kernel never imports one). And the contract
suites need a reference the kernel owns: the stubs pass every contract test, and the broken
variants in :mod:`nuvom_kernel.testing.fakes` each change one method of them, which is how the
meta-tests prove that a contract fails exactly when its promise is broken. The backends are
the in-memory reference store of :mod:`.memory` (the ``memory`` plugin registers the same
classes under its own name).

There is no stub *discoverer*: the one task scanner is the ``ast`` discoverer of the
``nuvom-plugins`` distribution, and a second copy here would drift from it. The discoverer
fakes wrap whatever real discoverer they are given instead, and the meta-tests give them the
installed ``ast`` one.
"""

from __future__ import annotations

from typing import ClassVar

from nuvom_kernel.testing.memory import MemoryJobQueue, MemoryResultBackend

__all__ = ["StubQueue", "StubResults"]


class StubQueue(MemoryJobQueue):
    """The reference queue under the name ``stub`` (the kernel never imports a plugin)."""

    name: ClassVar[str] = "stub"


class StubResults(MemoryResultBackend):
    """The reference result backend under the name ``stub``."""

    name = "stub"
