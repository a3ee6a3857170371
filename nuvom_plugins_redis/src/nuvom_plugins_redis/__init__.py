"""Redis queue and result backends for Nuvom: one queue for workers on many hosts.

Installed, they register under the name ``redis`` (``queue_backend = "redis"``,
``result_backend = "redis"``) and connect to ``[plugins.redis] url`` (default
``redis://127.0.0.1:6379/0``), every key under ``key_prefix`` (default ``nuvom``).
"""

from __future__ import annotations

from nuvom_plugins_redis.errors import RedisUnavailableError, ValueTooLargeError
from nuvom_plugins_redis.queue import RedisJobQueue
from nuvom_plugins_redis.results import RedisResultBackend
from nuvom_plugins_redis.settings import RedisSettings

__version__ = "0.1.0"

__all__ = ["RedisJobQueue", "RedisResultBackend", "RedisSettings", "RedisUnavailableError",
           "ValueTooLargeError", "__version__"]
