"""Debian's chromium for the dashboard's browser tests, and a web server of "another
program" on another port of the host (the same *site*, which cookies do not tell apart)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "browser_page", "sibling_site", "skip_without_chromium"]

CHROMIUM = Path("/usr/bin/chromium")


def skip_without_chromium() -> None:
    """Skip the calling module or test where chromium is missing, except in CI (which
    installs it: a missing browser there must fail, not skip)."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                    "installs it)", allow_module_level=True)


@pytest.fixture
def browser_page() -> Iterator[object]:
    """A page of a fresh chromium, closed after the test."""
    from playwright.sync_api import sync_playwright

    skip_without_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 720})
        finally:
            browser.close()


def sibling_site(cookie: str, page: bytes) -> tuple[ThreadingHTTPServer, str]:
    """A web server on another port of 127.0.0.1 that answers every GET with ``page`` and
    the ``Set-Cookie`` value ``cookie`` (``name=value; Path=/; SameSite=Lax``); the server
    (to shut down) and its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"
