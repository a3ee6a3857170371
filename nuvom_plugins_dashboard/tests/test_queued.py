"""``/queued``: what is in a queue now (``QueueBackend.browse``) over a real SQLite store —
a job a worker holds, one waiting out a retry delay, delayed and ready ones — oldest first,
filtered by state, keyset paged by the next link, escaped, linked from the overview; and a
queue backend that cannot list its messages says so instead of failing."""

from __future__ import annotations

import html as htmllib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dash_fixtures import BASE_URL
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from nuvom_kernel import hookimpl
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import Message
from nuvom_kernel.testing.stubs import StubQueue
from nuvom_kernel.views import WorkerInfo
from nuvom_plugins_dashboard import create_app, queued

PAYLOAD = "<script>alert('x')</script>"


def _rows(page: str) -> list[dict[str, str]]:
    """The listed jobs, each as its cells (tags stripped, entities decoded)."""
    body = re.search(r'<section id="queued".*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, "the page has no list of queued jobs"
    names = ["id", "task", "queue", "state", "priority", "created", "due", "failures",
             "deliveries", "lease", "worker"]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S):
        cells = [htmllib.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if len(cells) == len(names):
            rows.append(dict(zip(names, cells, strict=True)))
    return rows


def _next(page: str) -> str | None:
    link = re.search(r'<a rel="next" href="([^"]+)"', page)
    return htmllib.unescape(link.group(1)) if link else None


def _fill(kernel: Kernel) -> None:
    """Queue ``emails``: ``e0`` held by a worker, ``e1`` waiting out a 55 s retry delay,
    ``e2`` ready, ``e3`` delayed 10 min before its first run; queue ``reports``: ``r0``."""
    now = time.time()
    kernel.queue.enqueue_many([
        Message(id="e0", body=b"{}", queue="emails", task="tasks.send", created_at=now - 40),
        Message(id="e1", body=b"{}", queue="emails", task="tasks.send", created_at=now - 30),
        Message(id="e2", body=b"{}", queue="emails", task="tasks.send", created_at=now - 20),
        Message(id="e3", body=b"{}", queue="emails", task="tasks.later", created_at=now - 10,
                available_at=now + 600, priority=5),
        Message(id="r0", body=b"{}", queue="reports", task="tasks.report",
                created_at=now - 35)])
    held = kernel.queue.claim(2, ["emails"])  # a worker's claims, oldest first
    assert [lease.message.id for lease in held] == ["e0", "e1"]
    assert kernel.queue.retry(held[1], delay_secs=55)  # e1 failed: RETRYING for 55 s


def test_a_queue_is_listed_oldest_first_with_each_jobs_state(kernel: Kernel,
                                                              client: TestClient) -> None:
    _fill(kernel)
    response = client.get("/queued?queue=emails")
    assert response.status_code == 200
    rows = _rows(response.text)
    assert [(r["id"], r["state"]) for r in rows] == [
        ("e0", "RUNNING"), ("e1", "RETRYING"), ("e2", "QUEUED"), ("e3", "QUEUED")]
    e0, e1, e2, e3 = rows
    assert re.fullmatch(r"in \d+ s", e0["lease"]) and e0["due"] == "-"
    assert e0["deliveries"] == "1" and e0["failures"] == "0"
    assert re.fullmatch(r"in 5\d s", e1["due"]) and e1["lease"] == "-"
    assert (e1["failures"], e1["deliveries"]) == ("1", "1")
    assert (e2["due"], e2["lease"], e2["deliveries"]) == ("-", "-", "0")
    assert e3["task"] == "tasks.later" and e3["priority"] == "5"
    assert e3["due"] in ("in 10 min", "in 9 min")
    assert e0["created"].endswith(" UTC") and {r["queue"] for r in rows} == {"emails"}
    assert 'href="/jobs/e0"' in response.text, "each id links to its job's page"
    assert 'href="/jobs?queue=emails"' in response.text, "and the queue's records are linked"
    every = _rows(client.get("/queued").text)
    assert [r["id"] for r in every] == ["e0", "r0", "e1", "e2", "e3"]


def test_a_running_job_names_its_worker_from_the_heartbeats(kernel: Kernel,
                                                             client: TestClient) -> None:
    _fill(kernel)
    now = time.time()
    kernel.results.heartbeat(WorkerInfo(id="web-1:42:ab12cd", host="web-1", pid=42,
                                        slots=2, busy_slots=1, heartbeat_at=now,
                                        running={"e0": now - 3}), 60)
    rows = {r["id"]: r for r in _rows(client.get("/queued?queue=emails").text)}
    assert rows["e0"]["worker"] == "web-1:42:ab12cd", rows["e0"]
    assert {rows[i]["worker"] for i in ("e1", "e2", "e3")} == {"-"}


def test_the_state_filter_and_the_overview_links_to_it(kernel: Kernel,
                                                        client: TestClient) -> None:
    _fill(kernel)
    running = _rows(client.get("/queued?queue=emails&state=running").text)
    assert [r["id"] for r in running] == ["e0"]
    waiting = client.get("/queued?queue=emails&state=queued&state=retrying").text
    assert [r["id"] for r in _rows(waiting)] == ["e1", "e2", "e3"]
    assert re.findall(r'value="(\w+)" checked', waiting) == ["queued", "retrying"]
    assert [r["id"] for r in _rows(client.get("/queued?state=RETRYING").text)] == ["e1"]
    none = client.get("/queued?queue=reports&state=running").text
    assert _rows(none) == [] and "No job running in queue reports." in none

    overview = client.get("/").text
    row = re.search(r'<td><a href="/jobs\?queue=emails">emails</a></td>(.*?)</tr>',
                    overview, re.S)
    assert row, "the queue's name still links to its records"
    ready, delayed, held = re.findall(r'<td class="num">(?:<a href="([^"]*)"[^>]*>)?(\d+)',
                                      row.group(1))[:3]
    assert ready == ("/queued?queue=emails&amp;state=queued&amp;state=retrying", "1")
    assert delayed == (ready[0], "2") and held == ("/queued?queue=emails&amp;state=running", "1")
    assert [r["id"] for r in _rows(client.get(htmllib.unescape(held[0])).text)] == ["e0"]
    reports = re.search(r'<td><a href="/jobs\?queue=reports">reports</a></td>(.*?)</tr>',
                        overview, re.S)
    assert reports and '<td class="num">0</td>' in reports.group(1), "no link to nothing"


def test_pages_follow_the_next_link_without_gaps_or_repeats(kernel: Kernel,
                                                             client: TestClient) -> None:
    now = time.time()
    kernel.queue.enqueue_many([Message(id=f"j{i:02d}", body=b"{}", queue="bulk", task="t",
                                       created_at=now - 100 + i) for i in range(8)])
    assert kernel.queue.claim(1)[0].message.id == "j00"  # held: filtered out below
    seen, url, pages = [], "/queued?queue=bulk&state=queued&limit=3", 0
    while url:
        page = client.get(url).text
        seen += [r["id"] for r in _rows(page)]
        assert len(_rows(page)) <= 3
        if pages:
            assert re.search(r'<a href="/queued\?queue=bulk&amp;state=queued&amp;limit=3">'
                             r"« oldest</a>", page), "later pages link back to the first"
        url, pages = _next(page), pages + 1
        assert url is None or ("state=queued" in url and "limit=3" in url)
    assert seen == [f"j{i:02d}" for i in range(1, 8)] and pages == 3


@pytest.mark.parametrize("url, says", [
    ("/queued?state=failed", "state=&#39;failed&#39; is not a state of a job in a queue"),
    ("/queued?limit=0", "limit=&#39;0&#39; is not a page size"),
    ("/queued?limit=ten", "limit=&#39;ten&#39; is not a page size"),
    ("/queued?after=nonsense", "malformed page cursor"),
    ("/queued?after=nan%7Cx", "malformed page cursor"),
    ("/queued?queue=a%00", "queue holds a NUL character"),
    ("/queued?after=1%7C%00", "after holds a NUL character"),
])
def test_bad_query_parameters_are_a_400_saying_what_works(client: TestClient, url: str,
                                                          says: str) -> None:
    response = client.get(url)
    assert response.status_code == 400
    assert says in response.text


def test_hostile_ids_tasks_and_queue_names_are_shown_as_text(kernel: Kernel,
                                                              client: TestClient) -> None:
    kernel.queue.enqueue(Message(id=f"id-{PAYLOAD}", body=b"{}", queue=f"q{PAYLOAD}",
                                 task=f"tasks.{PAYLOAD}"))
    quoted = re.sub(r"[^A-Za-z0-9_.~-]", lambda m: f"%{ord(m.group()):02X}", f"id-{PAYLOAD}")
    overview = client.get("/").text
    link = re.search(r'<a href="(/queued\?queue=q[^"]+)"', overview)
    assert link, "the overview links the hostile queue's count"
    for url in ("/queued", htmllib.unescape(link.group(1))):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "<script>alert" not in response.text, f"{url} shows the payload as markup"
        rows = _rows(response.text)
        assert [(r["id"], r["task"], r["queue"]) for r in rows] == [
            (f"id-{PAYLOAD}", f"tasks.{PAYLOAD}", f"q{PAYLOAD}")]
        assert f'href="/jobs/{quoted}"' in response.text
    assert client.get(f"/jobs/{quoted}").status_code == 200


def test_a_live_refresh_swaps_the_list_only_when_it_changed(kernel: Kernel,
                                                             client: TestClient) -> None:
    kernel.queue.enqueue(Message(id="w1", body=b"{}", queue="emails", task="t"))
    page = client.get("/queued?queue=emails").text
    section = re.search(r'hx-get="([^"]+)"[^>]*"X-Nuvom-Seen": "([0-9a-f]+)"', page)
    assert section, "the list refreshes itself"
    url, seen = htmllib.unescape(section.group(1)), section.group(2)
    assert url == "/queued?queue=emails"
    headers = {"HX-Request": "true", "X-Nuvom-Seen": seen}
    idle = client.get(url, headers=headers)
    assert idle.headers["hx-reswap"] == "none" and "<table" not in idle.text
    assert 'id="queued-as-of"' in idle.text
    assert kernel.queue.claim(1)  # a worker takes w1: the list changed
    changed = client.get(url, headers=headers)
    assert "hx-reswap" not in changed.headers
    assert changed.text.startswith('<section id="queued"') and "RUNNING" in changed.text


def test_a_store_that_cannot_be_read_is_a_503(kernel: Kernel, client: TestClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_args: object, **_kwargs: object) -> None:
        raise EnqueueError("cannot reach the queue store")

    monkeypatch.setattr(kernel.queue, "browse", down)
    response = client.get("/queued?queue=emails")
    assert response.status_code == 503
    assert "The job store cannot be read" in response.text
    assert "EnqueueError: cannot reach the queue store" in response.text
    refresh = client.get("/queued?queue=emails", headers={"HX-Request": "true"})
    assert refresh.status_code == 503
    assert refresh.text == "EnqueueError: cannot reach the queue store"


class _NoBrowse(StubQueue):
    """A queue backend from before ``browse``: the base class's refusal."""

    name = "no-browse"

    def browse(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"queue backend {self.name!r} cannot list its messages")


class _NoBrowsePlugin:
    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type[StubQueue]]:
        return [_NoBrowse]


