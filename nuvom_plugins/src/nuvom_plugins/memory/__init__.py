"""In-process queue and result backends: no persistence, for tests and single-process apps."""

from nuvom_plugins.memory.backend import MemoryJobQueue, MemoryResultBackend

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]
