"""The live sections in a real browser (Debian's chromium, Playwright): an idle overview
keeps keyboard focus across refreshes, and a refresh that fails (the store cannot be read)
marks the section stale with the backend's error until the store answers again.

The app runs in this process on uvicorn over a real SQLite store, so the test can make the
queue backend fail and recover at will.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_procs import wait_until

from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import Message
from nuvom_plugins_dashboard import create_app

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                "installs it)", allow_module_level=True)


@pytest.fixture
def served(kernel: Kernel) -> Iterator[str]:
    """The dashboard over ``kernel`` on uvicorn in a thread; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(kernel), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_idle_overview_keeps_focus_and_a_failed_refresh_says_it_is_stale(
        kernel: Kernel, served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    kernel.queue.enqueue(Message(id="m1", body=b"{}", queue="emails"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(served + "/")
            page.wait_for_load_state("networkidle")
            page.focus("#overview a[href='/jobs?queue=emails']")
            as_of = page.locator("#overview-as-of")
            first = as_of.inner_text()
            expect(as_of).not_to_have_text(first, timeout=20_000)  # refreshed in place…
            assert page.evaluate("document.activeElement.getAttribute('href')") == (
                "/jobs?queue=emails")  # …and the focus stayed where it was

            def down(*_args: object) -> None:
                raise EnqueueError("cannot reach Redis at redis://127.0.0.1:1/0 (test)")

            stats = kernel.queue.stats
            monkeypatch.setattr(kernel.queue, "stats", down)
            stale = page.locator("#overview p.stale")
            expect(stale).to_contain_text("EnqueueError: cannot reach Redis at "
                                          "redis://127.0.0.1:1/0 (test)", timeout=20_000)
            expect(page.locator("#overview")).to_have_class("is-stale")
            monkeypatch.setattr(kernel.queue, "stats", stats)  # the store is back
            expect(stale).to_have_count(0, timeout=20_000)
            expect(page.locator("#overview")).not_to_have_class("is-stale")
        finally:
            browser.close()
