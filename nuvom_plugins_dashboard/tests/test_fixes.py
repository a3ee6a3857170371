"""Faults a bug hunt found in a real browser, each pinned over a real SQLite store: a store
that cannot be read, bulk and single actions acting on exactly what was confirmed, the
token cookie on links from other sites, one time format, unchanged live sections left in
place, a schedule's error, what a job's page offers, long values, the favicon."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, form_of, record
from starlette.testclient import TestClient

from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus, Message
from nuvom_plugins_dashboard import views

DOWN = ("cannot reach Redis at redis://127.0.0.1:6393/0 while listing queues "
        "(ConnectionError: Error 111). Check that redis-server runs there")


def _flash(client: TestClient, response: Any) -> str:
    match = re.search(r'<p class="flash" role="status">([^<]*)</p>',
                      client.get(response.headers["location"]).text)
    assert match, "the page reports nothing"
    return match.group(1)


def _store_down(monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise EnqueueError(DOWN)

    for backend, name in ((kernel.queue, "stats"), (kernel.queue, "peek_state"),
                          (kernel.results, "query"), (kernel.results, "get"),
                          (kernel.results, "live_workers"),
                          (kernel.results, "schedule_states")):
        monkeypatch.setattr(backend, name, fail)


def test_a_store_that_cannot_be_read_is_a_503_naming_the_backends_error(
        kernel: Kernel, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page was a bare 500 "Internal Server Error"."""
    _store_down(monkeypatch, kernel)
    for url in ("/", "/jobs", "/jobs/some-id", "/workers", "/actions/retry/x",
                "/bulk/retry?status=failed"):
        response = client.get(url)
        assert response.status_code == 503, (url, response.text[:200])
        assert "The job store cannot be read" in response.text
        assert f"EnqueueError: {DOWN}" in response.text.replace("&#39;", "'")
        assert "Traceback" not in response.text
        assert '<meta http-equiv="refresh" content="10">' in response.text  # recovers itself
        assert response.headers["x-frame-options"] == "DENY"
    refresh = client.get("/", headers={"HX-Request": "true"})  # what dashboard.js shows
    assert refresh.status_code == 503 and refresh.text == f"EnqueueError: {DOWN}"


def test_bulk_retry_acts_on_exactly_the_jobs_its_confirmation_counted(
        kernel: Kernel, client: TestClient) -> None:
    """The page said 3 and the POST retried whatever failed by then (43)."""
    kernel.results.put_many([record(f"first-{i}") for i in range(3)])
    confirm = client.get("/bulk/retry?status=failed")
    assert "Retry 3 job(s)" in confirm.text
    kernel.results.put_many([record(f"later-{i}") for i in range(40)])  # fail meanwhile
    kernel.results.put(record("first-0", JobStatus.SUCCEEDED))  # changed meanwhile
    done = client.post("/bulk/retry", data=form_of(confirm.text))
    assert _flash(client, done) == (
        "bulk retry: 2 job(s) done, 1 left alone (changed since the confirmation: no longer "
        "listed, or at another run)")
    assert [kernel.queue.peek_state(f"first-{i}") for i in range(3)] == [
        None, JobStatus.QUEUED, JobStatus.QUEUED]
    assert all(kernel.queue.peek_state(f"later-{i}") is None for i in range(40))
    again = client.post("/bulk/retry", data=form_of(confirm.text))  # the same form again
    assert "0 job(s) done" in _flash(client, again)
    assert kernel.results.get("first-1").run == 2  # type: ignore[union-attr]
    forged = {**form_of(confirm.text), "jobs": "not json"}
    assert client.post("/bulk/retry", data=forged).status_code == 400
    assert client.post("/bulk/retry", data={"csrf": csrf_of(confirm.text),
                                            "status": "failed"}).status_code == 400


def test_a_retry_form_posted_twice_starts_one_run(kernel: Kernel, client: TestClient) -> None:
    """The form names the run it confirmed: posted again after that run failed again, it
    used to start yet another run."""
    kernel.results.put(record("j1"))
    form = form_of(client.get("/actions/retry/j1").text)
    assert form["run"] == "1"
    first = client.post("/actions/retry/j1", data=form)
    assert "(run 2)" in _flash(client, first)
    assert kernel.queue.ack(kernel.queue.claim(1)[0])  # a worker ran run 2 …
    kernel.results.put(record("j1", run=2))  # … and it failed too
    second = client.post("/actions/retry/j1", data=form)
    assert "not retried: job j1 is at run 2 (FAILED) now, not run 1 that was confirmed" in (
        _flash(client, second))
    assert kernel.results.get("j1").run == 2  # type: ignore[union-attr]
    assert client.post("/actions/retry/j1", data={**form, "run": "x"}).status_code == 400


