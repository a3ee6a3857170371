"""``nuvom dashboard`` started while its store is down: it serves the documented 503 pages
(the backend's own message, reloading) and recovers once the store answers, as an
operator expects of the page they open during an outage. It used to exit 1 at start
("cannot reach Redis …"), so a dashboard started by a supervisor before Redis stayed down
after Redis came back.

A real ``nuvom dashboard`` process over a throwaway ``redis-server`` of this test's own,
on a free port (never the machine's shared server): absent at start, then started."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dash_fixtures import project as project  # a fixture
from dash_procs import Dashboard, _env, wait_until

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_it_starts_during_an_outage_serves_503_and_recovers(project: Path) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    dashboard = Dashboard(project, NUVOM_QUEUE_BACKEND="redis", NUVOM_RESULT_BACKEND="redis",
                          NUVOM_PLUGINS__REDIS__URL=url)
    server: subprocess.Popen[bytes] | None = None
    try:
        # the warning follows the banner (stderr, after stdout's line): read until it came
        start = wait_until(lambda: "warning: the job store cannot be read now" in
                           (text := "".join(dashboard.lines)) and text,
                           30, "the dashboard's warning that the store is down")
        assert f"cannot reach Redis at {url} while connecting" in start
        for page in ("", "jobs", "queued", "workers"):
            status, html = _get(dashboard.url + page)
            assert status == 503, (page, html)
            assert "The job store cannot be read" in html and f"cannot reach Redis at {url}" \
                in html

        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(project)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status, html = wait_until(lambda: (got := _get(dashboard.url))[0] == 200 and got,
                                  30, "the overview once redis-server answers")
        assert "<h1>Queues</h1>" in html
        assert _get(dashboard.url + "jobs")[0] == 200
    finally:
        out = dashboard.stop()
        if server is not None:
            server.kill()
            server.wait(10)
    assert dashboard.proc.returncode == 0, out


def test_a_backend_no_plugin_provides_still_stops_it(project: Path) -> None:
    """What no waiting mends is not an outage: it stops as every command does."""
    done = subprocess.run([sys.executable, "-m", "nuvom_kernel", "dashboard", "--port", "0"],
                          cwd=project, env=_env(NUVOM_QUEUE_BACKEND="nosuch"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "no installed plugin provides the queue backend 'nosuch'" in done.stderr
    assert "nuvom dashboard on http" not in done.stdout
