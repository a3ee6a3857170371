"""The overview's "failed in the last 5 / 60 min" counts link to the failed jobs of that
same window, over a real SQLite store: ``/jobs`` takes ``minutes`` (what the overview links)
or ``since`` (an epoch, what its own links carry), says so on the page with a link that
clears it, pages within it, and its bulk actions act on that window only.

The links went to every failed job of the queue: the overview said 1 and the page listed 3.
"""

from __future__ import annotations

import html as htmllib
import re
import time

import pytest
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import form_of, record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus


def _ids(html: str) -> list[str]:
    return re.findall(r'<a href="/jobs/[^"]+"><code>([^<]+)</code>', html)


def _href(html: str, pattern: str) -> str | None:
    link = re.search(pattern, html)
    return htmllib.unescape(link.group(1)) if link else None


def _failed_links(html: str, queue: str) -> list[tuple[str, str]]:
    """``(href, count)`` of the failed counts of ``queue``'s overview row, per window."""
    row = re.search(rf'<td><a href="/jobs\?queue={queue}">{queue}</a></td>(.*?)</tr>',
                    html, re.S)
    assert row, f"no overview row for queue {queue!r}"
    return [(htmllib.unescape(h), n) for h, n in re.findall(
        r'<a class="failed" href="([^"]+)"[^>]*>([^<]*)</a>', row.group(1))]


def test_the_overviews_failed_counts_open_the_failed_jobs_of_their_window(
        kernel: Kernel, client: TestClient) -> None:
    now = time.time()
    kernel.results.put_many([
        record("f-2min", queue="emails", updated_at=now - 120),  # in both windows
        record("f-30min", queue="emails", updated_at=now - 1800),  # in the last 60 min
        record("f-2h", queue="emails", updated_at=now - 7200),  # in neither
        record("ok-1min", JobStatus.SUCCEEDED, queue="emails", updated_at=now - 60),
        record("other-1min", queue="reports", updated_at=now - 60)])
    overview = client.get("/").text
    links = _failed_links(overview, "emails")
    assert [n for _, n in links] == ["1", "2"]
    listed = []
    for href, count in links:
        page = client.get(href)
        assert page.status_code == 200, page.text[:300]
        listed.append(_ids(page.text))
        assert len(listed[-1]) == int(count), (href, listed[-1])
        assert "Only records updated since" in page.text, "the page says it lists a window"
        clear = _href(page.text, r'<a href="([^"]+)">Show every time</a>')
        assert clear == "/jobs?status=failed&queue=emails"
        assert _ids(client.get(clear).text) == ["f-2min", "f-30min", "f-2h"]
    assert listed == [["f-2min"], ["f-2min", "f-30min"]]
    # the links name a span, not a moment: an unchanged overview refreshes without a swap
    seen = re.search(r'"X-Nuvom-Seen": "([0-9a-f]+)"', overview)
    assert seen
    idle = client.get("/", headers={"HX-Request": "true", "X-Nuvom-Seen": seen.group(1)})
    assert idle.headers.get("hx-reswap") == "none"


@pytest.mark.parametrize("inside", [120, 100])  # 100: two full pages and no third
@pytest.mark.parametrize("query", ["status=failed", "status=failed&queue=emails"])
def test_a_window_pages_within_itself_and_ends_at_its_edge(
        kernel: Kernel, client: TestClient, query: str, inside: int) -> None:
    """The next link carries the window as ``since`` (an epoch), so a later page does not
    slide with the clock; the listing stops at the first record older than the window
    (the query is newest first), without an empty page after the last."""
    now = time.time()
    kernel.results.put_many(
        [record(f"in-{i:03d}", queue="emails", updated_at=now - 1 - i) for i in range(inside)]
        + [record(f"old-{i:03d}", queue="emails", updated_at=now - 900 - i)
           for i in range(80)])
    seen, url, pages = [], f"/jobs?{query}&minutes=5", 0
    while url:
        html = client.get(url).text
        seen += _ids(html)
        url, pages = _href(html, r'<a rel="next" href="([^"]+)"'), pages + 1
        assert url is None or ("since=" in url and "minutes=" not in url), url
    assert seen == [f"in-{i:03d}" for i in range(inside)] and pages == -(-inside // 50)


def test_a_bulk_action_from_a_window_acts_on_that_window_only(
        kernel: Kernel, client: TestClient) -> None:
    now = time.time()
    kernel.results.put_many([record("recent", updated_at=now - 60),
                             record("older", updated_at=now - 7200)])
    jobs = client.get("/jobs?status=failed&minutes=5").text
    bulk = _href(jobs, r'<a class="button" href="([^"]+)">Retry all listed')
    assert bulk and "since=" in bulk
    confirm = client.get(bulk)
    assert "Retry 1 job(s)" in confirm.text, confirm.text[:2000]
    done = client.post("/bulk/retry", data=form_of(confirm.text))
    assert "since=" in done.headers["location"], "it returns to the window it acted on"
    assert kernel.queue.peek_state("recent") is JobStatus.QUEUED
    assert kernel.queue.peek_state("older") is None


@pytest.mark.parametrize("query, says", [
    ("minutes=0", "minutes='0' is not a number of minutes; use a positive number"),
    ("minutes=five", "minutes='five' is not a number of minutes"),
    ("minutes=inf", "minutes='inf' is not a number of minutes"),
    ("since=yesterday", "since='yesterday' is not a time; use an epoch in seconds"),
    ("since=nan", "since='nan' is not a time"),
    ("since=1712345678&minutes=5", "give since (an epoch) or minutes (the last N minutes), "
                                   "not both"),
])
def test_a_bad_window_is_a_400_saying_what_works(client: TestClient, query: str,
                                                 says: str) -> None:
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 400
    assert says in htmllib.unescape(response.text)


def test_a_window_longer_than_time_lists_everything_and_its_links_work(
        kernel: Kernel, client: TestClient) -> None:
    """``minutes=1e308`` made ``since`` minus infinity: its page answered, and its own
    links (``since=-inf``) were refused."""
    kernel.results.put_many([record(f"j{i}", updated_at=time.time() - i) for i in range(60)])
    jobs = client.get("/jobs?status=failed&minutes=1e308")
    assert jobs.status_code == 200
    older = _href(jobs.text, r'<a rel="next" href="([^"]+)">older')
    assert older and "since=0.0" in older, older
    assert client.get(older).status_code == 200