def test_the_token_cookie_is_lax_so_links_from_other_sites_work_and_posts_stay_guarded(
        kernel: Kernel, make_client: Callable[..., TestClient]) -> None:
    """A Strict cookie is not sent on a navigation from another site: an alert's link
    answered 401 though the browser had signed in."""
    kernel.results.put(record("j1"))
    client = make_client(token="s3cret")
    denied = client.get("/jobs?status=failed&queue=payments")
    assert "/jobs?status=failed&queue=payments&token=<token>" in denied.text
    signed_in = client.get("/?token=s3cret")
    assert "samesite=lax" in signed_in.headers["set-cookie"].lower()
    assert "samesite=strict" not in signed_in.headers["set-cookie"].lower()
    page = client.get("/actions/retry/j1")
    assert "samesite=lax" in page.headers["set-cookie"].lower()  # the CSRF cookie too
    token = csrf_of(page.text)
    # the token cookie alone opens no action: CSRF and Origin are still checked
    for data, headers in [({}, {}), ({"csrf": "forged"}, {}),
                          ({"csrf": token}, {"Origin": "http://evil.example"})]:
        assert client.post("/actions/retry/j1", data=data,
                           headers=headers).status_code == 403
    assert kernel.queue.peek_state("j1") is None
    assert client.post("/actions/retry/j1", data={"csrf": token, "run": "1"}).status_code == 303


def test_every_page_shows_times_in_utc_labelled(kernel: Kernel, client: TestClient) -> None:
    """/schedules showed UTC with +00:00, /jobs and the overview the server's zone with
    none."""
    at = 1_780_000_000.25  # 2026-05-28 20:26:40.250 UTC
    kernel.results.put(record("j1", updated_at=at))
    assert "2026-05-28 20:26:40.250 UTC" in client.get("/jobs").text
    assert "2026-05-28 20:26:40.250 UTC" in client.get("/jobs/j1").text
    assert re.search(r'id="overview-as-of">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC<',
                     client.get("/").text)
    assert views.format_time("2026-03-29T01:00:00+00:00") == "2026-03-29 01:00:00.000 UTC"
    assert views.format_time("2026-03-29T03:00:00+02:00") == "2026-03-29 01:00:00.000 UTC"


SCHEDULED = '''
from nuvom_kernel import task
@task(schedule="0 * * * *")
def hourly(): ...
'''


def test_schedules_show_a_schedules_error(project: Any, kernel: Kernel,
                                          client: TestClient) -> None:
    """`nuvom schedule list` shows it; the page showed '-' with no reason."""
    import attrs

    from nuvom_kernel.scheduler import schedule_rows
    from nuvom_kernel.schedules import Cron

    (project / "fixes_sched_tasks.py").write_text(SCHEDULED)  # a name no other test uses:
    import fixes_sched_tasks as sched_tasks  # one process imports each module once

    sched_tasks.hourly.schedule = attrs.evolve(sched_tasks.hourly.schedule,
                                               trigger=Cron("0 0 31 2 *"))  # never
    error = schedule_rows(kernel)[0]["error"]
    assert error and "CroniterBadDateError" in error
    html = client.get("/schedules").text
    assert f'<p class="error">hourly: {error}</p>' in html


def test_an_unchanged_live_section_is_not_swapped(kernel: Kernel, client: TestClient) -> None:
    """The 5 s refresh replaced whole sections, dropping focus and the text selection."""
    kernel.queue.enqueue(Message(id="r1", body=b"{}", queue="emails"))
    for url in ("/", "/workers", "/schedules"):
        page = client.get(url).text
        seen = re.search(r'hx-headers=\'\{"X-Nuvom-Seen": "([0-9a-f]+)"\}\'', page)
        assert seen, url
        idle = client.get(url, headers={"HX-Request": "true", "X-Nuvom-Seen": seen.group(1)})
        assert idle.headers["hx-reswap"] == "none", url
        assert "<table" not in idle.text and "<section" not in idle.text
        if url == "/":  # only the ticking parts, swapped out of band
            assert re.fullmatch(r'(<span class="tick" id="[^"]+" hx-swap-oob="true">'
                                r'[^<]*</span>)+', idle.text), idle.text
            assert 'id="overview-as-of"' in idle.text
    seen = re.search(r'"X-Nuvom-Seen": "([0-9a-f]+)"', client.get("/").text)
    assert seen
    kernel.queue.enqueue(Message(id="r2", body=b"{}", queue="reports"))  # it changed
    changed = client.get("/", headers={"HX-Request": "true", "X-Nuvom-Seen": seen.group(1)})
    assert "hx-reswap" not in changed.headers
    assert changed.text.startswith('<section id="overview"') and "reports" in changed.text


