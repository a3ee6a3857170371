"""The ``[plugins.sqlite]`` table, parsed once and shared by the queue and the result backend.

Why a module of its own: both backends (and the plugin's settings schema) read this table,
while only :mod:`.connection` opens the file it names; the paths are made absolute here, at
parse time, before any connection exists (see :func:`_absolute`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import attrs

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.plugin_settings import schema_of
from nuvom_kernel.values import RESULT_TTL_SECS, Converted, Retention, Seconds

__all__ = ["SQLiteSettings"]

_SYNCHRONOUS = ("NORMAL", "FULL")


def _synchronous(value: Any) -> str:
    """``NORMAL`` or ``FULL``, in any case, checked when the settings load (so ``nuvom
    config`` refuses ``OFF`` too, where only the first command that opened the store did)."""
    sync = str(value).strip().upper()
    if sync not in _SYNCHRONOUS:
        raise ValueError("must be NORMAL (default) or FULL")
    return sync


#: The ``synchronous`` key's type: its check runs at load, in the kernel's words.
Synchronous = Annotated[str, Converted(_synchronous)]


@attrs.frozen
class SQLiteSettings:
    """The ``[plugins.sqlite]`` table, shared by the queue and the result backend.

    :param path: the queue's database file; default ``<data_dir>/nuvom.db``. Absolute once
        parsed: ``~`` expanded, a relative path joined to the working directory of the
        moment (see :func:`_absolute`).
    :param results_path: the result backend's database file; default ``path`` (one file for
        queue and job records). A separate file gives job records their own write lock.
        Made absolute as ``path`` is.
    :param synchronous: ``NORMAL`` (default: WAL commits survive a crash of the process,
        the last few may be lost on power loss) or ``FULL`` (fsync every commit).
    :param busy_timeout_secs: longest wait for another process's write lock before an
        operation fails with :class:`~nuvom_plugins_sqlite.errors.DatabaseBusyError`.
    :param visibility_timeout_secs: lease length for the queue; default from the kernel.
    :param result_ttl_secs: finished job records (and ended workflows) older than this are
        deleted by every running worker about once a minute (default 7 days, as every
        persistent result backend's; ``0`` keeps them until ``nuvom purge results``). A
        :data:`~nuvom_kernel.values.Retention`: at most 100 years.

    Both durations are :data:`~nuvom_kernel.values.Seconds` (finite, at most 366 days), as
    the kernel's own duration settings: ``inf`` made a lease that never expires (a crashed
    worker's job was never run again) and a busy wait with no end.
    """

    path: Path
    results_path: Path | None = None
    synchronous: Synchronous = "NORMAL"
    busy_timeout_secs: Seconds = 30.0
    visibility_timeout_secs: Seconds = 30.0
    result_ttl_secs: Retention = RESULT_TTL_SECS

    @classmethod
    def parse(cls, settings: Mapping[str, Any], context: BackendContext) -> SQLiteSettings:
        """Validate a settings table; every error names the key and what it accepts (the
        kernel's checks of the declared types, :meth:`PluginSchema.check`)."""
        values = schema_of("sqlite", cls).check(settings)
        path = _absolute(values.get("path") or Path(context.data_dir) / "nuvom.db")
        sync = values.get("synchronous", "NORMAL")
        results = values.get("results_path")
        return cls(path=path, results_path=_absolute(results) if results else path,
                   synchronous=sync, busy_timeout_secs=values.get("busy_timeout_secs", 30.0),
                   visibility_timeout_secs=values.get("visibility_timeout_secs",
                                                      context.visibility_timeout_secs),
                   result_ttl_secs=values.get("result_ttl_secs", RESULT_TTL_SECS))


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory now.

    Why once, when the settings are read: SQLite opens a relative path against the working
    directory of the moment it connects, and connections open lazily (one per thread, again
    after a fork). After a task's ``os.chdir()`` a worker's next connection opened (and
    created) another, empty database there: "no such table: nuvom_queue", and stray
    ``.nuvom/nuvom.db`` and ``-wake/`` files in the task's folder. Resolved here, a relative
    path means what the documentation says: relative to the folder nuvom started in (the
    project folder, where ``.nuvom_plugins.toml`` and the data folder are). ``~`` is expanded
    as a shell would (SQLite does not: ``~/q.db`` created a folder named ``~``).
    ``Path.absolute`` keeps ``..`` as written (``abspath`` would fold it past a symlink).
    """
    return Path(os.path.expanduser(os.fspath(path))).absolute()
