"""``[plugins.dashboard]`` (and ``NUVOM_PLUGINS__DASHBOARD__*``): the dashboard's settings.

Only the token lives here: it is a secret an operator sets once in the environment
(``NUVOM_PLUGINS__DASHBOARD__TOKEN``) instead of typing it on every command line, and
``nuvom config`` prints it masked. Host, port and ``--read-only`` are per run, on the command.
"""

from __future__ import annotations

import attrs

__all__ = ["DashboardSettings"]


@attrs.frozen
class DashboardSettings:
    """:param token: every client must present it (required off loopback)."""

    token: str | None = None
