"""The ``[plugins.prometheus]`` table (each key overridable by
``NUVOM_PLUGINS__PROMETHEUS__<KEY>``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.plugin_settings import plugin_env_var
from nuvom_kernel.values import MAX_SECONDS

__all__ = ["MAX_REFRESH_SECS", "PrometheusSettings"]

#: Longest ``refresh_secs``: the kernel's longest duration (``nuvom_kernel.values.MAX_SECONDS``,
#: 366 days). Why a limit: the refresh thread waits ``refresh_secs`` between reads, and
#: ``inf`` or ``1e10`` passed a check of ``> 0`` and then killed that thread on its first
#: wait (``OverflowError: timestamp out of range for platform time_t``), so the queue
#: gauges were never refreshed and nothing said why.
MAX_REFRESH_SECS = float(MAX_SECONDS)


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
        refresh = parsed.refresh_secs
        if isinstance(refresh, bool) or not isinstance(refresh, int | float) \
                or not 0 < refresh <= MAX_REFRESH_SECS:  # also NaN, which no comparison passes
            too_long = isinstance(refresh, int | float) and refresh > MAX_REFRESH_SECS
            raise PluginConfigError(
                f"[plugins.prometheus] refresh_secs={refresh!r} "
                f"({plugin_env_var('prometheus', 'refresh_secs')}) is invalid: use a finite "
                f"number of seconds > 0 and at most {MAX_REFRESH_SECS:.0f} (366 days)"
                + ("; the refresh thread waits that long between reads of the queue, and "
                   "Python cannot wait for infinity or past the platform's time_t, so the "
                   "queue gauges would never be refreshed" if too_long else ""))
        if not parsed.host.strip():
            raise PluginConfigError("[plugins.prometheus] host is empty: use an address such "
                                    "as 127.0.0.1 or 0.0.0.0")
        return parsed
