"""``create_app()`` mounted under a path of another application (the docs: "behind your own
authentication, mount the ASGI app yourself"): every link, asset, form and redirect stays
under the mount, and the host application's own routes are untouched."""

from __future__ import annotations

import html
import re
import time

from dash_fixtures import BASE_URL
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, form_of, record
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus
from nuvom_plugins_dashboard import create_app

PREFIX = "/admin/nuvom"


def _host_app(dashboard: object) -> Starlette:
    def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("my app")

    return Starlette(routes=[Route("/", home), Mount(PREFIX, app=dashboard)])  # type: ignore


def _urls(page: str) -> dict[str, list[str]]:
    """Every URL a page links to, loads or submits to, by attribute."""
    found: dict[str, list[str]] = {}
    for attr, url in re.findall(r'\b(href|src|action|hx-get)="([^"]*)"', page):
        found.setdefault(attr, []).append(html.unescape(url))
    return found


def test_every_link_asset_form_and_redirect_stays_under_the_mount(kernel: Kernel) -> None:
    now = time.time()
    kernel.results.put_many([record(f"j{i:02d}", updated_at=now - i) for i in range(55)]
                            + [record("a/b", updated_at=now - 100)])
    with TestClient(_host_app(create_app(kernel)), base_url=BASE_URL,
                    follow_redirects=False) as client:
        pages = [f"{PREFIX}/", f"{PREFIX}/jobs", f"{PREFIX}/jobs?status=failed",
                 f"{PREFIX}/jobs/j00", f"{PREFIX}/jobs/a%2Fb", f"{PREFIX}/actions/retry/j00",
                 f"{PREFIX}/bulk/retry?status=failed", f"{PREFIX}/workers",
                 f"{PREFIX}/schedules"]
        followed: set[str] = set()
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, (page, response.text[:300])
            for attr, urls in _urls(response.text).items():
                for url in urls:
                    assert url.startswith(f"{PREFIX}/"), f"{page}: {attr}={url!r} leaves the mount"
                    if attr != "action" and url not in followed:  # forms are posted below
                        followed.add(url)
                        assert client.get(url).status_code == 200, (page, url)
        assert {f"{PREFIX}/static/style.css", f"{PREFIX}/static/htmx.min.js",
                f"{PREFIX}/actions/retry/a%2Fb"} <= followed
        assert any("after=" in url for url in followed), "the pager's link was followed"

        # the live part of the overview, as htmx asks for it
        fragment = client.get(f"{PREFIX}/", headers={"HX-Request": "true"}).text
        assert f'hx-get="{PREFIX}/"' in fragment

        # an action through the mount: the form posts under it, the redirect lands under it
        confirm = client.get(f"{PREFIX}/actions/retry/a%2Fb").text
        form = re.search(r'<form method="post" action="([^"]+)">', confirm)
        assert form and form.group(1) == f"{PREFIX}/actions/retry/a%2Fb"
        done = client.post(form.group(1), data={"csrf": csrf_of(confirm), "run": "1"})
        assert done.status_code == 303 and done.headers["location"] == f"{PREFIX}/jobs/a%2Fb"
        assert "queued again" in client.get(done.headers["location"]).text
        assert kernel.queue.peek_state("a/b") is JobStatus.QUEUED

        bulk = client.get(f"{PREFIX}/bulk/retry?status=failed&task=tasks.boom").text
        posted = client.post(f"{PREFIX}/bulk/retry", data=form_of(bulk))
        assert posted.headers["location"] == f"{PREFIX}/jobs?status=failed&task=tasks.boom"

        assert client.get("/").text == "my app", "the host app's own routes are its own"

    with TestClient(_host_app(create_app(kernel, token="s3cret")), base_url=BASE_URL,
                    follow_redirects=False) as client:
        link = client.get(f"{PREFIX}/jobs?status=failed&token=s3cret")
        assert link.status_code == 303
        assert link.headers["location"] == f"{PREFIX}/jobs?status=failed"
