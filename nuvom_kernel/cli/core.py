"""Internal plugin: ``nuvom config``, ``nuvom plugin list`` and ``nuvom runworker``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import attrs
import click

from nuvom_kernel import hookimpl
from nuvom_kernel.call_checks import check_queue
from nuvom_kernel.cli.output import Seconds, print_table, queue_typo
from nuvom_kernel.config import MAX_BATCH_SIZE, MAX_WORKERS, Settings
from nuvom_kernel.values import parse_size

log = logging.getLogger("nuvom.worker")


@hookimpl
def nuvom_register_commands(cli: click.Group) -> None:
    cli.add_command(config_cmd)
    cli.add_command(plugin_group)
    cli.add_command(runworker)


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


@click.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_cmd(as_json: bool) -> None:
    """Show each effective setting, its environment variable and where it came from.

    Plugin settings follow: every key set in a [plugins.<name>] table or a
    NUVOM_PLUGINS__<NAME>__<KEY> variable, and every key a plugin declares (source
    "default" when unset). Passwords in URLs and DSNs are shown as ***.
    """
    config = _kernel().config
    rows = []
    for field in attrs.fields(Settings):
        value = getattr(config.settings, field.name)
        rows.append({"setting": field.name, "value": None if value is None else str(value),
                     "env": field.metadata["env"], "source": config.sources[field.name]})
    plugin_rows = [{"plugin": r.plugin, "key": r.key,
                    "value": None if r.value is None else str(r.value), "env": r.env,
                    "source": r.source} for r in config.plugin_setting_rows()]
    if as_json:
        click.echo(json.dumps({"file": str(config.path) if config.path else None,
                               "settings": rows, "plugins": plugin_rows}, indent=2))
        return
    click.echo(f"config file: {config.path or '(none: .nuvom_plugins.toml not found)'}")
    print_table([{**row, "value": _as_entered(row["setting"], row["value"])} for row in rows],
                ["setting", "value", "env", "source"])
    if plugin_rows:
        click.echo("\nplugin settings ([plugins.<name>] tables, NUVOM_PLUGINS__<NAME>__<KEY>):")
        print_table(plugin_rows, ["plugin", "key", "value", "env", "source"])


def _as_entered(setting: str, value: str | None) -> str | None:
    """The memory limit in the unit it is entered in (``512MB``, a bare number being MB):
    the table showed ``536870912``, bytes, for ``--max-memory-per-child 512``."""
    if setting != "max_memory_per_child" or value is None:
        return value
    size = int(value)
    return f"{size // 2**20}MB" if size % 2**20 == 0 else f"{size} bytes"


@click.group(name="plugin")
def plugin_group() -> None:
    """Inspect installed plugins."""


@plugin_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="Include the kernel's internal plugins.")
def plugin_list(as_json: bool, show_all: bool) -> None:
    """List plugins: name, distribution, version, what they provide, where they came from.

    A plugin that failed to load (its import, or a registration, settings or configure hook
    raised) is listed as failed, and why is printed after the table.
    """
    kernel = _kernel()
    rows = []
    for info in kernel.pm.plugin_infos():
        if info.source == "internal" and not show_all and info.failure is None:
            continue
        rows.append({
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "provides": {k: list(v) for k, v in info.provides.items()},
            "hooks": list(info.hooks),
            "source": info.source,
            "failure": info.failure,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        notes = kernel.pm.loading_notes().strip()  # autoload off, disabled plugins
        click.echo("No plugins loaded." + (f" {notes}" if notes else
                   " Install the built-in backends from a clone of Nuvom: pip install "
                   "./nuvom_plugins ./nuvom_plugins_sqlite"))
        return
    table = [{**r, "provides": "FAILED (disabled: see below)" if r["failure"] else
              "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items())
              or "hooks only"} for r in rows]
    print_table(table, ["name", "distribution", "version", "provides", "source"])
    for row in rows:
        if row["failure"]:
            click.echo(f"disabled: {row['name']}: {row['failure']}", err=True)


class _Size(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5 only
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(f"{value!r} {exc}", param, ctx)


@click.command()
@click.option("--workers", "-w", type=click.IntRange(min=1, max=MAX_WORKERS), default=None,
              help="Jobs at once: threads, children or asyncio tasks (NUVOM_MAX_WORKERS).")
@click.option("--queue", "-q", "queues", multiple=True,
              help="Serve only this named queue (repeatable, or comma-separated: "
                   "--queue a,b; default: all).")
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH_SIZE),
              default=None,
              help="Most jobs leased at once (default: NUVOM_BATCH_SIZE).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR",
                                                "CRITICAL"], case_sensitive=False),
              default=None)
@click.option("--grace-period", type=Seconds(zero_ok=True), default=None,
              help="Seconds the first SIGINT/SIGTERM waits for running jobs.")
@click.option("--pool", type=click.Choice(["thread", "process", "asyncio"]), default=None,
              help="What runs the functions (default: NUVOM_POOL, thread).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None,
              help="Process pool: replace a child after N jobs.")
@click.option("--max-memory-per-child", type=_Size(), default=None, metavar="SIZE",
              help="Process pool: RSS limit per child, e.g. 512MB or 2GB (bare number: MB).")
@click.option("--max-child-age", type=Seconds(zero_ok=False), default=None,
              metavar="SECS", help="Process pool: replace a child once it is this old.")
@click.option("--no-scheduler", is_flag=True,
              help="Do not fire task schedules from this worker (others still do).")
def runworker(workers: int | None, queues: tuple[str, ...], batch_size: int | None,
              log_level: str | None, grace_period: float | None, pool: str | None,
              max_tasks_per_child: int | None, max_memory_per_child: int | None,
              max_child_age: float | None, no_scheduler: bool) -> None:
    """Run a worker pool until SIGINT/SIGTERM (first drains, second stops at once)."""
    from nuvom_kernel.worker import Worker

    if log_level:
        logging.getLogger().setLevel(log_level.upper())
    if "" not in sys.path:  # the project directory holds the task modules
        sys.path.insert(0, "")
    kernel = _kernel()
    queues = _queue_names(queues)
    _warn_unknown_queues(kernel, queues)
    flags = {"pool": pool, "max_tasks_per_child": max_tasks_per_child,
             "max_memory_per_child": max_memory_per_child, "max_child_age_secs": max_child_age}
    overrides = {key: value for key, value in flags.items() if value is not None}
    if overrides:  # flags beat the file and the environment, for this worker only
        config = kernel.config
        kernel.config = attrs.evolve(
            config, settings=attrs.evolve(config.settings, **overrides),
            sources={**config.sources, **dict.fromkeys(overrides, "command line")})
    if kernel.queue.capabilities.in_process:
        log.warning("queue backend %r keeps its jobs in this process only: this worker runs "
                    "what its own tasks and schedules enqueue, never a job that another "
                    "process (a .delay(), nuvom enqueue) sends; select sqlite (the default), "
                    "file, redis or postgres for that", kernel.queue.name)
    if kernel.results.capabilities.in_process:
        log.warning("result backend %r keeps its records in this process only: no other "
                    "process (a .get(), nuvom inspect job, nuvom status) sees the outcomes "
                    "this worker records; select sqlite (the default), file, redis or "
                    "postgres for that", kernel.results.name)
    worker = Worker(kernel, workers=workers, queues=queues or None, batch_size=batch_size,
                    grace_period_secs=grace_period, scheduler=not no_scheduler, discover=True)
    # What the worker's handlers give back when run() returns: a signal after the stop
    # changes nothing, its status stands (a second Ctrl-C just after "stopped" killed the
    # process by SIGINT, -2, where the stop had decided 0). Set just before run(), whose
    # first step installs the worker's own handlers.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    code = worker.run()
    _end_within(EXIT_SECS, code)
    sys.exit(code)


def _queue_names(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--queue`` values split at commas (Celery's ``-Q a,b``) and checked as ``@task``
    checks them: ``a,b`` served one queue literally named so, and a name no store holds
    (a lone surrogate from undecodable bytes) failed every claim, for ever."""
    names = tuple(name for value in values for name in value.split(","))
    for name in names:
        try:
            check_queue(name, "--queue")
        except ValueError as exc:
            raise click.BadParameter(str(exc).removeprefix("--queue: "),
                                     param_hint="--queue") from None
    return names


