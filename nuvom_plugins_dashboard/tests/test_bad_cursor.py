"""A page cursor (``after=``) that no page link writes is a 400 saying what is wrong with
it and how to page instead, on ``/jobs`` and ``/queued``, over a real SQLite store.

``inf|x`` passed the old check (``float()`` reads ``inf``) and the store ordered against
it: ``/jobs`` showed its first page as if it were a later one, ``/queued`` an empty one,
with no word of the cursor; ``inf`` and ``x`` were refused without saying how to go on."""

from __future__ import annotations

import html as htmllib
import re
import time

import pytest
from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import Message

#: Cursor (as the URL carries it), what the page says is wrong with it.
MALFORMED = [
    ("inf", "it has no '|' between a time and a job id"),
    ("x", "it has no '|' between a time and a job id"),
    ("inf%7Cx", "its time 'inf' is not a finite number"),
    ("-inf%7Cx", "its time '-inf' is not a finite number"),
    ("1e999%7Cx", "its time '1e999' is not a finite number"),  # float() makes it inf
    ("nan%7Cx", "its time 'nan' is not a finite number"),
    ("5_0%7Cx", "its time '5_0' is not a finite number"),  # float() reads 50.0
    ("%7Cx", "its time '' is not a finite number"),
]

#: Page, how its refusal says to page instead.
PAGES = [
    ("/jobs", "as the page's 'older »' link writes it: follow that link, or drop after= "
              "to start at the newest job"),
    ("/queued", "as this page's 'newer »' link writes it: follow that link, or drop after= "
                "to start at the oldest job"),
]


def _message(page: str) -> str:
    found = re.search(r'<p class="error">(.*?)</p>', page, re.S)
    assert found, "the page has no error message"
    return htmllib.unescape(found.group(1))


@pytest.mark.parametrize("path, how", PAGES, ids=[p for p, _ in PAGES])
@pytest.mark.parametrize("cursor, why", MALFORMED, ids=[c for c, _ in MALFORMED])
def test_a_malformed_cursor_is_a_400_saying_why_and_how_to_page(
        kernel: Kernel, client: TestClient, path: str, how: str, cursor: str,
        why: str) -> None:
    now = time.time()
    kernel.results.put_many([record(f"j{i}", updated_at=now - i) for i in range(3)])
    kernel.queue.enqueue_many([Message(id=f"m{i}", body=b"{}", queue="q",
                                       created_at=now - 10 + i) for i in range(3)])
    response = client.get(f"{path}?after={cursor}")
    assert response.status_code == 400, (cursor, response.text[:300])
    assert "<h1>Bad request</h1>" in response.text
    message = _message(response.text)
    shown = cursor.replace("%7C", "|")
    assert message.startswith(f"after: malformed page cursor {shown!r}: {why}"), message
    assert how in message