@pytest.fixture
def no_browse(project: Path) -> Iterator[Kernel]:
    k = Kernel(root=project, plugins={"no-browse": _NoBrowsePlugin()},
               environ={"NUVOM_QUEUE_BACKEND": "no-browse", "NUVOM_RESULT_BACKEND": "sqlite"})
    yield k
    k.close()


def test_a_backend_that_cannot_list_its_messages_is_said_in_one_sentence(
        no_browse: Kernel) -> None:
    no_browse.queue.enqueue(Message(id="m1", body=b"{}", queue="emails"))
    with TestClient(create_app(no_browse), base_url=BASE_URL) as client:
        response = client.get("/queued?queue=emails")
        assert response.status_code == 200
        assert ('<p class="warning">Queue backend no-browse cannot list the jobs in its '
                "queues, so this page cannot show them") in response.text
        assert "data-live" not in response.text.split('<section id="queued"')[1]
        assert client.get("/").status_code == 200, "the overview still counts them"


def test_under_a_mount_every_link_stays_under_it(kernel: Kernel) -> None:
    kernel.queue.enqueue_many([Message(id=f"a/{i}", body=b"{}", queue="emails")
                               for i in range(3)])
    host = Starlette(routes=[Mount("/admin", app=create_app(kernel))])
    with TestClient(host, base_url=BASE_URL) as client:
        page = client.get("/admin/queued?queue=emails&limit=2").text
        urls = [htmllib.unescape(u) for u in
                re.findall(r'\b(?:href|src|action|hx-get)="([^"]*)"', page)]
        assert all(u.startswith("/admin/") for u in urls), urls
        assert "/admin/jobs/a%2F0" in urls and "/admin/queued?queue=emails&limit=2" in urls
        nxt = _next(page)
        assert nxt and nxt.startswith("/admin/queued?")
        assert [r["id"] for r in _rows(client.get(nxt).text)] == ["a/2"]


