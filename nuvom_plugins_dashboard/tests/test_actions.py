"""Retry, cancel and bulk actions; CSRF, the token and --read-only. Real SQLite store."""

from __future__ import annotations

import re
from collections.abc import Callable

from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus, Message
from nuvom_plugins_dashboard import actions
from nuvom_plugins_dashboard.views import JobFilter


def _flash(html: str) -> str:
    match = re.search(r'<p class="flash" role="status">([^<]*)</p>', html)
    assert match, "the page reports nothing"
    return match.group(1)


def test_retry_asks_then_queues_the_next_run_and_reports_it(kernel: Kernel,
                                                             client: TestClient) -> None:
    kernel.results.put(record("j1"))
    confirm = client.get("/jobs/j1/retry")
    assert confirm.status_code == 200 and "Retry job" in confirm.text
    assert kernel.queue.peek_state("j1") is None  # asking changed nothing
    done = client.post("/jobs/j1/retry", data={"csrf": csrf_of(confirm.text)})
    assert done.status_code == 303 and done.headers["location"] == "/jobs/j1"
    assert kernel.queue.peek_state("j1") is JobStatus.QUEUED
    stored = kernel.results.get("j1")
    assert stored is not None and (stored.status, stored.run) == (JobStatus.QUEUED, 2)
    page = client.get("/jobs/j1").text
    assert _flash(page) == "job j1 (tasks.boom) queued again on &#39;default&#39; (run 2)"
    assert "nuvom_flash" not in client.cookies  # reported once
    again = client.post("/jobs/j1/retry", data={"csrf": csrf_of(confirm.text)})
    assert "only FAILED or CANCELLED jobs can be run again" in _flash(
        client.get(again.headers["location"]).text)


def test_cancel_removes_a_waiting_job_and_records_it(kernel: Kernel,
                                                      client: TestClient) -> None:
    kernel.queue.enqueue(Message(id="w1", body=b"{}", task="tasks.slow"))
    confirm = client.get("/jobs/w1/cancel")
    client.post("/jobs/w1/cancel", data={"csrf": csrf_of(confirm.text)})
    assert kernel.queue.peek_state("w1") is None
    stored = kernel.results.get("w1")
    assert stored is not None and stored.status is JobStatus.CANCELLED
    assert _flash(client.get("/jobs/w1").text) == "job w1 cancelled"


def test_a_post_without_the_csrf_token_or_from_another_origin_changes_nothing(
        kernel: Kernel, client: TestClient) -> None:
    kernel.results.put(record("j1"))
    token = csrf_of(client.get("/jobs/j1/retry").text)
    for data, headers in [({}, {}), ({"csrf": "forged"}, {}),
                          ({"csrf": token}, {"Origin": "http://evil.example"})]:
        response = client.post("/jobs/j1/retry", data=data, headers=headers)
        assert response.status_code == 403, response.text
        assert kernel.queue.peek_state("j1") is None
    fresh = TestClient(client.app, follow_redirects=False)  # another browser: no cookie
    assert fresh.post("/jobs/j1/retry", data={"csrf": token}).status_code == 403
    assert "CSRF" in fresh.post("/bulk/retry", data={"status": "failed"}).text
    assert kernel.queue.peek_state("j1") is None


def test_bulk_retry_acts_on_exactly_the_filtered_jobs(kernel: Kernel,
                                                      client: TestClient) -> None:
    kernel.results.put_many([record(f"a{i}", queue="a") for i in range(5)]
                            + [record(f"b{i}", queue="b") for i in range(2)]
                            + [record("a-ok", JobStatus.SUCCEEDED, queue="a")])
    confirm = client.get("/bulk/retry?status=failed&queue=a")
    assert "Retry 5 job(s)" in confirm.text
    done = client.post("/bulk/retry", data={"csrf": csrf_of(confirm.text), "status": "failed",
                                            "queue": "a"})
    assert done.headers["location"] == "/jobs?status=failed&queue=a"
    assert _flash(client.get(done.headers["location"]).text) == "bulk retry: 5 job(s) done"
    assert {i: kernel.queue.peek_state(i) for i in ("a0", "a4", "b0", "a-ok")} == {
        "a0": JobStatus.QUEUED, "a4": JobStatus.QUEUED, "b0": None, "a-ok": None}


def test_bulk_is_bounded_per_confirmation_and_says_more_are_left(kernel: Kernel) -> None:
    kernel.results.put_many([record(f"j{i}") for i in range(7)])
    report = actions.bulk(kernel, "retry", JobFilter(status=JobStatus.FAILED), limit=4)
    assert (report.done, report.more) == (4, True)
    assert "more jobs match: confirm again" in report.summary()
    report = actions.bulk(kernel, "retry", JobFilter(status=JobStatus.FAILED), limit=4)
    assert (report.done, report.more) == (3, False)


def test_bulk_cancel_reports_jobs_it_could_not_cancel(kernel: Kernel) -> None:
    kernel.queue.enqueue(Message(id="r1", body=b"{}"))
    kernel.results.put_many([record("r1", JobStatus.RETRYING), record("gone",
                                                                      JobStatus.RETRYING)])
    report = actions.bulk(kernel, "cancel", JobFilter(status=JobStatus.RETRYING))
    assert report.done == 1 and len(report.refused) == 1
    assert "not cancelled: job gone is RETRYING" in report.summary()


def test_read_only_shows_no_action_and_refuses_them(kernel: Kernel,
                                                    make_client: Callable[..., TestClient]
                                                    ) -> None:
    kernel.results.put(record("j1"))
    client = make_client(read_only=True)
    for url in ("/jobs/j1", "/jobs?status=failed", "/"):
        html = client.get(url).text
        assert "read-only" in html
        assert "/retry" not in html and "/bulk/" not in html and "<form method=\"post\"" \
            not in html
    token = client.cookies.get("nuvom_csrf")
    for url in ("/jobs/j1/retry", "/bulk/retry?status=failed"):
        assert client.get(url).status_code == 403
    assert client.post("/jobs/j1/retry", data={"csrf": token}).status_code == 403
    assert kernel.queue.peek_state("j1") is None


def test_a_token_is_required_once_then_kept_in_a_cookie(kernel: Kernel,
                                                        make_client: Callable[..., TestClient]
                                                        ) -> None:
    client = make_client(token="s3cret")
    denied = client.get("/jobs")
    assert denied.status_code == 401 and "NUVOM_PLUGINS__DASHBOARD__TOKEN" in denied.text
    assert client.get("/jobs?token=wrong").status_code == 401
    assert client.get("/static/htmx.min.js").status_code == 401
    link = client.get("/jobs?status=failed&token=s3cret")
    assert link.status_code == 303 and link.headers["location"] == "/jobs?status=failed"
    assert client.get("/jobs").status_code == 200  # the cookie carries it from now on
    other = make_client(token="s3cret")
    assert other.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert other.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_bulk_action_that_matches_nothing_offers_no_button(client: TestClient) -> None:
    html = client.get("/bulk/retry?status=failed&task=tasks.none").text
    assert "nothing to retry" in html and "<form method=\"post\"" not in html
