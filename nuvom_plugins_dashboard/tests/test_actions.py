"""Retry, cancel and bulk actions; CSRF, the token and --read-only. Real SQLite store."""

from __future__ import annotations

import re
from collections.abc import Callable

from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, form_of, record
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
    confirm = client.get("/actions/retry/j1")
    assert confirm.status_code == 200 and "Retry job" in confirm.text
    assert kernel.queue.peek_state("j1") is None  # asking changed nothing
    form = form_of(confirm.text)
    assert form["run"] == "1", "the retry form names the run it confirms"
    without_run = client.post("/actions/retry/j1", data={"csrf": form["csrf"]})
    assert without_run.status_code == 400 and "names no run" in without_run.text, \
        "a retry posted without its run skipped the double-submit check"
    assert kernel.queue.peek_state("j1") is None
    done = client.post("/actions/retry/j1", data=form)
    assert done.status_code == 303 and done.headers["location"] == "/jobs/j1"
    assert kernel.queue.peek_state("j1") is JobStatus.QUEUED
    stored = kernel.results.get("j1")
    assert stored is not None and (stored.status, stored.run) == (JobStatus.QUEUED, 2)
    page = client.get("/jobs/j1").text
    assert _flash(page) == "job j1 (tasks.boom) queued again on &#39;default&#39; (run 2)"
    assert "nuvom_flash" not in client.cookies  # reported once
    again = client.post("/actions/retry/j1", data=form)
    assert "is at run 2 (QUEUED) now, not run 1 that was confirmed" in _flash(
        client.get(again.headers["location"]).text)
    unknown = client.get("/actions/retry/never-seen")
    assert unknown.status_code == 404, "nothing to confirm for an id no backend knows"


def test_cancel_removes_a_waiting_job_and_records_it(kernel: Kernel,
                                                      client: TestClient) -> None:
    kernel.queue.enqueue(Message(id="w1", body=b"{}", task="tasks.slow"))
    confirm = client.get("/actions/cancel/w1")
    client.post("/actions/cancel/w1", data={"csrf": csrf_of(confirm.text)})
    assert kernel.queue.peek_state("w1") is None
    stored = kernel.results.get("w1")
    assert stored is not None and stored.status is JobStatus.CANCELLED
    assert _flash(client.get("/jobs/w1").text) == "job w1 cancelled"
    stale = client.post("/actions/cancel/w1", data={"csrf": csrf_of(confirm.text)})
    assert _flash(client.get(stale.headers["location"]).text) == \
        "not cancelled: job w1 was cancelled already", "it never started, as said before"


def test_a_post_without_the_csrf_token_or_from_another_origin_changes_nothing(
        kernel: Kernel, client: TestClient) -> None:
    kernel.results.put(record("j1"))
    token = csrf_of(client.get("/actions/retry/j1").text)
    for data, headers in [({}, {}), ({"csrf": "forged"}, {}),
                          ({"csrf": token}, {"Origin": "http://evil.example"})]:
        response = client.post("/actions/retry/j1", data=data, headers=headers)
        assert response.status_code == 403, response.text
        assert kernel.queue.peek_state("j1") is None
    fresh = TestClient(client.app, base_url=str(client.base_url),  # another browser: no cookie
                       follow_redirects=False)
    assert fresh.post("/actions/retry/j1", data={"csrf": token, "run": "1"}).status_code == 403
    assert "CSRF" in fresh.post("/bulk/retry", data={"status": "failed"}).text
    assert kernel.queue.peek_state("j1") is None


def test_bulk_retry_acts_on_exactly_the_filtered_jobs(kernel: Kernel,
                                                      client: TestClient) -> None:
    kernel.results.put_many([record(f"a{i}", queue="a") for i in range(5)]
                            + [record(f"b{i}", queue="b") for i in range(2)]
                            + [record("a-ok", JobStatus.SUCCEEDED, queue="a")])
    confirm = client.get("/bulk/retry?status=failed&queue=a")
    assert "Retry 5 job(s)" in confirm.text
    done = client.post("/bulk/retry", data=form_of(confirm.text))
    assert done.headers["location"] == "/jobs?status=failed&queue=a"
    assert _flash(client.get(done.headers["location"]).text) == "bulk retry: 5 job(s) done"
    assert {i: kernel.queue.peek_state(i) for i in ("a0", "a4", "b0", "a-ok")} == {
        "a0": JobStatus.QUEUED, "a4": JobStatus.QUEUED, "b0": None, "a-ok": None}


def test_bulk_is_bounded_per_confirmation_and_says_more_are_left(kernel: Kernel) -> None:
    kernel.results.put_many([record(f"j{i}") for i in range(7)])
    failed = JobFilter(status=JobStatus.FAILED)
    found, more = actions.matching(kernel, failed, limit=4)
    report = actions.bulk(kernel, "retry", failed, found, more)
    assert (report.done, report.more) == (4, True)
    assert "more jobs match: confirm again" in report.summary()
    found, more = actions.matching(kernel, failed, limit=4)
    report = actions.bulk(kernel, "retry", failed, found, more)
    assert (report.done, report.more) == (3, False)


