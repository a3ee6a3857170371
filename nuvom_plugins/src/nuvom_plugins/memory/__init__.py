"""In-process queue and result backends: no persistence, for tests and single-process apps.

They are the kernel's in-memory reference store (``nuvom_kernel.testing.memory``), the one
every contract test is proven against; this plugin registers them under the name ``memory``.
"""

from nuvom_kernel.testing.memory import MemoryJobQueue, MemoryResultBackend

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]
