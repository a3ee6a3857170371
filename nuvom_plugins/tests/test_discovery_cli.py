"""``nuvom discover tasks`` and ``nuvom list tasks`` through a real kernel and the AST plugin
loaded from its entry point."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import nuvom_kernel.cli.discover as discover_cli
from nuvom_kernel.cli import make_cli
from nuvom_kernel.discovery import read_manifest
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.plugins import DEFAULT_PLUGINS

MODULE = "nuvom_kernel.cli.discover"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "tasks.py").write_text(textwrap.dedent("""
        from nuvom_kernel import task

        @task(retries=2, timeout_secs=30)
        def send_email(to):
            '''Send one email.'''

        @task
        async def resize(path):
            '''Make a thumbnail.'''
    """))
    return tmp_path


def invoke(root: Path, *args: str) -> tuple[int, str, str]:
    extra = {} if MODULE in DEFAULT_PLUGINS else {MODULE: discover_cli}
    kernel = Kernel(root=root, environ={}, plugins=extra)
    try:
        result = CliRunner().invoke(make_cli(kernel), list(args), obj=kernel)
    finally:
        kernel.close()
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_discover_writes_manifest_and_reports_changes(project: Path) -> None:
    code, out, err = invoke(project, "discover", "tasks")
    assert code == 0, err
    assert "added" in out and "send_email" in out and "app/tasks.py:5" in out
    assert "2 task(s): 2 added, 0 removed, 0 changed" in out
    manifest = read_manifest(project / ".nuvom")
    assert manifest is not None and manifest["version"] == 1
    assert [t["name"] for t in manifest["tasks"]] == ["resize", "send_email"]
    assert manifest["tasks"][1]["options"] == {"retries": 2, "timeout_secs": 30}
    assert "ast" in manifest["state"]

    code, out, _ = invoke(project, "discover", "tasks")
    assert "No changes to tasks." in out and "parsed 0" in out

    tasks_py = project / "app" / "tasks.py"
    text = tasks_py.read_text().replace("retries=2", "retries=5")
    tasks_py.write_text(text.replace("async def resize", "async def resize_image"))
    code, out, _ = invoke(project, "discover", "tasks")
    assert "retries: 2 -> 5" in out
    assert "removed" in out and "resize_image" in out
    assert "1 added, 1 removed, 1 changed" in out and "parsed 1" in out


def test_discover_reports_errors_and_exits_1(project: Path) -> None:
    (project / "app" / "broken.py").write_text("import nuvom_kernel\ndef f(:\n")
    code, _, err = invoke(project, "discover", "tasks", "--exclude", "nothing")
    assert code == 1
    assert "error: app/broken.py:2: syntax error" in err
    assert read_manifest(project / ".nuvom") is not None  # written anyway


def test_discover_root_and_globs(project: Path, tmp_path: Path) -> None:
    (project / "app" / "extra.py").write_text(
        "from nuvom_kernel import task\n@task\ndef extra(): ...\n")
    code, out, _ = invoke(project, "discover", "tasks", "--root", str(project),
                          "--include", "app/extra.py")
    assert code == 0 and "1 task(s)" in out and "extra" in out


def test_list_tasks_table_and_json(project: Path) -> None:
    code, out, err = invoke(project, "list", "tasks")
    assert code == 1 and "nuvom discover tasks" in err + out
    invoke(project, "discover", "tasks")
    code, out, _ = invoke(project, "list", "tasks")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "MODULE", "LOCATION", "RETRIES", "TIMEOUT",
                              "DESCRIPTION"]
    assert any(line.split()[:5] == ["send_email", "app.tasks", "app/tasks.py:5", "2", "30"]
               for line in lines)
    code, out, _ = invoke(project, "list", "tasks", "--json")
    rows = json.loads(out)
    assert {r["name"]: r["description"] for r in rows} == {
        "resize": "Make a thumbnail.", "send_email": "Send one email."}
    assert [r["async"] for r in rows] == [True, False]


def test_list_tasks_shows_an_option_given_as_no_literal_as_unknown(project: Path) -> None:
    """``@task(retries=RETRIES)`` listed 0 retries where 3 run: the manifest leaves out
    what it cannot read, and the listing showed the default in its place."""
    (project / "app" / "more.py").write_text(
        "from nuvom_kernel import task\n\nRETRIES, LIMIT = 3, 60\n\n\n"
        "@task(retries=RETRIES, timeout_secs=LIMIT, queue='slow')\n"
        "def crunch():\n    pass\n")
    invoke(project, "discover", "tasks")
    code, out, _ = invoke(project, "list", "tasks")
    assert code == 0
    assert any(line.split()[:5] == ["crunch", "app.more", "app/more.py:7", "?", "?"]
               for line in out.splitlines()), out
    code, out, _ = invoke(project, "list", "tasks", "--json")
    [row] = [r for r in json.loads(out) if r["name"] == "crunch"]
    assert (row["retries"], row["timeout"], row["unread"]) == \
        ("?", "?", ["retries", "timeout_secs"])
    manifest = project / ".nuvom" / "manifest.json"  # edited by hand: "unread" is no list
    data = json.loads(manifest.read_text())
    for task in data["tasks"]:
        task["unread"] = 5
    manifest.write_text(json.dumps(data))
    code, out, err = invoke(project, "list", "tasks")
    assert code == 0 and "crunch" in out, out + err
