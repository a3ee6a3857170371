"""The pages over a real SQLite store: what each shows, filters, keyset paging, escaping."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import attrs
import pytest
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus, Message
from nuvom_plugins_dashboard import views
from nuvom_plugins_dashboard.views import JobFilter, list_jobs

PAYLOAD = "<script>alert('x')</script>"


def _ids(html: str) -> list[str]:
    return re.findall(r'<a href="/jobs/[^"]+"><code>([^<]+)</code>', html)


def _row(html: str, queue: str) -> list[str]:
    """The cells of the overview's row for ``queue``."""
    match = re.search(rf'<td><a href="/jobs\?queue={queue}">{queue}</a></td>(.*?)</tr>',
                      html, re.S)
    assert match, f"no overview row for queue {queue!r}"
    return re.findall(r'<td class="num">(?:<(?:a|span)[^>]*>)?([^<]*)', match.group(1))


def test_overview_counts_each_queue_from_the_queue_and_the_records(
        kernel: Kernel, client: TestClient) -> None:
    now = time.time()
    kernel.queue.enqueue_many([
        Message(id="r1", body=b"{}", queue="emails", created_at=now - 30),
        Message(id="r2", body=b"{}", queue="emails"),
        Message(id="d1", body=b"{}", queue="emails", available_at=now + 600),
        Message(id="x1", body=b"{}", queue="reports")])
    kernel.queue.claim(1, ["reports"])  # running
    kernel.results.put_many([
        record("s1", JobStatus.SUCCEEDED, queue="emails", updated_at=now - 60),
        record("s2", JobStatus.SUCCEEDED, queue="emails", updated_at=now - 1800),
        record("f1", queue="emails", updated_at=now - 120),
        record("f2", queue="emails", updated_at=now - 7200),  # older than both windows
        record("f3", queue="reports", updated_at=now - 1000)])
    html = client.get("/").text
    # ready, delayed, running, oldest ready, done 5 min, failed 5 min, done 60, failed 60
    emails = _row(html, "emails")
    assert emails[0] == "2" and emails[1] == "1" and emails[2] == "0"
    assert re.fullmatch(r"3\d\.\d s", emails[3]), emails
    assert emails[4:] == ["1", "1", "2", "1"]
    assert _row(html, "reports") == ["0", "0", "1", "-", "0", "0", "0", "1"]
    # htmx asks for the live part alone, on the same URL
    fragment = client.get("/", headers={"HX-Request": "true"}).text
    assert fragment.startswith('<section id="overview"') and "<html" not in fragment


def test_jobs_newest_first_filtered_and_keyset_paged_without_gaps(
        kernel: Kernel, client: TestClient) -> None:
    now = time.time()
    kernel.results.put_many([record(f"job-{i:03d}", JobStatus.FAILED if i % 2 else
                                    JobStatus.SUCCEEDED, task=f"tasks.t{i % 3}",
                                    updated_at=now - i) for i in range(120)])
    first = client.get("/jobs").text
    assert _ids(first) == [f"job-{i:03d}" for i in range(50)]
    seen, url = [], "/jobs?status=failed"
    while url:
        html = client.get(url).text
        seen += _ids(html)
        link = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = link.group(1).replace("&amp;", "&") if link else None
    assert seen == [f"job-{i:03d}" for i in range(1, 120, 2)]
    page = client.get("/jobs?status=failed&task=tasks.t1").text
    assert _ids(page) == [f"job-{i:03d}" for i in range(1, 120, 2) if i % 3 == 1]


def test_the_queue_filter_pages_within_a_bounded_scan(kernel: Kernel) -> None:
    now = time.time()
    kernel.results.put_many([record(f"j{i:03d}", queue="rare" if i % 40 == 0 else "bulk",
                                    updated_at=now - i) for i in range(200)])
    flt = JobFilter(queue="rare")
    page = list_jobs(kernel.results, flt, limit=10, budget=60)
    assert [r.job_id for r in page.records] == ["j000", "j040"]
    assert page.budget_hit and page.scanned == 60 and page.next_cursor is not None
    found = [r.job_id for r in page.records]
    while page.next_cursor is not None:
        page = list_jobs(kernel.results, flt, after=page.next_cursor, limit=10, budget=60)
        found += [r.job_id for r in page.records]
    assert found == ["j000", "j040", "j080", "j120", "j160"]


@pytest.mark.parametrize("url, says", [
    ("/jobs?status=bogus", "status=&#39;bogus&#39; is not a job state; use one of queued"),
    ("/jobs?after=nonsense", "malformed page cursor"),
    # nan orders against no time: SQLite gave an empty page, PostgreSQL page 1
    ("/jobs?after=nan%7Cx", "malformed page cursor"),
    ("/bulk/retry?status=succeeded", "bulk retry acts on the jobs of one filter with "
                                     "status=failed or status=cancelled"),
])
def test_bad_query_parameters_are_a_400_saying_what_works(client: TestClient, url: str,
                                                          says: str) -> None:
    response = client.get(url)
    assert response.status_code == 400
    assert says in response.text


