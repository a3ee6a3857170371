"""``nuvom dashboard [--host 127.0.0.1] [--port 8181] [--token T] [--read-only]``.

Starlette and uvicorn are imported when the command runs, not when ``nuvom`` starts: every
other command stays as quick as without this plugin.

Why it starts while the store is down: a dashboard is what an operator opens *during* an
outage, and it is often started by a supervisor that does not wait for the store. Its pages
already answer 503 with the backend's own message while the store cannot be read and reload
until it can (the kernel builds a backend on first use, and tries again on the next use when
that failed), so refusing to start only turned an outage into a dashboard that stays down
after the store is back. It still refuses to start on what no waiting mends: a setting to
change, a backend no installed plugin provides (:data:`FATAL`).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import click

from nuvom_kernel.errors import (
    BackendNotFoundError,
    ConfigError,
    DuplicateBackendError,
    NuvomError,
    PluginConfigError,
    PluginLoadError,
)
from nuvom_plugins_dashboard.settings import parse_allowed_hosts

__all__ = ["FATAL", "dashboard", "is_loopback", "listen", "store_problem"]

#: Errors building a backend that stop ``nuvom dashboard`` as they stop every command: the
#: configuration or the installation must change, so serving 503 pages would wait forever.
FATAL: tuple[type[NuvomError], ...] = (ConfigError, BackendNotFoundError,
                                       DuplicateBackendError, PluginLoadError)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, 127.0.0.0/8,
    ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


def _hosts_note(token: str | None, allowed_hosts: frozenset[str]) -> str:
    """What the start line says about the host names answered without a token."""
    if token or not allowed_hosts:
        return ""
    return ", also answering to host " + ", ".join(sorted(allowed_hosts))


def _kernel() -> Any:
    return click.get_current_context().find_root().obj


#: The job id :func:`store_problem` reads: one no job has.
_PROBE_ID = "nuvom-dashboard-start-probe"


def store_problem(kernel: Any) -> str | None:
    """Why the queue or result backend cannot be built now (the store is down, refuses the
    password), in the words its 503 pages use; ``None`` when both are built.

    Building them here, not on the first request, keeps a start line that says the store is
    unreachable, and finds a wrong setting before the port is served. Each is read once
    too (an id no job has): a store that opens its file at the first read (SQLite) was
    built without a word, and its first page answered 503.

    :raises NuvomError: one of :data:`FATAL`.
    """
    found: list[str] = []
    for backend in ("queue", "results"):
        try:
            built = getattr(kernel, backend)
            if backend == "queue":
                built.peek_state(_PROBE_ID)
            else:
                built.get(_PROBE_ID)
        except FATAL:
            raise
        except Exception as exc:  # a plugin's own error too: its pages say the same
            text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
            said = f"{type(exc).__name__}: {text or 'no message'}"
            if said not in found:  # one store behind both backends: say it once
                found.append(said)
    return "; ".join(found) or None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``--port 0``: a free port, printed on start).

    :raises click.ClickException: the address is in use or cannot be bound, saying which.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        # proto must say TCP: asyncio disables Nagle only on sockets that do (proto 0 cost
        # ~40 ms per keep-alive request, Nagle meeting delayed ACKs)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}. Pick "
            "another --port (or --host).") from None
    return sock


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any but loopback requires a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8181, show_default=True,
              help="Port to bind (0: any free port).")
@click.option("--token", default=None,
              help="Secret every client must present (default: "
                   "NUVOM_PLUGINS__DASHBOARD__TOKEN).")
@click.option("--read-only", "read_only", is_flag=True,
              help="Hide every action (retry, cancel) and refuse them.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, help="uvicorn's access and error log.")
def dashboard(host: str, port: int, token: str | None, read_only: bool, log_level: str
              ) -> None:
    """Serve the web dashboard: queues, jobs, workers; retry and cancel."""
    kernel = _kernel()
    settings = kernel.config.plugin_settings("dashboard")
    token = token or settings.get("token") or None
    # Checked before the port is bound, so a typo stops it saying which setting; a
    # configuration error, like any other: `nuvom` exits 2 (docs/configuration.md).
    allowed_hosts = parse_allowed_hosts(settings.get("allowed_hosts"))
    if "*" in allowed_hosts and token is None:  # create_app's escape hatch, not the server's
        raise PluginConfigError(
            "[plugins.dashboard] allowed_hosts (NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS) = * "
            "would answer any Host without a token, which lets any web page reach the "
            "dashboard through DNS rebinding: list the names your reverse proxy forwards, "
            "or set a token.")
    if token is None and not is_loopback(host):
        raise click.ClickException(
            f"refusing to serve the dashboard on {host} without a token: anyone who can "
            "reach that address could read job arguments and retry or cancel jobs. Pass "
            "--token SECRET or set NUVOM_PLUGINS__DASHBOARD__TOKEN, or bind --host "
            "127.0.0.1.")
    import uvicorn

    from nuvom_plugins_dashboard.app import create_app

    # Without a token it answers only to loopback names and allowed_hosts (DNS rebinding:
    # see nuvom_plugins_dashboard.security); with one, the token decides.
    app = create_app(kernel, token=token, read_only=read_only, allowed_hosts=allowed_hosts)
    problem = store_problem(kernel)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"nuvom dashboard on http://{shown}:{bound}/ (queue backend "
               f"{kernel.settings.queue_backend}, result backend "
               f"{kernel.settings.result_backend}"
               f"{', read-only' if read_only else ''}{', token required' if token else ''}"
               f"{_hosts_note(token, allowed_hosts)}); "
               "Ctrl+C stops it", err=False)
    if problem is not None:
        click.echo("warning: the job store cannot be read now; until it can, every page "
                   "answers 503 saying why, and open pages recover with the store by "
                   f"themselves: {problem}", err=True)
    try:  # (Ctrl+C right after the start line, before uvicorn serves, stops it cleanly too)
        uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off")
                       ).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on: a clean stop
        pass
    click.echo("nuvom dashboard stopped")
