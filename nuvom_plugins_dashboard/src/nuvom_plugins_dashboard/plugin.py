"""Registers the dashboard with Nuvom (entry point ``nuvom: dashboard``): the ``nuvom
dashboard`` command and the ``[plugins.dashboard]`` settings."""

from __future__ import annotations

import click

from nuvom_kernel import hookimpl
from nuvom_plugins_dashboard.cli import dashboard
from nuvom_plugins_dashboard.settings import DashboardSettings

__all__ = ["nuvom_plugin_settings", "nuvom_register_commands"]


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    cli.add_command(dashboard)


@hookimpl
def nuvom_plugin_settings() -> dict[str, type]:
    return {"dashboard": DashboardSettings}