def test_every_page_escapes_arguments_results_errors_and_names(
        kernel: Kernel, client: TestClient) -> None:
    kernel.results.put_many([
        record(f"id-{PAYLOAD}", task=f"tasks.{PAYLOAD}", queue=f"q{PAYLOAD}",
               args=[PAYLOAD], kwargs={PAYLOAD: PAYLOAD}, error_type=PAYLOAD,
               error_message=PAYLOAD, traceback=f"Traceback\n{PAYLOAD}\n",
               history=[{"attempt": 1, "kind": PAYLOAD, "error_type": PAYLOAD,
                         "error_message": PAYLOAD, "worker": PAYLOAD}]),
        record("ok", JobStatus.SUCCEEDED, result={"html": PAYLOAD}, args=[], kwargs={})])
    quoted = re.sub(r"[^A-Za-z0-9_.~-]", lambda m: f"%{ord(m.group()):02X}", f"id-{PAYLOAD}")
    job_url = f"/jobs/{quoted}"
    pages = ["/", "/jobs", "/jobs?status=failed", f"/jobs?queue=q{PAYLOAD}", job_url,
             "/jobs/ok", f"/actions/retry/{quoted}", "/bulk/retry?status=failed", "/workers"]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:300])
        assert "<script>alert" not in response.text, f"{url} shows the payload as markup"
    detail = client.get(job_url).text
    assert detail.count("&lt;script&gt;alert(") >= 6  # args, kwargs, error, traceback, history
    assert "&lt;script&gt;alert(" in client.get("/jobs/ok").text  # the result


def test_a_job_waiting_for_its_first_run_and_an_unknown_one(kernel: Kernel,
                                                            client: TestClient) -> None:
    kernel.queue.enqueue(Message(id="waiting", body=b"{}"))
    html = client.get("/jobs/waiting").text
    assert "QUEUED" in html and "Waiting in its queue" in html
    assert 'href="/actions/cancel/waiting"' in html and "/retry" not in html
    missing = client.get("/jobs/nope")
    assert missing.status_code == 404 and "No backend knows this job id" in missing.text


def test_a_job_not_run_yet_shows_what_its_message_says(kernel: Kernel,
                                                       client: TestClient) -> None:
    """A delayed job's page showed its state and a sentence: no task, queue, priority,
    due time or arguments, which ``nuvom inspect job`` shows for the same id."""
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import TaskOptions

    envelope = Envelope.for_call("billing.charge", "billing",
                                 TaskOptions(queue="pay", priority=5), ("cust-42",),
                                 {"cents": 999})
    due = time.time() + 3600
    kernel.queue.enqueue(envelope.to_message(kernel.serializer, due))
    html = client.get(f"/jobs/{envelope.id}").text
    assert "QUEUED" in html and "Waiting in its queue" in html
    fields = dict(re.findall(r"<dt>([^<]+)</dt><dd>(.*?)</dd>", html, re.S))
    assert fields["task"].startswith("billing.charge") and fields["queue"] == "pay"
    assert fields["priority"] == "5" and fields["due"] == views.format_time(due)
    assert fields["attempts"].startswith("0 ")
    assert "args = [&#39;cust-42&#39;]" in html and "&#39;cents&#39;: 999" in html
    assert "<h2>Result</h2>" not in html


def test_pages_send_security_headers(client: TestClient) -> None:
    headers = client.get("/jobs").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


def test_workers_page_says_when_the_result_backend_keeps_no_heartbeats(
        kernel: Kernel, make_client: Callable[..., TestClient],
        monkeypatch: pytest.MonkeyPatch) -> None:
    caps = type(kernel.results).capabilities
    if hasattr(caps, "heartbeats"):  # SQLite keeps them since issue 18: take them away
        monkeypatch.setattr(type(kernel.results), "capabilities",
                            attrs.evolve(caps, heartbeats=False))
    assert views.live_workers(kernel.results) is None
    html = make_client().get("/workers").text
    assert "Result backend sqlite keeps no worker heartbeats" in html



def test_schedules_page_lists_each_schedule_with_its_state(kernel: Kernel, client: TestClient
                                                            ) -> None:
    from nuvom_kernel import every, task
    from nuvom_kernel.models import ScheduleState

    @task(name="dash_sched_poll", schedule=every(seconds=30))
    def poll() -> None: ...

    assert "No schedules" not in client.get("/schedules").text
    now = time.time()
    kernel.results.advance_schedule(None, ScheduleState(
        name="dash_sched_poll", updated_at=now, last_run=now - 30, missed=2, skipped=1))
    html = client.get("/schedules").text
    row = re.search(r'<a href="/jobs\?task=dash_sched_poll">dash_sched_poll</a>(.*?)</tr>',
                    html, re.S)
    assert row, html
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[-2:] == ["2", "1"], cells  # missed, skipped
    assert cells[2] != "-" and cells[3] != "-", "next and last run are shown"


