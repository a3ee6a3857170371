"""``[plugins.dashboard]`` (and ``NUVOM_PLUGINS__DASHBOARD__*``): the dashboard's settings.

Only what an operator sets once per deployment lives here: the token, a secret kept in the
environment (``NUVOM_PLUGINS__DASHBOARD__TOKEN``) instead of typed on every command line
(``nuvom config`` prints it masked), and the host names a reverse proxy forwards to a
token-less dashboard. Host, port and ``--read-only`` are per run, on the command.
"""

from __future__ import annotations

import attrs

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.plugin_settings import plugin_env_var

__all__ = ["LOOPBACK_NAMES", "DashboardSettings", "host_name", "parse_allowed_hosts"]

#: Host names a token-less dashboard always answers to (besides loopback IP literals).
LOOPBACK_NAMES = frozenset({"localhost"})


@attrs.frozen
class DashboardSettings:
    """:param token: every client must present it (required off loopback).
    :param allowed_hosts: comma-separated host names (no port) a dashboard *without* a
        token answers to besides ``127.0.0.1``, ``localhost`` and ``[::1]``: the names a
        reverse proxy in front of it forwards in ``Host``. Any other ``Host`` gets a 421, so
        a web page whose name an attacker re-points at 127.0.0.1 (DNS rebinding) cannot
        read or act through the dashboard.
    """

    token: str | None = None
    allowed_hosts: str | None = None


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header value, lower-cased, without its port or IPv6 brackets;
    ``None`` when it is malformed (a port that is not a number, an unclosed bracket)."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return text[1:end] or None
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():  # also "a:b:c", an IPv6 address without brackets
        return None
    return name or None


def parse_allowed_hosts(value: str | None) -> frozenset[str]:
    """The names of ``allowed_hosts`` (``"dash.example.com, ops.example.com"``), each as
    :func:`host_name` normalises a ``Host`` header; ``*`` allows any.

    :raises PluginConfigError: an entry that is not a host name, naming the setting.
    """
    names = set()
    for entry in (value or "").split(","):
        if not entry.strip():
            continue
        name = "*" if entry.strip() == "*" else host_name(entry)
        if name is None or any(c.isspace() or c in "/?#@" for c in name):
            raise PluginConfigError(
                f"[plugins.dashboard] allowed_hosts "
                f"({plugin_env_var('dashboard', 'allowed_hosts')}): {entry.strip()!r} is "
                "not a host name; list names such as dash.example.com, separated by commas")
        names.add(name)
    return frozenset(names)
