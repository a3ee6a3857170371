"""The ``nuvom`` command line: a click group whose commands all arrive through
``nuvom_register_commands`` — the kernel's own (internal plugins) and any plugin's."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from nuvom_kernel import __version__
from nuvom_kernel.backends import SPI_VERSION
from nuvom_kernel.errors import ConfigError, NuvomError

#: ``nuvom --version``: the kernel's release and the plugin SPI it implements.
VERSION_LINE = f"nuvom, version {__version__} (plugin SPI {SPI_VERSION})"

__all__ = ["main", "make_cli"]


def make_cli(kernel: object) -> click.Group:
    """A fresh root group with every plugin's commands (a new group per call, so tests and
    embedders never see commands leak between kernels).

    A plugin whose ``nuvom_register_commands`` raises is disabled for the process, as one
    that fails while loading is: logged once with the way out, listed as FAILED by ``nuvom
    plugin list``, none of its commands added; every other command works.

    :raises PluginLoadError: the hook of an essential internal plugin raised (the kernel's
        own bug: there is nothing to run without it).
    """

    @click.group(name="nuvom", cls=_Root,
                 context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, message=VERSION_LINE)
    def cli() -> None:
        """Nuvom: a plugin-first background task queue."""

    pm = kernel.pm  # type: ignore[attr-defined]
    cli.pm = pm  # says why a plugin's command is missing, whatever ctx.obj is
    # Registration order: the kernel's groups exist before plugins extend them.
    for impl in list(pm.hook.nuvom_register_commands.get_hookimpls()):
        before = _command_tables(cli)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            # As for any plugin that breaks while loading (NuvomPluginManager.disable):
            # disabled for this process, logged once with NUVOM_DISABLE_PLUGINS=<name>,
            # FAILED in `nuvom plugin list`. Its commands added before the raise are taken
            # back, so none of them runs half registered. Raising here stopped every
            # command, `runworker` and the `plugin list` that would show the culprit too.
            for group, commands in before:
                group.commands.clear()
                group.commands.update(commands)
            pm.disable(impl.plugin_name, "nuvom_register_commands", exc)
    return cli


#: Commands of Nuvom's own plugin distributions -> (plugin, distribution): named when the
#: command is missing, since click's "No such command 'dashboard'" says nothing of a plugin.
PLUGIN_COMMANDS = {"dashboard": ("dashboard", "nuvom-plugins-dashboard")}


class _Root(click.Group):
    """The root group: a missing command that a plugin of ours provides says which, and why
    it is missing (failed, disabled, not loaded, not installed)."""

    pm: Any = None  # the kernel's plugin manager, set by make_cli

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            name = args[0] if args else ""
            if name not in PLUGIN_COMMANDS:
                raise
            plugin, dist = PLUGIN_COMMANDS[name]
            why = self.pm.why_not_loaded(plugin, dist)
            raise click.UsageError(f"{exc.message} It comes with the plugin {plugin!r} "
                                   f"({dist}), which is {why}.", ctx) from None


def _command_tables(root: click.Group) -> list[tuple[click.Group, dict[str, click.Command]]]:
    """A copy of the command table of ``root`` and of every group under it (each once):
    what a plugin's ``nuvom_register_commands`` is undone to when it raises."""
    tables: dict[int, tuple[click.Group, dict[str, click.Command]]] = {}
    pending = [root]
    while pending:
        group = pending.pop()
        if id(group) not in tables:
            tables[id(group)] = (group, dict(group.commands))
            pending += [c for c in group.commands.values() if isinstance(c, click.Group)]
    return list(tables.values())


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)


class _LevelPrefix(logging.Formatter):
    """``warning: <message>``, as the CLI's own warnings read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _fail(exc: NuvomError) -> NoReturn:
    """Print ``exc`` as one ``Error:`` line and exit: status 2 for a configuration error
    (like a usage error: the input is wrong, fix it and rerun), 1 for anything else."""
    click.echo(f"Error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: load config and plugins once, then run the command.

    The working directory (where ``.nuvom_plugins.toml`` is read) is importable for every
    command, however ``nuvom`` was started.

    Exit status: what the command exits with (``discover tasks`` 1 when a file could not be
    scanned, ``plugin test`` 1 when a check failed, …); 2 for a usage error and for every
    configuration error (``ConfigError``, whether loading or a command found it), which
    says what to fix; 1 for any other Nuvom error.
    """
    from nuvom_kernel.cli import output
    from nuvom_kernel.kernel import get_kernel
    from nuvom_kernel.plugins import make_importable

    output.STANDALONE = True  # this process ends with the command
    args = list(sys.argv[1:] if argv is None else argv)
    make_importable(Path.cwd())  # the project folder: toml targets and tasks import from it
    # What loading says before logging is set up (a misspelt variable, a plugin that failed
    # to load or to add its commands) reads as discover's lines do; it printed as a bare
    # line without a level. Not where a program calling main() has set up logging.
    early = None if logging.getLogger().handlers else logging.StreamHandler()
    nuvom_log = logging.getLogger("nuvom")
    if early is not None:
        early.setFormatter(_LevelPrefix())
        nuvom_log.addHandler(early)
        # NUVOM_LOG_LEVEL=DEBUG shows loading's tracebacks too (a plugin that failed to
        # import): the settings that would say so are read by the loading itself
        if os.environ.get("NUVOM_LOG_LEVEL", "").strip().upper() == "DEBUG":
            nuvom_log.setLevel(logging.DEBUG)
    try:
        try:
            kernel = get_kernel()
        except NuvomError as exc:
            if args[:1] == ["--version"]:
                click.echo(VERSION_LINE)
                sys.exit(0)
            _fail(exc)
        try:
            cli = make_cli(kernel)
        except NuvomError as exc:
            _fail(exc)
    except KeyboardInterrupt:  # Ctrl-C while plugins load: as click's own "Aborted!" does
        click.echo("Aborted! (interrupted while loading plugins, before the command ran)",
                   err=True)
        sys.exit(1)
    finally:
        if early is not None:
            nuvom_log.removeHandler(early)
            nuvom_log.setLevel(logging.NOTSET)
    _setup_logging(kernel.settings.log_level)
    # Standalone mode: click exits with each command's status (``ctx.exit(1)``,
    # ``Exit(1)``), usage errors with 2, and prints ClickExceptions. Not standalone, it
    # returned the status instead, which was dropped: `discover tasks` exited 0 on errors.
    # A NuvomError is no click exception: it passes through to here either way.
    try:
        cli.main(args=args, prog_name="nuvom", obj=kernel, standalone_mode=True)
    except NuvomError as exc:
        _fail(exc)
    except Exception as exc:  # a plugin's own error: its traceback, then who raised it
        from nuvom_kernel.plugin_sources import plugin_behind

        behind = plugin_behind(kernel.pm, exc)
        if behind is None:
            raise
        name, where = behind
        traceback.print_exc()
        click.echo(f"Error: plugin {name!r} raised {type(exc).__name__}: {exc} (at {where}). "
                   f"Check its settings ([plugins.{name}] in .nuvom_plugins.toml, or "
                   f"NUVOM_PLUGINS__{name.upper()}__<KEY>), or report it to its authors; "
                   f"`nuvom plugin list` shows which distribution it comes from.", err=True)
        sys.exit(1)
