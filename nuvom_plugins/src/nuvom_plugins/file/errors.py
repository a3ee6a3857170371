"""Errors of the file backends about their folders: one that cannot be created, opened or
written, named with its path, the cause and the setting that places it.

Why their own classes: the raw ``OSError`` (``[Errno 30] Read-only file system``, or
``NotADirectoryError`` for a ``path`` that names a file) came out of every ``nuvom`` command
(``status``, ``inspect``, ``history``, ``runworker``) as a 40-line traceback that named no
setting, where the SQLite backend printed one ``Error:`` line. The CLI prints a
:class:`~nuvom_kernel.errors.NuvomError` as one line and exits with status 2 for a
:class:`~nuvom_kernel.errors.ConfigError`, 1 for any other.

Both are :class:`~nuvom_kernel.errors.EnqueueError` subclasses, as SQLite's
``SQLiteUnavailableError`` is: the first ``.delay()`` of a process opens the queue, and
``except EnqueueError`` around it must catch a store it cannot open, whatever the cause.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from nuvom_kernel.errors import ConfigError, EnqueueError

__all__ = ["FileStorePathError", "FileStoreUnavailableError", "cannot_open", "cannot_write",
           "writes"]

P = ParamSpec("P")
T = TypeVar("T")

#: Which of the two file backends a folder belongs to.
Store = Literal["queue", "results"]

#: Per store: its name in messages, what it holds, and the settings that place its folder.
_STORES: dict[str, tuple[str, str, str]] = {
    "queue": ("queue", "queue",
              "The folder is placed by [plugins.file] path (or queue_path) in "
              ".nuvom_plugins.toml, or NUVOM_PLUGINS__FILE__PATH (default: queue in the data "
              "folder, NUVOM_DATA_DIR, .nuvom)."),
    "results": ("result", "job records",
                "The folder is placed by [plugins.file] results_path in .nuvom_plugins.toml, "
                "or NUVOM_PLUGINS__FILE__RESULTS_PATH (default: results in the data folder, "
                "NUVOM_DATA_DIR, .nuvom)."),
}


class FileStoreUnavailableError(EnqueueError):
    """A file backend's folder, or a file in it, cannot be created, opened or written (a
    read-only file system, no permission, no space); the message names the path, the cause
    and the setting that places the folder, and the ``OSError`` is the ``__cause__``."""


class FileStorePathError(FileStoreUnavailableError, ConfigError):
    """The folder's path runs through a file (``path`` names a file: a typo, a wrong
    variable): a configuration error, so ``nuvom`` exits with status 2 as for any setting
    it cannot use. Still a :class:`FileStoreUnavailableError` for code that catches one."""


def _cause(exc: OSError) -> str:
    """``<file>: <strerror> (<ERRNO>)``: the file the system call named and why it failed,
    in the words of the system (``strerror``), with the symbol to search for."""
    if exc.strerror is None:  # raised by hand, not by a system call
        return str(exc)
    symbol = errno.errorcode.get(exc.errno or 0)
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
    return f"{where}{exc.strerror}" + (f" ({symbol})" if symbol else "")


def _blocker(exc: OSError) -> Path | None:
    """The file standing where a folder must be, if that is why ``exc`` was raised:
    ``ENOTDIR`` (a file among the path's parents) or ``EEXIST`` from ``mkdir`` (a file
    where the folder itself goes)."""
    if exc.errno not in (errno.ENOTDIR, errno.EEXIST) or exc.filename is None:
        return None
    target = Path(os.fsdecode(exc.filename))
    return next((p for p in (target, *target.parents)
                 if os.path.exists(p) and not os.path.isdir(p)), None)


def _advice(exc: OSError, holds: str) -> str:
    """What to do about ``exc``, by its cause."""
    code = exc.errno
    if code == errno.EROFS:
        return (f"Its file system is mounted read-only: remount it read-write, or put the "
                f"{holds} on one that is")
    if code in (errno.EACCES, errno.EPERM):
        who = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"
        return (f"This process ({who}) may not write there: run nuvom as the user that owns "
                f"the folder, let this user write it, or put the {holds} elsewhere")
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"Free space on its file system, or put the {holds} on one with room"
    if code == errno.ENAMETOOLONG:
        return f"Put the {holds} at a shorter path"
    return f"Make the folder writable, or put the {holds} where it can be"


def cannot_open(store: Store, root: Path, exc: OSError) -> FileStoreUnavailableError:
    """The error for ``exc``, raised creating or opening the folder ``root`` of ``store``
    or a file in it: a :class:`FileStorePathError` when a file stands where a folder must
    be, else a :class:`FileStoreUnavailableError`. The caller chains ``exc``."""
    name, holds, placed = _STORES[store]
    head = (f"the 'file' {name} backend's folder {root} cannot be created or opened: "
            f"{_cause(exc)}")
    blocker = _blocker(exc)
    if blocker is not None:
        return FileStorePathError(f"{head}. {blocker} is a file, not a folder: move it, or "
                                  f"put the {holds} elsewhere. {placed}")
    return FileStoreUnavailableError(f"{head}. {_advice(exc, holds)}. {placed}")


def cannot_write(store: Store, root: Path, exc: OSError, does: str | None = None
                 ) -> FileStoreUnavailableError:
    """The error for a worker that cannot write the folder ``root`` of ``store`` (``exc``
    from trying): it opened, so that a look at the store works read-only, but a worker
    claims, settles and records there (``does``: what else was writing it). The caller
    chains ``exc``."""
    name, holds, placed = _STORES[store]
    if does is None:
        does = ("a worker claims, retries and acknowledges jobs there" if store == "queue"
                else "a worker records job outcomes and its heartbeat there")
    return FileStoreUnavailableError(
        f"the 'file' {name} backend's folder {root} is not writable: {_cause(exc)}; "
        f"{does}. {_advice(exc, holds)}. {placed}")


def writes(store: Store, does: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A method that writes the folder of ``store`` (at ``self.path``): an ``OSError`` it
    lets out is :func:`cannot_write`'s one-line error. Why: ``nuvom cancel job`` and
    ``nuvom purge results`` on a read-only mount printed a raw ``OSError`` traceback, while
    every look at the same store works and ``runworker`` refuses in one line."""
    def wrap(method: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(method)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                raise cannot_write(store, args[0].path, exc, does) from exc  # type: ignore[attr-defined]
        return run
    return wrap
