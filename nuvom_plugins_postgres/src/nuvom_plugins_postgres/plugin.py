"""Registers the PostgreSQL backends with Nuvom (entry point ``nuvom: postgres``)."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_plugins_postgres.queue import PostgresQueue
from nuvom_plugins_postgres.results import PostgresResultBackend
from nuvom_plugins_postgres.settings import PostgresSettings

__all__ = ["nuvom_plugin_settings", "nuvom_register_queue_backends",
           "nuvom_register_result_backends"]


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [PostgresQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [PostgresResultBackend]


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    """``[plugins.postgres]`` (and ``NUVOM_PLUGINS__POSTGRES__*``): the class both backends
    parse their table with, so the kernel's key check and theirs cannot disagree."""
    return {"postgres": PostgresSettings}
