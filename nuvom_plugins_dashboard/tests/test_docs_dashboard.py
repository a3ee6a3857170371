"""``docs/observability.md``'s Dashboard section cannot drift from the command and the app:
every option, every page URL and every screenshot it shows."""

from __future__ import annotations

import re
from pathlib import Path

from nuvom_plugins_dashboard.cli import dashboard

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _section() -> str:
    text = (DOCS / "observability.md").read_text(encoding="utf-8")
    assert "\n## Dashboard\n" in text, "docs/observability.md has no Dashboard section"
    return text.split("\n## Dashboard\n", 1)[1].split("\n## ", 1)[0]


def test_every_option_of_the_command_is_documented() -> None:
    section = _section()
    for param in dashboard.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt != "--log-level":
                assert opt in section, f"nuvom dashboard {opt} is not in the docs"
    assert "NUVOM_PLUGINS__DASHBOARD__TOKEN" in section


def test_every_page_is_documented_and_every_screenshot_exists() -> None:
    section = _section()
    for url in ("`/`", "`/jobs`", "`/jobs/<id>`", "`/workers`"):
        assert f"| {url} |" in section
    images = re.findall(r"\]\((images/[^)]+)\)", section)
    assert len(images) >= 3
    for image in images:
        assert (DOCS / image).is_file(), f"{image} is missing"
