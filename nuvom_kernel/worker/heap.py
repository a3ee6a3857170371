"""The worker process's heap, frozen for a run (see :func:`frozen_heap`)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["frozen_heap"]


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave what is alive now out of the garbage collector's scans until the block ends
    (``gc.freeze``), after collecting what is garbage already.

    Why: in a worker process, what is alive at start (imported modules, the kernel and its
    plugins) lives as long as the process, and each full collection traversed all of it
    again for nothing: about a sixth of a worker's CPU per job in a drain on SQLite
    (``benchmarks/README.md``). Frozen objects are still freed when nothing refers to them;
    only a reference cycle among them that becomes garbage waits for the block's end.
    Does nothing where something is frozen already (an app's own ``gc.freeze()``, an
    enclosing block): the end of this block must not unfreeze what it did not freeze.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
