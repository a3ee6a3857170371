"""How Nuvom speaks of a name it does not know: with the closest known one, and, where the
same configuration is read by every kernel a process builds, once per process.

A module of its own: the configuration, the plugin manager, the call checks and the CLI all
say such things, and the configuration module keeps to the settings themselves.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Collection
from pathlib import Path

__all__ = ["did_you_mean", "parent_project", "warn_once", "warned"]

log = logging.getLogger("nuvom.config")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(message: str) -> None:
    """Log ``message`` as a warning of ``nuvom.config`` once per process.

    Why once: configuration is read by every kernel a process builds (a producer's first
    ``.delay()``, each CLI command, each test's kernel), and a typo must be said, not
    repeated for every job.
    """
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("%s", message)


def warned(message: str) -> bool:
    """Whether this process said ``message`` with :func:`warn_once`."""
    with _warned_lock:
        return message in _warned


def did_you_mean(word: str, known: Collection[str], shown: Callable[[str], str] = str) -> str:
    """`` (did you mean X?)`` for the known name closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean {shown(close[0])}?)" if close else ""


def parent_project(folder: Path, data_dir: Path, configured: bool) -> Path | None:
    """The nearest folder above ``folder`` that holds a Nuvom project (a
    ``.nuvom_plugins.toml``, or a ``.nuvom/manifest.json`` discovery wrote), where
    ``folder`` is none of its own: no configuration file (``configured``) and no manifest
    in ``data_dir`` that lists a task.

    Why: each folder has its own store (``.nuvom/``), so a worker started in a project's
    subfolder served a new, empty one, while the producers used the project's; it said to
    run `nuvom discover tasks`, which made things no better. A project of its own below
    another one is no mistake."""
    from nuvom_kernel.discovery import read_manifest  # (hints is imported by config)

    try:
        if configured or (read_manifest(data_dir) or {}).get("tasks"):
            return None
    except ValueError:  # an unusable manifest lists no task
        pass
    for above in list(folder.absolute().parents)[:10]:
        if (above / ".nuvom_plugins.toml").is_file() or \
                (above / ".nuvom" / "manifest.json").is_file():
            return above
    return None

