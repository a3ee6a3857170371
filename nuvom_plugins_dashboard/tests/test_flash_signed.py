"""The report of an action (the ``nuvom_flash`` cookie) is shown only when this dashboard
wrote it. Cookies are not kept apart by port, so a page on another port of the same host
set ``nuvom_flash`` and the dashboard showed its text as its own status line. Now the cookie
carries an HMAC under a key of the dashboard's process; any other value is dropped unread.

In a real browser (Debian's chromium, Playwright) against a real ``nuvom dashboard``, with a
sibling web server on another port of 127.0.0.1 that sets the cookie; and over TestClient
for the forms a browser would not send (a forged MAC, non-ASCII text)."""

from __future__ import annotations

import re
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from dash_browser import browser_page as browser_page  # a fixture
from dash_browser import sibling_site
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, record
from dash_procs import Dashboard
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel

PLANTED = "Security notice: the job store was breached, sign in again at evil.example"


def _shown(html: str) -> str | None:
    match = re.search(r'<p class="flash" role="status">([^<]*)</p>', html)
    return match.group(1) if match else None


def _sibling(cookie: str) -> tuple[ThreadingHTTPServer, str]:
    """A page of another program that sets ``nuvom_flash``."""
    return sibling_site(f"nuvom_flash={cookie}; Path=/; SameSite=Lax",
                        b"<!doctype html><title>another program</title><p>hello")


def test_a_page_on_another_port_cannot_plant_a_status_line(
        project: Path, kernel: Kernel, browser_page: object) -> None:
    from playwright.sync_api import expect

    kernel.results.put(record("mine"))
    dashboard = Dashboard(project)
    server, sibling = _sibling("Security%20notice%3A%20the%20job%20store%20was%20breached")
    page = browser_page
    try:
        page.goto(sibling)  # type: ignore[attr-defined]  # the user visits the other page
        cookies = page.context.cookies(dashboard.url)  # type: ignore[attr-defined]
        assert any(c["name"] == "nuvom_flash" for c in cookies), "the browser kept it"
        page.goto(dashboard.url + "jobs")  # type: ignore[attr-defined]
        expect(page.locator("h1")).to_have_text("Jobs")  # type: ignore[attr-defined]
        assert page.locator("p.flash").count() == 0  # type: ignore[attr-defined]
        assert "Security notice" not in page.content()  # type: ignore[attr-defined]
        cookies = page.context.cookies(dashboard.url)  # type: ignore[attr-defined]
        assert not any(c["name"] == "nuvom_flash" for c in cookies), "dropped, unread"

        # The dashboard's own report still shows, once, in the same browser.
        page.goto(dashboard.url + "actions/retry/mine")  # type: ignore[attr-defined]
        page.click("button:has-text('Retry job')")  # type: ignore[attr-defined]
        expect(page.locator("p.flash")).to_have_text(  # type: ignore[attr-defined]
            "job mine (tasks.boom) queued again on 'default' (run 2)")
        page.reload()  # type: ignore[attr-defined]
        expect(page.locator("h1")).to_be_visible()  # type: ignore[attr-defined]
        assert page.locator("p.flash").count() == 0  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        dashboard.stop()


@pytest.mark.parametrize("value", [
    "Planted",  # the old format: the text alone
    "0" * 64 + ".Planted",  # the new format with a MAC it could not compute
    "\u00e9t\u00e9.Planted",  # not even ASCII before the dot
])
def test_a_cookie_the_app_did_not_sign_is_dropped_unread(client: TestClient,
                                                         value: str) -> None:
    # raw bytes: a header a browser or proxy passes on need not be ASCII
    page = client.get("/jobs", headers={b"cookie": f"nuvom_flash={value}".encode("latin-1")})
    assert page.status_code == 200, page.text
    assert _shown(page.text) is None
    assert "Planted" not in page.text
    assert 'nuvom_flash=""' in page.headers.get("set-cookie", "")  # deleted


def test_a_flash_of_another_app_is_not_shown(kernel: Kernel, make_client: object) -> None:
    """Each app signs with a key of its own, so a report signed by another (an earlier
    process of the dashboard, another dashboard) is dropped: it is one sentence shown
    once, right after the action's redirect, and the page shows the job's state anyway."""
    kernel.results.put(record("j1"))
    first, second = make_client(), make_client()  # type: ignore[operator]
    confirm = first.get("/actions/retry/j1")
    done = first.post("/actions/retry/j1", data={"csrf": csrf_of(confirm.text), "run": "1"})
    assert done.status_code == 303, done.text
    signed = first.cookies.get("nuvom_flash")
    assert signed
    second.cookies.set("nuvom_flash", signed)
    assert _shown(second.get("/jobs/j1").text) is None
    assert _shown(first.get(done.headers["location"]).text) == (
        "job j1 (tasks.boom) queued again on &#39;default&#39; (run 2)")
