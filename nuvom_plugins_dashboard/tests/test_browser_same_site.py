"""CSRF from a sibling port, in a real browser: Debian's chromium driven by Playwright.

Cookies are not kept apart by port, and pages on ``127.0.0.1:3000`` and
``127.0.0.1:8181`` are the same *site*: a page served by any other program on the
dashboard's host (a dev server, a notebook, anything with an XSS) can overwrite the
dashboard's ``nuvom_csrf`` cookie with a value of its choosing (a ``Set-Cookie`` from a
response replaces even an HttpOnly cookie) and post a form repeating that value. Its
``Referrer-Policy: no-referrer`` makes the browser send ``Origin: null``, which the
``Origin`` check let through (the dashboard's own forms send it too, for the same reason),
and the SameSite=Lax cookie is sent because the request is same-site. The job was retried.
The browser says where a request comes from in ``Sec-Fetch-Site``: the dashboard's own
forms are ``same-origin``; this one is ``same-site``, and is refused.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from pathlib import Path

from dash_browser import browser_page as browser_page  # a fixture
from dash_browser import sibling_site, skip_without_chromium
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import record
from dash_procs import Dashboard

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus

skip_without_chromium()

#: The value the sibling page plants in the dashboard's CSRF cookie and repeats in its form.
PLANTED = "planted-by-another-port"


def _sibling(target: str) -> tuple[ThreadingHTTPServer, str]:
    """A page that plants the CSRF cookie and posts the dashboard's retry form at once (no
    ``run`` field: the form's optional one)."""
    page = (f'<!doctype html><meta name="referrer" content="no-referrer">'
            f'<form id="f" method="post" action="{target}">'
            f'<input name="csrf" value="{PLANTED}"></form>'
            "<script>document.getElementById('f').submit()</script>").encode()
    return sibling_site(f"nuvom_csrf={PLANTED}; Path=/; SameSite=Lax", page)


def test_a_page_on_another_port_of_the_host_cannot_post_an_action(
        project: Path, kernel: Kernel, browser_page: object) -> None:
    from playwright.sync_api import expect

    kernel.results.put(record("victim"))
    kernel.results.put(record("mine"))
    dashboard = Dashboard(project)
    server, sibling = _sibling(dashboard.url + "actions/retry/victim")
    page = browser_page
    try:
        page.goto(dashboard.url)  # type: ignore[attr-defined]  # the user has the dashboard open
        page.goto(sibling)  # type: ignore[attr-defined]  # and visits the other page
        expect(page.locator("body")).to_contain_text(  # type: ignore[attr-defined]
            "403: cross-site request refused")
        stored = kernel.results.get("victim")
        assert stored is not None and (stored.status, stored.run) == (JobStatus.FAILED, 1)
        assert kernel.queue.peek_state("victim") is None

        # The dashboard's own form still works in the same browser (with a fresh cookie:
        # the planted one is not what the dashboard hands out, but it is this browser's now).
        page.goto(dashboard.url + "actions/retry/mine")  # type: ignore[attr-defined]
        page.click("button:has-text('Retry job')")  # type: ignore[attr-defined]
        expect(page.locator("p.flash")).to_contain_text(  # type: ignore[attr-defined]
            "job mine (tasks.boom) queued again on 'default' (run 2)")
    finally:
        server.shutdown()
        server.server_close()
        dashboard.stop()