def test_a_job_page_offers_only_what_will_be_accepted(
        kernel: Kernel, client: TestClient) -> None:
    """A RUNNING job said "Waiting in its queue" and its cancel confirmation offered a
    button the server refused; a failed workflow step offered Retry, then refused it."""
    kernel.queue.enqueue(Message(id="run-1", body=b"{}", task="tasks.slow"))
    assert kernel.queue.claim(1)
    page = client.get("/jobs/run-1").text
    assert "Running its first attempt" in page and "Waiting in its queue" not in page
    assert "Cancel…" not in page
    confirm = client.get("/actions/cancel/run-1").text
    assert "<form method=\"post\"" not in confirm
    assert "only a job waiting to run (queued, or waiting for its next attempt) can be " \
           "cancelled" in confirm


WORKFLOW = '''
from nuvom_kernel import task
@task
def step(x):
    return x + 1
'''


def test_a_failed_workflow_step_offers_its_workflow_retry_not_retry(
        project: Any, kernel: Kernel, client: TestClient) -> None:
    from nuvom_kernel import chain

    (project / "fixes_wf_tasks.py").write_text(WORKFLOW)  # a name no other test imports
    from fixes_wf_tasks import step

    workflow = chain(step.s(1), step.s()).delay()
    first = workflow.nodes[0].id
    assert kernel.queue.ack(kernel.queue.claim(1)[0])  # a worker ran the first step …
    kernel.results.put(record(first, task=step.name))  # … and it failed
    if views.job_detail(kernel, first).workflow is None:
        pytest.skip("this queue backend keeps no workflow graphs")
    page = client.get(f"/jobs/{first}").text
    assert "Retry…" not in page
    command = f"nuvom workflow retry {workflow.id} --from {first}"
    assert f"<code>{command}</code>" in page
    confirm = client.get(f"/actions/retry/{first}").text
    assert "<form method=\"post\"" not in confirm and command in confirm


def test_bulk_retry_counts_only_what_it_will_retry(
        project: Any, kernel: Kernel, client: TestClient) -> None:
    """A failed workflow step was counted by the bulk retry's confirmation ("Retry all 2
    job(s)"), then refused by the retry ("1 done, 1 refused"): it is left out, and said so."""
    from nuvom_kernel import chain

    (project / "fixes_wf_bulk.py").write_text(  # names no other test imports
        WORKFLOW.replace("def step", "def bulk_step"))
    from fixes_wf_bulk import bulk_step as step

    workflow = chain(step.s(1), step.s()).delay()
    first = workflow.nodes[0].id
    assert kernel.queue.ack(kernel.queue.claim(1)[0])  # a worker ran the first step …
    kernel.results.put_many([record(first, task=step.name),  # … and it failed, as did
                             record("plain", task=step.name)])  # a job of no workflow
    if views.job_detail(kernel, first).workflow is None:
        pytest.skip("this queue backend keeps no workflow graphs")
    confirm = client.get("/bulk/retry?status=failed").text
    assert "Retry 1 job(s)" in confirm and "all 1" in confirm, confirm
    assert "Left out: 1 workflow step(s) listed" in confirm, confirm
    assert f"<code>{first}</code></a> of workflow <code>{workflow.id}</code>" in confirm
    done = client.post("/bulk/retry", data=form_of(confirm))
    flash = re.search(r'<p class="flash" role="status">([^<]*)</p>',
                      client.get(done.headers["location"]).text)
    assert flash and flash.group(1) == "bulk retry: 1 job(s) done", flash
    assert kernel.queue.peek_state("plain") is JobStatus.QUEUED

    only_steps = client.get(f"/bulk/retry?status=failed&task={step.name}").text
    assert "No other job is listed" in only_steps and "Left out: 1" in only_steps


def test_a_long_value_is_shortened_with_a_way_to_see_it_all(kernel: Kernel,
                                                            client: TestClient) -> None:
    """A 200,000-character argument made a 420 KB page."""
    kernel.results.put(record("big", args=["x" * 200_000]))
    page = client.get("/jobs/big")
    assert len(page.text) < 40_000
    assert "more characters: <a href=\"/jobs/big?full=1\">show all</a>" in page.text
    assert "x" * 200_000 in client.get("/jobs/big?full=1").text


def test_every_page_names_a_favicon_that_is_served(client: TestClient) -> None:
    page = client.get("/").text
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
    assert icon and client.get(icon.group(1)).status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200


def test_a_job_waiting_for_its_first_run_still_says_it_waits(kernel: Kernel,
                                                          client: TestClient) -> None:
    kernel.queue.enqueue(Message(id="w1", body=b"{}", task="tasks.slow",
                                 created_at=time.time()))
    assert "Waiting in its queue" in client.get("/jobs/w1").text
