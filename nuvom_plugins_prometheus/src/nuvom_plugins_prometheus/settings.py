"""The ``[plugins.prometheus]`` table (each key overridable by
``NUVOM_PLUGINS__PROMETHEUS__<KEY>``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.plugin_settings import plugin_env_var, schema_of
from nuvom_kernel.values import Seconds

__all__ = ["PrometheusSettings"]


@attrs.frozen
class PrometheusSettings:
    """:param port: where ``nuvom runworker`` serves ``/metrics``; unset (the default)
        leaves the plugin idle: nothing served, nothing counted. ``0`` picks a free port
        and logs it.
    :param host: the address to bind (default ``127.0.0.1``: this machine only; ``0.0.0.0``
        for a Prometheus server elsewhere).
    :param refresh_secs: how often queue depth and oldest-job age are read from the queue
        backend (``stats()``): on a timer, so a scrape never queries the store. A
        :data:`~nuvom_kernel.values.Seconds` (at most 366 days): ``inf`` killed the refresh
        thread on its first wait (``OverflowError``), and the gauges were never refreshed.
    """

    port: int | None = None
    host: str = "127.0.0.1"
    refresh_secs: Seconds = 5.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> PrometheusSettings:
        """The kernel's checks of the declared types (:meth:`PluginSchema.check`), then the
        values the types alone do not; errors name the key and its variable."""
        parsed = cls(**schema_of("prometheus", cls).check(settings))
        if parsed.port is not None and not 0 <= parsed.port <= 65535:
            raise PluginConfigError(
                f"[plugins.prometheus] port={parsed.port} ({plugin_env_var('prometheus', 'port')})"
                " is invalid: use a TCP port 1-65535, 0 for any free one, or leave it unset")
        if not parsed.host.strip():
            raise PluginConfigError("[plugins.prometheus] host is empty: use an address such "
                                    "as 127.0.0.1 or 0.0.0.0")
        return parsed
