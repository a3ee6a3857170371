"""The dashboard in a real browser: Debian's chromium driven by Playwright for Python.

A task fails in a real worker process; the failed job is listed at ``/jobs?status=failed``,
its page shows the traceback, and clicking retry (then confirming) makes it succeed. The
screenshots are kept in ``test-artifacts/dashboard/`` (``NUVOM_TEST_ARTIFACTS`` overrides):
``docs/observability.md`` shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

from dash_browser import browser_page as browser_page  # a fixture
from dash_browser import skip_without_chromium
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_procs import Dashboard, start_worker, stop, wait_until

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus

ARTIFACTS = Path(os.environ.get("NUVOM_TEST_ARTIFACTS") or
                 Path(__file__).resolve().parents[2] / "test-artifacts") / "dashboard"

skip_without_chromium()

TASKS = '''
import os
from nuvom_kernel import task

@task(queue="payments")
def dashboard_charge(order, flag):
    if not os.path.exists(flag):
        raise RuntimeError(f"payment gateway refused order {order} ({flag} is missing)")
    return {"charged": order}

@task
def dashboard_add(x, y):
    return x + y
'''


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)  # type: ignore[attr-defined]


def test_a_failed_job_is_listed_shows_its_traceback_and_retry_makes_it_succeed(
        project: Path, kernel: Kernel, browser_page: object) -> None:
    from playwright.sync_api import expect

    (project / "dash_tasks.py").write_text(TASKS)
    from dash_tasks import dashboard_add, dashboard_charge

    flag = project / "gateway-up"  # the worker runs in the project folder
    failing = dashboard_charge.delay("A-1042", flag.name)
    done = [dashboard_add.delay(i, i) for i in range(3)]
    worker = start_worker(project)
    dashboard = Dashboard(project)
    page = browser_page
    try:
        wait_until(lambda: kernel.refresh_job(failing).status is JobStatus.FAILED, 60,
                   f"job {failing.id} to fail")
        wait_until(lambda: all(kernel.refresh_job(j).status is JobStatus.SUCCEEDED
                               for j in done), 60, "the add jobs to succeed")

        refused: list[str] = []  # what the Content-Security-Policy blocked, if anything
        page.on("console", lambda m: refused.append(m.text)  # type: ignore[attr-defined]
                if "Content Security Policy" in m.text else None)
        page.goto(dashboard.url)  # type: ignore[attr-defined]
        expect(page.locator("#overview")).to_contain_text("payments")  # type: ignore
        as_of = page.locator("#overview p.meta")  # type: ignore[attr-defined]
        first = as_of.inner_text()
        expect(as_of).not_to_have_text(first, timeout=20_000)  # htmx refreshed it in place
        _shot(page, "overview.png")

        page.goto(dashboard.url + "jobs?status=failed")  # type: ignore[attr-defined]
        row = page.locator("table.jobs tbody tr")  # type: ignore[attr-defined]
        expect(row).to_have_count(1)
        expect(row).to_contain_text(failing.id)
        expect(row).to_contain_text("RuntimeError")
        _shot(page, "jobs-failed.png")

        page.click(f"text={failing.id}")  # type: ignore[attr-defined]
        traceback = page.locator("pre.traceback")  # type: ignore[attr-defined]
        expect(traceback).to_contain_text("Traceback (most recent call last)")
        expect(traceback).to_contain_text("RuntimeError: payment gateway refused order A-1042")
        _shot(page, "job-failed.png")

        flag.write_text("")  # the outage is over: the next run succeeds
        page.click("text=Retry…")  # type: ignore[attr-defined]
        page.click("button:has-text('Retry job')")  # type: ignore[attr-defined]
        expect(page.locator("p.flash")).to_contain_text(  # type: ignore[attr-defined]
            f"job {failing.id} (dashboard_charge) queued again on 'payments' (run 2)")
        wait_until(lambda: kernel.refresh_job(failing).status is JobStatus.SUCCEEDED, 60,
                   f"job {failing.id} to succeed after the retry")
        page.reload()  # type: ignore[attr-defined]
        expect(page.locator("p span.status")).to_have_text("SUCCEEDED")  # type: ignore
        expect(page.locator("pre.result")).to_contain_text("A-1042")  # type: ignore
        _shot(page, "job-retried.png")
        assert refused == []
    finally:
        dashboard.stop()
        out = stop(worker)
    assert worker.returncode == 0, out
