"""Plain aligned tables for the CLI (the kernel keeps its dependencies to click), and the
plumbing its command modules share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import click

from nuvom_kernel.values import seconds


def printable(value: Any) -> str:
    """``str(value)`` that any terminal encoding can print: a job's data may hold a lone
    surrogate (a file name decoded with ``surrogateescape``), which a UTF-8 stdout refuses
    with a traceback; it is shown backslash-escaped (``\\udcff``) instead."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


#: Control characters as their escapes: a tab or newline in a job id or task name broke a
#: table's columns, and an escape sequence (``\x1b[...``) in one reached the terminal.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160))}


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else printable(value).translate(_CONTROLS)

    widths = {c: max([len(c), *(len(cell(r.get(c))) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(cell(row.get(c)).ljust(widths[c]) for c in columns).rstrip())


def stored_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A job or workflow id argument that a store could hold: one with a NUL or a lone
    surrogate (undecodable bytes on the command line) was refused when enqueued, and asking
    a backend for it ended in a ``UnicodeEncodeError`` traceback on most of them."""
    from nuvom_kernel.values import is_text

    if not is_text(value):
        raise click.BadParameter(
            f"{printable(repr(value))} holds a NUL or undecodable bytes, which no id does; "
            "check the id (copy it from `nuvom history recent` or the dashboard)")
    return value


class JobGroup(click.Group):
    """A group whose ``job`` command takes an id: ``nuvom cancel <id>`` (Celery's and RQ's
    shape) was "No such command '<id>'", with no word of ``job``."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if not args or "job" not in self.commands or args[0].startswith("-"):
                raise
            from nuvom_kernel.hints import did_you_mean

            hint = did_you_mean(args[0], self.commands, repr).strip() or (
                f"To {self.name} a job by its id: nuvom {self.name} job {args[0]}")
            raise click.UsageError(f"{exc.message} {hint}", ctx) from None


def subgroup(cli: click.Group, name: str, help_text: str) -> click.Group:
    """The root's subgroup ``name``, created if no plugin made it yet (others may extend)."""
    existing = cli.commands.get(name)
    if isinstance(existing, click.Group):
        return existing
    group = click.Group(name=name, help=help_text)
    cli.add_command(group)
    return group


def relative(epoch: float | None, now: float) -> str | None:
    """``in 55 s`` / ``12 s ago`` / ``in 5 min``: how far a due time or a lease's deadline
    is from ``now`` (``None`` for none), as ``nuvom list jobs`` and the dashboard say it."""
    if epoch is None:
        return None
    secs = epoch - now
    span = (f"{abs(secs):.0f} s" if abs(secs) < 120 else
            f"{abs(secs) / 60:.0f} min" if abs(secs) < 7200 else f"{abs(secs) / 3600:.1f} h")
    return f"in {span}" if secs >= 0 else f"{span} ago"


def local_time(epoch: float | None) -> str | None:
    """An epoch as this machine's local time to the second; a value no calendar holds (a
    hand-edited ``inf``, ``nan``, an epoch in milliseconds) as stored, not a traceback."""
    if epoch is None:
        return None
    try:
        return dt.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, ValueError, OSError, TypeError):  # (a string, hand-written)
        return repr(epoch)


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5 only
    """Seconds, checked as the settings check them: click's FloatRange let ``nan`` and
    ``inf`` through (the first signal then waited "up to nan s")."""

    name = "seconds"

    def __init__(self, *, zero_ok: bool) -> None:
        self.parse = seconds(zero_ok=zero_ok)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float | None:
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(f"{value!r} {exc}", param, ctx)


#: Whether this process is the ``nuvom`` command (:func:`nuvom_kernel.cli.main` sets it), so
#: an in-process store ends with the command. A program or test running the commands in its
#: own process (click's ``CliRunner``) shares its store with them.
STANDALONE = False


def refuse_in_process(kernel: Any, what: str, *, waits: bool = False) -> None:
    """Refuse to enqueue ``what`` into a queue that ends with this command (capability
    ``in_process``: memory), or to wait for an outcome (``waits``) where the records do.
    Why: with the memory queue, `nuvom enqueue` said "enqueued", the job vanished with the
    process, and ``--wait`` added that `nuvom inspect job` would show it later."""
    if not STANDALONE:
        return
    shared = ("select a backend that processes share: sqlite (the default), file, redis or "
              "postgres")
    if kernel.queue.capabilities.in_process:
        raise click.ClickException(
            f"queue backend {kernel.queue.name!r} keeps its jobs in this process only, so "
            f"{what} would end with this command, unseen by any worker. Enqueue from the "
            f"program that runs the worker (tests, a single-process app), or {shared} "
            "(NUVOM_QUEUE_BACKEND, [settings] queue_backend).")
    if waits and kernel.results.capabilities.in_process:
        raise click.ClickException(
            f"result backend {kernel.results.name!r} keeps its records in this process only, "
            "so --wait would never see the worker's outcome: leave --wait out, or "
            f"{shared} (NUVOM_RESULT_BACKEND, [settings] result_backend).")


def queue_typo(kernel: Any, name: str) -> str:
    """`` (did you mean 'default'?)`` for a queue ``name`` that no task of the manifest
    routes to and no job waits in, but is close to one that is; else nothing. Why: a
    misspelt ``--queue`` (``defualt``) was served, or purged, without a word."""
    from nuvom_kernel.discovery import read_manifest
    from nuvom_kernel.hints import did_you_mean

    try:
        manifest = read_manifest(kernel.data_dir) or {}
    except ValueError:
        manifest = {}
    known = {"default"} | {str((entry.get("options") or {}).get("queue", "default"))
                           for entry in manifest.get("tasks", [])}  # (options may be null)
    if name in known:
        return ""
    try:
        known |= set(kernel.queue.stats().queues) - {"*"}  # (the store asked only now)
    except Exception:  # a hint must never stop the command: the store speaks for itself
        return ""
    return "" if name in known else did_you_mean(name, known, repr)


#: How many of the newest records a hint for ``--task`` reads for the task names in use.
HINT_RECORDS = 500


def task_typo(kernel: Any, task: str) -> str:
    """A hint where ``--task`` names no task the manifest or the newest records know: it
    takes a task's registered name, exactly (a misspelt one matched nothing, silently)."""
    from nuvom_kernel.discovery import read_manifest
    from nuvom_kernel.hints import did_you_mean

    try:
        known = {r.task for r in kernel.results.query(limit=HINT_RECORDS)}
    except Exception:  # a hint must never stop the command: the store speaks for itself
        return ""
    try:
        known.update(t["name"] for t in (read_manifest(kernel.data_dir) or {}).get("tasks", []))
    except ValueError:
        pass  # an unusable manifest: the records alone
    if task in known or not known:
        return ""
    return (f" No task named {task!r} is in the manifest or the newest records"
            f"{did_you_mean(task, known, repr)}; --task takes a task's registered name.")
