"""``nuvom dashboard`` as a user runs it: a real process, a real socket, real HTTP."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from dash_fixtures import project as project  # a fixture
from dash_procs import Dashboard

from nuvom_plugins_dashboard.cli import is_loopback


def _get(url: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    from dash_procs import _env

    return subprocess.run([sys.executable, "-m", "nuvom_kernel", *args], cwd=project,
                          env=_env(**env), capture_output=True, text=True, timeout=60,
                          check=False)


def test_it_serves_the_overview_on_loopback_by_default(project: Path) -> None:
    dashboard = Dashboard(project)
    try:
        assert dashboard.url.startswith("http://127.0.0.1:")
        status, html = _get(dashboard.url)
        assert status == 200 and "<h1>Queues</h1>" in html
        status, js = _get(dashboard.url + "static/htmx.min.js")
        assert status == 200 and "htmx" in js
    finally:
        out = dashboard.stop()
    assert dashboard.proc.returncode == 0, out


def test_a_sqlite_store_that_cannot_open_is_warned_about_at_start(project: Path) -> None:
    """observability.md promises the start line's warning. SQLite opens its file at the
    first read, so it was built without a word and only the pages answered 503; a store
    lost while serving (its folder replaced by a file) answered a bare 500."""
    (project / "notadir").write_text("")
    dashboard = Dashboard(project, NUVOM_DATA_DIR=str(project / "notadir"))
    try:
        from dash_procs import wait_until

        said = f"{project / 'notadir'} is a file, not a folder"
        start = wait_until(lambda: "warning: the job store cannot be read now" in
                           (text := "".join(dashboard.lines)) and text,
                           30, "the dashboard's warning that the store cannot be read")
        assert said in start, start
        status, html = _get(dashboard.url + "jobs")
        assert status == 503 and said in html, (status, html)
    finally:
        out = dashboard.stop()
    assert dashboard.proc.returncode == 0, out


def test_a_plugins_own_error_at_start_is_warned_about(project: Path) -> None:
    """A plugin's backend whose read raises its own error (not a store error of the
    kernel's) is said on the start line as the store's, in the words its pages use."""
    (project / "my_raising.py").write_text(
        "from nuvom_plugins.memory import MemoryJobQueue\n\n\n"
        "class RaisingQueue(MemoryJobQueue):\n    name = \"raising\"\n\n"
        "    def peek_state(self, job_id):\n        raise RuntimeError(\"socket closed\")\n")
    (project / ".nuvom_plugins.toml").write_text(
        '[settings]\nqueue_backend = "raising"\n\n'
        '[plugins]\nqueue_backend = ["my_raising:RaisingQueue"]\n')
    dashboard = Dashboard(project, NUVOM_QUEUE_BACKEND="raising")
    try:
        from dash_procs import wait_until

        start = wait_until(lambda: "warning: the job store cannot be read now" in
                           (text := "".join(dashboard.lines)) and text,
                           30, "the dashboard's warning that the store cannot be read")
        assert "RuntimeError: socket closed" in start, start
        status, _ = _get(dashboard.url)  # serving: a stop now is not one during start-up
        assert status in (200, 503), status
    finally:
        out = dashboard.stop()
    assert dashboard.proc.returncode == 0, out


def test_another_address_without_a_token_refuses_to_start_and_says_why(project: Path
                                                                       ) -> None:
    result = _run(project, "dashboard", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in message
    assert "--token" in message and "NUVOM_PLUGINS__DASHBOARD__TOKEN" in message


def test_another_address_with_the_token_from_the_environment_demands_it(project: Path
                                                                        ) -> None:
    dashboard = Dashboard(project, "--host", "0.0.0.0",
                          NUVOM_PLUGINS__DASHBOARD__TOKEN="tok-123")
    try:
        assert "token required" in "".join(dashboard.lines)
        assert _get(dashboard.url + "jobs")[0] == 401
        assert _get(dashboard.url + "jobs", Authorization="Bearer tok-123")[0] == 200
    finally:
        dashboard.stop()
    shown = _run(project, "config", NUVOM_PLUGINS__DASHBOARD__TOKEN="tok-123").stdout
    assert "tok-123" not in shown  # nuvom config masks it


def test_without_a_token_it_answers_loopback_and_allowed_hosts_only(project: Path) -> None:
    """DNS rebinding: a foreign ``Host`` on the loopback socket is refused; a reverse
    proxy's name is listed in ``[plugins.dashboard] allowed_hosts``."""
    dashboard = Dashboard(project, NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS="dash.example.com")
    try:
        assert "also answering to host dash.example.com" in "".join(dashboard.lines)
        port = dashboard.url.rstrip("/").rsplit(":", 1)[1]
        status, body = _get(dashboard.url + "jobs", Host=f"rebind.attacker.example:{port}")
        assert status == 421 and "[plugins.dashboard] allowed_hosts" in body
        assert _get(dashboard.url + "jobs", Host="dash.example.com")[0] == 200
        assert _get(dashboard.url + "jobs", Host=f"localhost:{port}")[0] == 200
        assert _get(dashboard.url + "jobs")[0] == 200
    finally:
        out = dashboard.stop()
    assert dashboard.proc.returncode == 0, out
    typo = _run(project, "dashboard", "--port", "0",
                NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS="https://dash.example.com/")
    assert typo.returncode == 2, typo.stderr  # a configuration error, as everywhere (was 1)
    assert "NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS" in typo.stderr
    assert "'https://dash.example.com/' is not a host name" in typo.stderr
    anything = _run(project, "dashboard", "--port", "0",
                    NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS="*")
    assert anything.returncode == 2 and "DNS rebinding" in anything.stderr