def test_the_list_shows_and_filters_recorded_states_and_running_is_the_queues(
        kernel: Kernel, client: TestClient) -> None:
    """No record is ever RUNNING (one is written when an attempt settles): a job in its
    second attempt has a RETRYING record while its lease says RUNNING. The list labels its
    column as the record's, its page says RUNNING, and ``status=running`` says where to look
    instead of listing nothing."""
    kernel.queue.enqueue(Message(id="long-job", body=b"{}"))
    kernel.results.put(record("long-job", JobStatus.RETRYING))
    assert kernel.queue.claim(1), "a worker runs its second attempt"
    running = client.get("/jobs?status=running")
    assert running.status_code == 400, "it listed nothing, whatever ran"
    assert "no record is RUNNING" in running.text
    assert "The overview counts running jobs per queue" in running.text
    listed = client.get("/jobs").text
    assert ">recorded state</th>" in listed and ">RETRYING</span>" in listed
    assert re.findall(r'<option value="([a-z]*)"', listed) == [
        "", "queued", "retrying", "succeeded", "failed", "cancelled"]
    page = client.get("/jobs/long-job").text
    assert '<span class="status running">RUNNING</span>' in page
    assert "its record says RETRYING" in page
    assert _row(client.get("/").text, "default")[2] == "1", "the overview counts it running"


def test_a_lone_surrogate_in_arguments_results_or_attempts_is_shown_escaped(
        kernel: Kernel, client: TestClient) -> None:
    """Text decoded with ``surrogateescape`` (a file name from ``os.listdir``) is valid in
    a task's arguments and result, but has no UTF-8 form: the page was a 500."""
    kernel.results.put_many([
        record("surrogate", JobStatus.SUCCEEDED, args=["caf\udce9.txt"],
               kwargs={"name": "caf\udce9"}, result={"path": "caf\udce9.txt"},
               history=[{"attempt": 1, "kind": "error", "worker": "w",
                         "error_type": "OSError", "error_message": "no caf\udce9.txt"}]),
        record("plain", JobStatus.SUCCEEDED, args=["café"], result="café")])
    page = client.get("/jobs/surrogate")
    assert page.status_code == 200
    assert page.text.count("caf\\udce9") == 4  # args, kwargs, result, the attempt's error
    plain = client.get("/jobs/plain").text
    assert plain.count("café") == 2, "other non-ASCII text stays as it is"
    assert client.get("/jobs").status_code == 200


def test_a_jobs_values_are_shown_as_the_task_saw_them_not_in_their_stored_form(
        kernel: Kernel, client: TestClient) -> None:
    """A tuple, a date, bytes or a set were shown as the wire form's tagged objects
    (``{"__nuvom__": ["tuple", [1, 2]]}``); ``get()`` and ``inspect job`` decode them."""
    import datetime as dt

    from nuvom_kernel.serialization import to_wire

    kernel.results.put_many([
        record("typed", JobStatus.SUCCEEDED, args=to_wire([(1, 2), b"ab"]),
               kwargs=to_wire({"day": dt.date(2026, 1, 2)}), result=to_wire({3, 4})),
        record("newer", JobStatus.SUCCEEDED, args=[{"__nuvom__": ["nosuch", 1]}])])
    page = client.get("/jobs/typed").text
    assert "__nuvom__" not in page
    assert "args = [(1, 2), b&#39;ab&#39;]" in page
    assert "kwargs = {&#39;day&#39;: datetime.date(2026, 1, 2)}" in page
    assert "{3, 4}" in page
    newer = client.get("/jobs/newer")
    assert newer.status_code == 200
    assert "it does not decode: SerializationError" in newer.text
    assert "nosuch" in newer.text


def test_a_value_too_large_to_format_is_shown_in_its_stored_form(
        kernel: Kernel, client: TestClient) -> None:
    """Decoding and formatting a 15 MB result took seconds per view, to be clipped to
    ``CLIP_CHARS``: past ``PRETTY_CHARS`` the stored JSON is shown, as before."""
    from nuvom_kernel.serialization import to_wire

    kernel.results.put_many([record(
        "big", JobStatus.SUCCEEDED, result=to_wire({"a_pair": (1, 2),
                                                    "blob": "x" * views.PRETTY_CHARS}))])
    page = client.get("/jobs/big").text
    assert "__nuvom__" in page and "more characters" in page
