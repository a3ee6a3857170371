"""The ``[plugins.prometheus]`` table (each key overridable by
``NUVOM_PLUGINS__PROMETHEUS__<KEY>``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import attrs

from nuvom_kernel.plugin_settings import plugin_env_var, schema_of
from nuvom_kernel.values import Converted, Seconds, optional, to_int, to_str

__all__ = ["Host", "Port", "PrometheusSettings", "parse_host", "parse_port"]


def parse_port(value: Any) -> int | None:
    """``port`` as the kernel converts it when it reads the configuration, so ``70000`` is
    refused for every command with exit status 2, like ``port=abc``. Checked only when the
    worker bound it, it stopped ``nuvom runworker`` with exit status 1 and a ``repr()`` of
    the error, and ``nuvom config`` showed it as valid.

    The message names the variable too: the kernel's prefix names only where the value was
    read (the file's table, or the variable), and either can be the one to change.
    """
    accepted = (f"must be a TCP port 1-65535, or 0 for any free one "
                f"({plugin_env_var('prometheus', 'port')}, [plugins.prometheus] port); "
                "leave both unset to export nothing")

    def port(text: Any) -> int:
        try:
            number = to_int(text)
        except ValueError:
            raise ValueError(accepted) from None
        if not 0 <= number <= 65535:
            raise ValueError(accepted)
        return number

    try:
        parsed: int | None = optional(port)(value)
    except ValueError:  # optional() appends "or empty for none", which `accepted` says
        raise ValueError(accepted) from None
    return parsed


def parse_host(value: Any) -> str:
    """``host``, refused when blank at load for the same reason as :func:`parse_port`."""
    text = to_str(value)
    if not text.strip():
        raise ValueError(f"must be an address such as 127.0.0.1 or 0.0.0.0 "
                         f"({plugin_env_var('prometheus', 'host')}), not empty")
    return text


#: The declared types: the kernel runs these converters when it reads the configuration.
Port = Annotated[int | None, Converted(parse_port)]
Host = Annotated[str, Converted(parse_host)]


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

    port: Port = None
    host: Host = "127.0.0.1"
    refresh_secs: Seconds = 5.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> PrometheusSettings:
        """The kernel's checks of the declared types (:meth:`PluginSchema.check`), the same
        ones it ran when it read the configuration: every value is checked there, so this
        only converts; errors name the key and its variable.

        :raises PluginConfigError: a value the declared types refuse.
        """
        return cls(**schema_of("prometheus", cls).check(settings))
