"""Registers the SQLite backends with Nuvom (entry point ``nuvom: sqlite``)."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_plugins_sqlite.queue import SQLiteJobQueue
from nuvom_plugins_sqlite.results import SQLiteResultBackend
from nuvom_plugins_sqlite.settings import SQLiteSettings

__all__ = ["nuvom_plugin_settings", "nuvom_register_queue_backends",
           "nuvom_register_result_backends"]


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [SQLiteJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [SQLiteResultBackend]


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    """``[plugins.sqlite]`` (and ``NUVOM_PLUGINS__SQLITE__*``): the same class both backends
    parse their table with, so the kernel's key check and theirs cannot disagree."""
    return {"sqlite": SQLiteSettings}
