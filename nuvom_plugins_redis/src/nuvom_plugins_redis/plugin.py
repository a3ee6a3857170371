"""Registers the Redis backends with Nuvom (entry point ``nuvom: redis``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nuvom_kernel import hookimpl
from nuvom_kernel.backends import QueueBackend, ResultBackend
from nuvom_plugins_redis.queue import RedisJobQueue
from nuvom_plugins_redis.results import RedisResultBackend
from nuvom_plugins_redis.settings import RedisSettings

if TYPE_CHECKING:
    from nuvom_kernel.worker import Worker

__all__ = ["nuvom_plugin_settings", "nuvom_register_queue_backends",
           "nuvom_register_result_backends", "nuvom_worker_prepare"]


@hookimpl
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    return [RedisJobQueue]


@hookimpl
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    return [RedisResultBackend]


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    """``[plugins.redis]`` (and ``NUVOM_PLUGINS__REDIS__*``): the class both backends parse
    their table with, so the kernel's key check and theirs cannot disagree."""
    return {"redis": RedisSettings}


@hookimpl
def nuvom_worker_prepare(worker: Worker) -> None:
    """Warn in a worker's log, as it starts, about server settings that lose jobs (eviction,
    no persistence): once per server, in the process an operator watches."""
    for backend in (worker.kernel.queue, worker.kernel.results):
        if isinstance(backend, RedisJobQueue | RedisResultBackend):
            backend.store.warn_unsafe_settings()
