"""``Sec-Fetch-Site`` on a POST: only ``same-origin`` (the dashboard's own pages) may act.

A page on another port of the same host is the same *site*: it can plant the CSRF cookie
and post ``Origin: null`` (see ``test_browser_same_site.py``, the same in a real browser).
A client that sends no such header (curl, a script) meets the token and ``Origin`` checks
only, as before."""

from __future__ import annotations

from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus


def test_a_post_from_another_site_or_port_is_refused_with_a_matching_csrf_token(
        kernel: Kernel, client: TestClient) -> None:
    kernel.results.put(record("j1"))
    token = csrf_of(client.get("/actions/retry/j1").text)
    for site in ("same-site", "cross-site", "none"):
        response = client.post("/actions/retry/j1", data={"csrf": token, "run": "1"},
                               headers={"Origin": "null", "Sec-Fetch-Site": site})
        assert response.status_code == 403, response.text
        assert f"Sec-Fetch-Site: {site!r}" in response.text
        assert kernel.queue.peek_state("j1") is None
    done = client.post("/actions/retry/j1", data={"csrf": token, "run": "1"},
                       headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 303, done.text
    assert kernel.queue.peek_state("j1") is JobStatus.QUEUED
