"""Which files the AST discoverer walks into, on real trees written into tmp_path: build
output and environments left out, ``.nuvomignore`` read as git reads it, and what cannot be
read (a directory) or must not be read (a FIFO) handled without hiding or hanging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nuvom_kernel.discovery import DiscoveryReport
from nuvom_plugins.discovery import AstDiscoverer
from nuvom_plugins.discovery.scanner import DEFAULT_SKIP_DIRS

ONE = "from nuvom_kernel import task\n\n@task\ndef {}(): ...\n"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def found(root: Path) -> list[tuple[str, str]]:
    report, _ = AstDiscoverer().discover(root)
    assert report.errors == [] and report.warnings == [], report.errors + report.warnings
    return sorted((t.name, t.module) for t in report.tasks)


def test_build_output_is_skipped_but_packages_named_build_or_dist_are_not(tmp_path: Path
                                                                         ) -> None:
    """``pip install .`` leaves ``build/lib/myapp/tasks.py``, a copy scanned first in path
    order: the manifest sent workers to ``build.lib.myapp.tasks``, stale code or no code."""
    write(tmp_path, {
        "myapp/__init__.py": "", "myapp/tasks.py": ONE.format("report"),
        "build/lib/myapp/__init__.py": "", "build/lib/myapp/tasks.py": ONE.format("report"),
        "build/bdist.linux-x86_64/wheel/myapp/tasks.py": ONE.format("report"),
        "dist/myapp/tasks.py": ONE.format("report"),  # a bundler's output
        "myapp.egg-info/tasks.py": ONE.format("report"),
        # packages of the project that happen to be called so (__init__.py): scanned
        "myapp/build/__init__.py": "", "myapp/build/jobs.py": ONE.format("compile_assets"),
        "myapp/build/lib/jobs.py": ONE.format("link"),
        "tools/dist/__init__.py": "", "tools/dist/upload.py": ONE.format("upload"),
    })
    assert found(tmp_path) == [("compile_assets", "myapp.build.jobs"),
                               ("link", "myapp.build.lib.jobs"),
                               ("report", "myapp.tasks"),
                               ("upload", "tools.dist.upload")]


def test_a_conda_environment_in_the_project_is_skipped(tmp_path: Path) -> None:
    """``conda create -p ./env`` writes ``conda-meta/``, no ``pyvenv.cfg``: its whole
    standard library was parsed, the syntax errors of its test files included."""
    write(tmp_path, {
        "tasks.py": ONE.format("real"),
        "env/conda-meta/history": "",
        "env/lib/python3.11/site.py": ONE.format("from_env"),
        "env/lib/python3.11/test/bad_syntax.py": "def (\n",
    })
    assert found(tmp_path) == [("real", "tasks")]


FILES = ["foo/tasks.py", "foo/drop.py", "gen/tasks.py", "a/gen/tasks.py", "a/gen/x.py",
         "vendor/ours/tasks.py", "vendor/theirs/tasks.py"]


@pytest.mark.parametrize(("ignore", "dropped"), [
    # git keeps foo/tasks.py: `foo/**` excludes what is inside foo/, not foo/ itself
    ("foo/**\n!foo/tasks.py\n", ["foo/drop.py"]),
    ("**/gen/**\n!**/gen/tasks.py\n", ["a/gen/x.py"]),
    # ... but it excludes the folders inside, and nothing in an excluded folder comes back
    ("vendor/**\n!vendor/ours/**\n", ["vendor/ours/tasks.py", "vendor/theirs/tasks.py"]),
    ("foo/\n!foo/tasks.py\n", ["foo/drop.py", "foo/tasks.py"]),
    ("*\n!*/\n!tasks.py\n", ["a/gen/x.py", "foo/drop.py"]),
])
def test_nuvomignore_negations_follow_git(tmp_path: Path, ignore: str, dropped: list[str]
                                          ) -> None:
    """Each case is what ``git ls-files --others --exclude-standard`` leaves out under the
    same patterns in ``.gitignore``."""
    write(tmp_path, {rel: "x = 1\n" for rel in FILES})
    write(tmp_path, {".nuvomignore": ignore})
    _, state = AstDiscoverer().discover(tmp_path)
    assert sorted(state["files"]) == sorted(set(FILES) - set(dropped))


def test_a_pattern_that_is_no_glob_is_named_and_only_it_is_left_out(tmp_path: Path
                                                                   ) -> None:
    """``[z-a].py`` (a range backwards): the scan failed with pathspec's regex error, naming
    neither the pattern nor ``.nuvomignore``, and from ``--exclude`` likewise."""
    write(tmp_path, {rel: "x = 1\n" for rel in FILES})
    write(tmp_path, {".nuvomignore": "[z-a].py\n\\\nvendor/\n"})  # (and pathspec's own)
    report, state = AstDiscoverer().discover(tmp_path)
    assert sorted(state["files"]) == sorted(f for f in FILES if not f.startswith("vendor/"))
    assert report.errors[0] == (".nuvomignore pattern '[z-a].py' is no valid glob (bad "
                                "character range z-a at position 10); fix or remove it; it "
                                "is left out")
    assert len(report.errors) == 2 and report.errors[1].startswith(
        ".nuvomignore pattern '\\\\' is no valid glob"), report.errors
    with pytest.raises(ValueError, match=r"^--exclude/--include pattern '\[z-a\].py' is no "
                                         r"valid glob"):
        AstDiscoverer().discover(tmp_path, exclude=["[z-a].py"])


def test_a_fifo_named_py_is_skipped_rather_than_read_forever(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    write(tmp_path, {"a.py": ONE.format("t")})
    os.mkfifo(tmp_path / "pipe.py")
    reports: list[DiscoveryReport] = []
    scan = threading.Thread(target=lambda: reports.append(AstDiscoverer().discover(tmp_path)[0]),
                            daemon=True)
    scan.start()
    scan.join(10)
    if scan.is_alive():  # blocked opening the FIFO: a writer lets it go, then fail
        os.close(os.open(tmp_path / "pipe.py", os.O_WRONLY | os.O_NONBLOCK))
        scan.join(10)
        pytest.fail("discovery blocked reading a FIFO named pipe.py")
    [report] = reports
    assert [t.name for t in report.tasks] == ["t"] and report.files_scanned == 1
    assert report.errors == []


#: Drops the capabilities that let root read anything, so permissions apply as to a user.
AS_USER = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
           "--bounding-set=-dac_override,-dac_read_search"]
DISCOVER = ("import json, sys\nfrom nuvom_plugins.discovery import AstDiscoverer\n"
            "r, _ = AstDiscoverer().discover(sys.argv[1])\n"
            "print(json.dumps({'tasks': [t.name for t in r.tasks], 'errors': r.errors}))\n")


def _discover_as_a_user(root: Path) -> dict[str, list[str]]:
    """The scan run with a user's permissions: in this process, or as root through setpriv
    (skipped where setpriv cannot drop them)."""
    command = [sys.executable, "-c", DISCOVER, str(root)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None or subprocess.run(
                [*AS_USER, "true"], capture_output=True, check=False).returncode != 0:
            pytest.skip("running as root and setpriv cannot drop its file capabilities")
        command = [*AS_USER, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_an_unreadable_directory_is_an_error_like_an_unreadable_file(tmp_path: Path) -> None:
    """Its tasks were missed without a word (exit 0), where an unreadable file is an error."""
    write(tmp_path, {"a.py": ONE.format("visible"), "secret/b.py": ONE.format("hidden")})
    (tmp_path / "secret").chmod(0)
    try:
        result = _discover_as_a_user(tmp_path)
    finally:
        (tmp_path / "secret").chmod(0o755)
    assert result["tasks"] == ["visible"]
    [error] = result["errors"]
    assert error.startswith("secret/: cannot read this directory: Permission denied"), error


def test_the_readme_lists_every_folder_skipped_by_default() -> None:
    """The user docs say which folders are never scanned; they cannot drift from the code."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Discovery", 1)[1]
    for name in (*DEFAULT_SKIP_DIRS, "*.egg-info", "pyvenv.cfg", "conda-meta/", ".nuvomignore"):
        assert f"`{name}`" in section, f"nuvom_plugins/README.md does not mention {name}"