def test_a_port_in_use_is_an_error_naming_it(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _run(project, "dashboard", "--port", str(port))
    assert result.returncode != 0
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in result.stderr


def test_a_form_rendered_before_a_restart_still_works_after_it(project: Path) -> None:
    """Nothing lives in the dashboard process: the CSRF token is this browser's cookie."""
    from dash_helpers import csrf_of, record

    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.models import JobStatus

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "sqlite"})
    try:
        kernel.results.put(record("j1"))
        first = Dashboard(project)
        try:
            with urllib.request.urlopen(first.url + "actions/retry/j1", timeout=10) as page:
                cookie = page.headers["set-cookie"].split(";", 1)[0]
                token = csrf_of(page.read().decode())
        finally:
            first.stop()
        second = Dashboard(project)
        try:
            form = urllib.parse.urlencode({"csrf": token, "run": "1"}).encode()
            request = urllib.request.Request(second.url + "actions/retry/j1", data=form,
                                             headers={"Cookie": cookie})
            with urllib.request.urlopen(request, timeout=10) as done:  # 303 to the job
                assert done.status == 200 and done.url == second.url + "jobs/j1"
        finally:
            second.stop()
        assert kernel.queue.peek_state("j1") is JobStatus.QUEUED
    finally:
        kernel.close()


def _raw_get(url: str, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """One GET of ``path`` exactly as written (no redirect followed, nothing re-encoded)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read().decode()
    finally:
        conn.close()


def test_the_token_link_redirects_to_the_path_as_sent(project: Path) -> None:
    """The redirect that drops ``?token=`` is built from the raw path: built from the
    decoded one, the link to job ``report%2F2026`` (``/jobs/report%252F2026``) landed on
    ``/jobs/report%2F2026``, the page of another job (``report/2026``)."""
    from dash_helpers import record

    from nuvom_kernel.kernel import Kernel

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "sqlite"})
    try:
        kernel.results.put_many([record("report%2F2026"), record("a/b")])
        dashboard = Dashboard(project, "--token", "T0k")
        try:
            status, headers, _ = _raw_get(dashboard.url, "/jobs/report%252F2026?token=T0k&x=1")
            assert status == 303 and headers["location"] == "/jobs/report%252F2026?x=1"
            cookie = headers["set-cookie"].split(";", 1)[0]
            status, _, html = _raw_get(dashboard.url, headers["location"], Cookie=cookie)
            assert status == 200 and "<h1>Job <code>report%2F2026</code></h1>" in html
            status, headers, _ = _raw_get(dashboard.url, "/jobs/a%2Fb?token=T0k")
            assert status == 303 and headers["location"] == "/jobs/a%2Fb"
        finally:
            dashboard.stop()
    finally:
        kernel.close()


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False),
    ("dashboard.internal", False)])
def test_only_loopback_addresses_go_without_a_token(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
