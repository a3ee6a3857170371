"""``/workers`` from heartbeats: a real worker process appears, and leaves on a clean stop."""

from __future__ import annotations

from pathlib import Path

from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_procs import start_worker, stop, wait_until
from starlette.testclient import TestClient


def test_a_running_worker_is_listed_and_gone_after_it_stops(project: Path,
                                                            client: TestClient) -> None:
    worker = start_worker(project, "--queue", "emails", NUVOM_HEARTBEAT_SECS="0.2")
    try:
        row = wait_until(lambda: _row(client, f"<td class=\"num\">{worker.pid}</td>"), 30,
                         "the worker on /workers")
        assert "<td>emails</td>" in row and "<td class=\"num\">0/2</td>" in row
    finally:
        out = stop(worker)
    assert worker.returncode == 0, out
    html = client.get("/workers").text
    assert str(worker.pid) not in html and "No live worker" in html


def _row(client: TestClient, marker: str) -> str | None:
    html = client.get("/workers").text
    return next((row for row in html.split("<tr>") if marker in row), None)