def test_bulk_cancel_reports_jobs_it_could_not_cancel(kernel: Kernel) -> None:
    kernel.queue.enqueue(Message(id="r1", body=b"{}"))
    kernel.results.put_many([record("r1", JobStatus.RETRYING), record("gone",
                                                                      JobStatus.RETRYING)])
    retrying = JobFilter(status=JobStatus.RETRYING)
    report = actions.bulk(kernel, "cancel", retrying, actions.matching(kernel, retrying)[0])
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
    for url in ("/actions/retry/j1", "/bulk/retry?status=failed"):
        assert client.get(url).status_code == 403
    assert client.post("/actions/retry/j1", data={"csrf": token, "run": "1"}).status_code == 403
    assert kernel.queue.peek_state("j1") is None


def other_client_with(make_client: Callable[..., TestClient], cookie: str,
                      token: str = "s3cret") -> TestClient:
    """A new browser holding only ``cookie`` as its token cookie."""
    client = make_client(token=token)
    client.cookies.set("nuvom_dashboard_token", cookie)
    return client


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
    kept = client.cookies["nuvom_dashboard_token"]
    assert "s3cret" not in kept, "the browser keeps a value derived from the token, not it"
    assert other_client_with(make_client, kept).get("/").status_code == 200
    assert make_client(token="s3cret").get(
        "/", headers={"Authorization": f"Bearer {kept}"}).status_code == 401, \
        "the cookie's value does not work as the token"
    assert other_client_with(make_client, kept, token="changed").get("/").status_code == 401
    other = make_client(token="s3cret")
    assert other.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert other.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_bulk_action_that_matches_nothing_offers_no_button(client: TestClient) -> None:
    html = client.get("/bulk/retry?status=failed&task=tasks.none").text
    assert "nothing to retry" in html and "<form method=\"post\"" not in html


def test_an_id_ending_in_an_action_name_gets_its_own_page_and_its_own_actions(
        kernel: Kernel, client: TestClient) -> None:
    """The server decodes ``%2F`` before routing: ``/jobs/invoice-7%2Fretry`` used to be
    the retry of ``invoice-7``, and confirming it retried that other job."""
    kernel.results.put_many([record("invoice-7"), record("invoice-7/retry"),
                             record("invoice-7/cancel")])
    listed = client.get("/jobs?status=failed").text
    link = re.search(r'<a href="([^"]+)"><code>invoice-7/retry</code>', listed)
    assert link, listed
    page = client.get(link.group(1))
    assert page.status_code == 200 and "<h1>Job <code>invoice-7/retry</code></h1>" in page.text
    retry = re.search(r'<a class="button" href="([^"]+)">Retry…</a>', page.text)
    assert retry and retry.group(1) == "/actions/retry/invoice-7%2Fretry"
    confirm = client.get(retry.group(1)).text
    assert "<code>invoice-7/retry</code>" in confirm and "<code>invoice-7</code>" not in confirm
    form = re.search(r'<form method="post" action="([^"]+)">', confirm)
    assert form
    done = client.post(form.group(1), data={"csrf": csrf_of(confirm), "run": "1"})
    assert done.status_code == 303 and done.headers["location"] == link.group(1)
    assert kernel.queue.peek_state("invoice-7/retry") is JobStatus.QUEUED
    assert kernel.queue.peek_state("invoice-7") is None, "the other job was not touched"
    other = client.get("/jobs/invoice-7%2Fcancel").text
    assert "<h1>Job <code>invoice-7/cancel</code></h1>" in other
    assert client.get("/actions/bogus/invoice-7").status_code == 404


def test_a_link_of_the_old_form_leads_to_the_action_of_the_job_it_named(
        kernel: Kernel, client: TestClient) -> None:
    """``/jobs/<id>/retry`` (a literal slash before the action) from before actions moved
    to ``/actions/``: redirected there, keeping the method, so an old form still posts."""
    kernel.results.put(record("a/b"))
    old = client.get("/jobs/a%2Fb/retry")
    assert old.status_code == 308 and old.headers["location"] == "/actions/retry/a%2Fb"
    token = csrf_of(client.get(old.headers["location"]).text)
    posted = client.post("/jobs/a%2Fb/retry", data={"csrf": token, "run": "1"})
    assert posted.status_code == 308 and posted.headers["location"] == "/actions/retry/a%2Fb"
    assert kernel.queue.peek_state("a/b") is None, "a redirect acts on nothing"
    done = client.post(posted.headers["location"], data={"csrf": token, "run": "1"})
    assert done.status_code == 303 and done.headers["location"] == "/jobs/a%2Fb"
    assert kernel.queue.peek_state("a/b") is JobStatus.QUEUED
    assert client.post("/jobs/a%2Fb", data={"csrf": token}).status_code == 405


def test_a_malformed_form_body_is_a_400_with_the_security_headers(kernel: Kernel,
                                                                 client: TestClient) -> None:
    """The Guard parses the form for the CSRF check, outside Starlette's error handling: a
    multipart body without a boundary was a 500."""
    kernel.results.put(record("j1"))
    client.get("/jobs")  # this browser's CSRF cookie
    for url in ("/bulk/retry", "/actions/retry/j1"):
        response = client.post(url, content=b"abc",
                               headers={"Content-Type": "multipart/form-data"})
        assert response.status_code == 400, (url, response.text)
        assert "boundary" in response.text
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]
    assert kernel.queue.peek_state("j1") is None