def _warn_unknown_queues(kernel: Any, queues: tuple[str, ...]) -> None:
    """Warn about a ``--queue`` name close to a known one (``defualt``): a worker serving it
    sat idle without a word while the jobs waited in the queue meant. Names with no close
    known one are left alone: a queue only producers outside this project use is no typo."""
    for name in queues:
        if hint := queue_typo(kernel, name):
            log.warning("--queue %r: no task of the manifest routes jobs to it and no job "
                        "waits in it%s; this worker serves it all the same", name, hint)


#: How long the process may take to end once its worker stopped.
EXIT_SECS = 5.0
_exit_bounded = False


def _end_within(secs: float, code: int) -> None:
    """End the process ``secs`` after Python begins its exit, if the exit still waits then.

    Why: Python's exit waits for every thread of ``concurrent.futures`` executors to finish
    its call, and a task that awaited ``asyncio.to_thread`` (or ``run_in_executor``) and
    was timed out or abandoned leaves such a call running: the worker said "stopped" and
    the process lived on, through any number of signals, until the call returned. Armed at
    the start of the exit (a threading exit hook, registered after the executors' own, so
    it runs before theirs blocks), never while the program goes on (a ``CliRunner``).
    """
    import importlib
    import os

    # the executors' exit hook registered first, so that this one runs before it
    importlib.import_module("concurrent.futures.thread")

    def end_now() -> None:
        busy = [t.name for t in threading.enumerate()
                if t not in (threading.main_thread(), threading.current_thread())]
        log.warning("the process was still exiting %g s after its worker stopped, waiting "
                    "for threads that tasks started (%s): an asyncio.to_thread or "
                    "run_in_executor call that was timed out or abandoned? Exiting without "
                    "them", secs, ", ".join(busy[:5]) or "none left")
        logging.shutdown()
        os._exit(code)

    def arm() -> None:
        timer = threading.Timer(secs, end_now)
        timer.daemon = True
        timer.start()

    global _exit_bounded
    if not _exit_bounded:  # once per process (a program that runs several workers)
        _exit_bounded = True
        threading._register_atexit(arm)  # type: ignore[attr-defined]
