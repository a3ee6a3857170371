"""A plugin whose ``nuvom_worker_prepare`` fails stops ``nuvom runworker`` with a message that
names it and says how to run without it ("a bad plugin names the plugin"), not a traceback
through pluggy; the plugins that did prepare get their shutdown. The failure is real: the
plugin binds a port the test already holds."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers import run_nuvom, worker_starts_and_stops

NEEDS_PORT = '''\
import os
import socket

from nuvom_kernel import hookimpl


def _bind(port):
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


@hookimpl
def nuvom_worker_prepare(worker):
    _bind(int(os.environ["TEST_PORT"]))
'''

TIDY = '''\
import pathlib

from nuvom_kernel import hookimpl


@hookimpl
def nuvom_worker_prepare(worker):
    pathlib.Path("tidy.log").open("a").write("prepared\\n")


@hookimpl
def nuvom_worker_shutdown(worker):
    pathlib.Path("tidy.log").open("a").write("shut down\\n")
'''


def _project(root: Path) -> Path:
    (root / "needs_port.py").write_text(NEEDS_PORT)
    (root / "tidy.py").write_text(TIDY)
    # tidy is registered last, so pluggy calls it first: it has prepared when needs_port fails
    (root / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "memory"\nresult_backend = "memory"\n\n'
        '[plugins]\nhooks = ["needs_port", "tidy"]\n')
    return root


def test_a_failed_prepare_names_its_plugin_and_how_to_run_without_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        done = run_nuvom(["runworker", "--workers", "1"], project, timeout=60, TEST_PORT=port)
        assert done.returncode == 1, done.stderr
        assert "Error: plugin 'needs_port' failed to prepare the worker" in done.stderr, \
            done.stderr
        assert "Address already in use" in done.stderr
        assert "NUVOM_DISABLE_PLUGINS=needs_port" in done.stderr
        assert "Traceback" not in done.stderr, "a one-line error, not pluggy's traceback"
        assert (project / "tidy.log").read_text() == "prepared\nshut down\n"

        # The fix the message gives: the worker starts without the plugin.
        worker_starts_and_stops(project, {"TEST_PORT": port,
                                          "NUVOM_DISABLE_PLUGINS": "needs_port"})


OWN_QUEUE = '''\
from nuvom_kernel import hookimpl
from nuvom_plugins.memory.plugin import MemoryJobQueue


class PreparedQueue(MemoryJobQueue):
    name = "prepared_queue"


@hookimpl
def nuvom_register_queue_backends():
    return [PreparedQueue]


@hookimpl
def nuvom_worker_prepare(worker):
    raise RuntimeError("the queue's server is not reachable")
'''


def test_a_failed_prepare_of_the_backend_in_use_does_not_advise_disabling_it(
        tmp_path: Path) -> None:
    """Disabled, the plugin would take the queue backend along and the worker could not
    start either: the advice is to choose another backend."""
    (tmp_path / "own_queue.py").write_text(OWN_QUEUE)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "prepared_queue"\nresult_backend = "memory"\n\n'
        '[plugins]\nqueue_backend = ["own_queue"]\n')
    done = run_nuvom(["runworker", "--workers", "1"], tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "plugin 'own_queue' failed to prepare the worker" in done.stderr, done.stderr
    assert "NUVOM_DISABLE_PLUGINS" not in done.stderr, done.stderr
    assert ("it provides the queue backend in use, so it cannot be disabled: choose another "
            "with NUVOM_QUEUE_BACKEND=<name>") in done.stderr, done.stderr