def test_a_time_no_calendar_holds_is_shown_as_stored(kernel: Kernel,
                                                      client: TestClient) -> None:
    """A hand-edited ``created_at`` (``inf``, or an epoch in milliseconds) made the whole
    page a 500: ``format_time`` raised on it."""
    kernel.queue.enqueue_many([
        Message(id="odd-inf", body=b"{}", queue="odd", task="t", created_at=float("inf")),
        Message(id="odd-ms", body=b"{}", queue="odd", task="t", created_at=1.8e12)])
    response = client.get("/queued?queue=odd")
    assert response.status_code == 200, response.text
    assert [(r["id"], r["created"]) for r in _rows(response.text)] == \
        [("odd-ms", "1800000000000.0"), ("odd-inf", "inf")]


def test_a_listing_that_costs_the_store_time_refreshes_less_often(
        kernel: Kernel, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis scans a queue's delayed and leased sets whole: 0.3-0.4 s of the server at
    100,000 jobs, every 5 s per open tab. The page waits 50 times its listing's cost."""
    kernel.queue.enqueue(Message(id="w1", body=b"{}", queue="emails", task="t"))

    def trigger() -> str:
        found = re.search(r'<section id="queued"[^>]*hx-trigger="every (\d+)s"',
                          client.get("/queued?queue=emails").text)
        assert found, "the list refreshes itself"
        return found.group(1)

    assert trigger() == "5", "a listing of one job keeps the usual 5 s"
    browse = kernel.queue.browse

    def costly(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.35)  # the cost of a Redis scan of 100,000 delayed jobs, not a wait
        return browse(*args, **kwargs)

    monkeypatch.setattr(kernel.queue, "browse", costly)
    assert trigger() == "20"
    assert queued.refresh_secs(0.0) == 5 and queued.refresh_secs(0.11) == 10
    assert queued.refresh_secs(10.0) == 60, "never slower than a minute"
