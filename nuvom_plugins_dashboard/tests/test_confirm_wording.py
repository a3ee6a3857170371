"""The bulk confirmation's sentence reads as a sentence: the filter's terms are separated
by one space and the question mark (or colon) follows the last one directly. It read
"… status=failed task=failing ?" (each term was followed by a space)."""

from __future__ import annotations

import html as htmllib
import re

from dash_fixtures import client as client  # a fixture
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import record
from starlette.testclient import TestClient

from nuvom_kernel.kernel import Kernel


def _text(page: str) -> str:
    """The page's ``<main>`` as a browser shows it: tags dropped, white space collapsed."""
    main = page.split("<main>", 1)[1].split("</main>", 1)[0]
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", main)).split())


def test_the_bulk_question_has_no_space_before_its_mark(kernel: Kernel,
                                                        client: TestClient) -> None:
    kernel.results.put_many([record(f"f{i}", task="failing") for i in range(2)])
    page = client.get("/bulk/retry?status=failed&task=failing")
    assert page.status_code == 200, page.text
    assert "Retry all 2 job(s) listed with status=failed task=failing? Exactly these" \
        in _text(page.text)


def test_nothing_to_act_on_has_no_space_before_its_colon(client: TestClient) -> None:
    page = client.get("/bulk/retry?status=failed&task=none&queue=q")
    assert page.status_code == 200, page.text
    assert "No job is listed with status=failed task=none queue=q: nothing to retry." \
        in _text(page.text)
