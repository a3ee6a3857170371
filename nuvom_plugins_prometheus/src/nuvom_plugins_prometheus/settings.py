"""The ``[plugins.prometheus]`` table (each key overridable by
``NUVOM_PLUGINS__PROMETHEUS__<KEY>``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.plugin_settings import plugin_env_var

__all__ = ["PrometheusSettings"]


@attrs.frozen
class PrometheusSettings:
    """:param port: where ``nuvom runworker`` serves ``/metrics``; unset (the default)
        leaves the plugin idle: nothing served, nothing counted. ``0`` picks a free port
        and logs it.
    :param host: the address to bind (default ``127.0.0.1``: this machine only; ``0.0.0.0``
        for a Prometheus server elsewhere).
    :param refresh_secs: how often queue depth and oldest-job age are read from the queue
        backend (``stats()``): on a timer, so a scrape never queries the store.
    """

    port: int | None = None
    host: str = "127.0.0.1"
    refresh_secs: float = 5.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> PrometheusSettings:
        """Check the values the types alone do not; errors name the key and its variable."""
        parsed = cls(**{k: v for k, v in settings.items() if v is not None})
        if parsed.port is not None and not 0 <= parsed.port <= 65535:
            raise PluginConfigError(
                f"[plugins.prometheus] port={parsed.port} ({plugin_env_var('prometheus', 'port')})"
                " is invalid: use a TCP port 1-65535, 0 for any free one, or leave it unset")
        if parsed.refresh_secs <= 0:
            raise PluginConfigError(
                f"[plugins.prometheus] refresh_secs={parsed.refresh_secs} is invalid: use a "
                "number of seconds > 0")
        if not parsed.host.strip():
            raise PluginConfigError("[plugins.prometheus] host is empty: use an address such "
                                    "as 127.0.0.1 or 0.0.0.0")
        return parsed
