"""Entry point ``nuvom: file``: registers the file queue and result backends and the typed
keys of their shared ``[plugins.file]`` table."""

from __future__ import annotations

from pathlib import Path

import attrs

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_kernel.values import RESULT_TTL_SECS, Retention, Seconds, SecondsOrZero
from nuvom_plugins.file.queue import FileJobQueue
from nuvom_plugins.file.results import FileResultBackend


@attrs.frozen
class FileSettings:
    """``[plugins.file]``, one table for both file backends (each ignores the other's keys).

    :param path: the queue directory (``queue_path`` is an alias); default
        ``<data_dir>/queue``.
    :param queue_path: another name for ``path``.
    :param fsync: fsync queue files on push and retry.
    :param relist_interval_secs: longest time a cached listing of ready messages is trusted.
    :param visibility_timeout_secs: lease length; default the kernel's setting.
    :param results_path: the result backend's directory; default ``<data_dir>/results``.
    :param segment_max_bytes: size at which a results segment file is rotated.
    :param results_fsync: fsync every record write.
    :param result_ttl_secs: finished job records (and ended workflows) older than this are
        deleted by every running worker about once a minute; default 7 days, ``0`` keeps
        them until ``nuvom purge results``.
    """

    path: Path | None = None
    queue_path: Path | None = None
    fsync: bool = True
    relist_interval_secs: SecondsOrZero = 2.0  # (finite, at most 366 days, as every
    visibility_timeout_secs: Seconds = 30.0  # duration: a lease of 1e13 s never expired)
    results_path: Path | None = None
    segment_max_bytes: int = 64 * 1024 * 1024
    results_fsync: bool = False
    result_ttl_secs: Retention = RESULT_TTL_SECS


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [FileJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [FileResultBackend]


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    return {"file": FileSettings}

