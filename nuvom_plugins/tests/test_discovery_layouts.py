"""Discovery names modules the way Python imports them (issue 12, point 4): one real project
tree per layout, scanned by the real ``nuvom discover tasks`` run from the project folder.

For each layout the test then imports every module the manifest names, in a fresh
interpreter whose ``sys.path`` is exactly what installing the project gives (the project
folder for a flat layout, ``src/`` for a src layout, each project's package folder in a
monorepo) and nothing else, and checks the task registered from the file the manifest
names. A manifest saying ``src.shop.tasks`` fails there, as it fails in a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: The ``nuvom`` console script next to this interpreter: what a user runs.
NUVOM = Path(sys.executable).parent / "nuvom"


def user_env() -> dict[str, str]:
    """A user's shell: no NUVOM_* from the test run, no PYTHONPATH to hide import paths."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("NUVOM_") and k != "PYTHONPATH"}


def run_nuvom(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NUVOM), *args], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def _task(name: str) -> str:
    return f"from nuvom_kernel import task\n\n\n@task\ndef {name}(x):\n    return x\n"


SETUPTOOLS_SRC = ('[project]\nname = "{name}"\nversion = "0"\n\n'
                  '[tool.setuptools.packages.find]\nwhere = ["src"]\n')

#: layout -> (files, {task: module}, folders an install puts on sys.path)
LAYOUTS: dict[str, tuple[dict[str, str], dict[str, str], list[str]]] = {
    "flat": (
        {"tasks.py": _task("add"), "app/__init__.py": "", "app/jobs.py": _task("send")},
        {"add": "tasks", "send": "app.jobs"},
        ["."],
    ),
    "src": (
        {"pyproject.toml": SETUPTOOLS_SRC.format(name="shop"),
         "src/shop/__init__.py": "", "src/shop/tasks.py": _task("charge"),
         "scripts/nightly.py": _task("nightly")},  # outside the package: from the root
        {"charge": "shop.tasks", "nightly": "scripts.nightly"},
        ["src", "."],
    ),
    "src_without_pyproject": (
        {"src/shop/__init__.py": "", "src/shop/tasks.py": _task("charge")},
        {"charge": "shop.tasks"},
        ["src"],
    ),
    "nested": (
        {"app/__init__.py": "", "app/api/__init__.py": "", "app/api/v1/__init__.py": "",
         "app/api/v1/tasks.py": _task("render"), "app/api/v1/reports/__init__.py": _task(
             "report")},
        {"render": "app.api.v1.tasks", "report": "app.api.v1.reports"},
        ["."],
    ),
    "namespace": (  # PEP 420: acme has no __init__.py; poetry's spelling of the src layout
        {"pyproject.toml": '[tool.poetry]\nname = "acme-billing"\n'
                           'packages = [{include = "acme", from = "src"}]\n',
         "src/acme/billing/__init__.py": "", "src/acme/billing/tasks.py": _task("invoice"),
         "src/acme/mail.py": _task("mail")},
        {"invoice": "acme.billing.tasks", "mail": "acme.mail"},
        ["src"],
    ),
    "monorepo": (  # two projects, two build tools, one scan from the repository root
        {"services/api/pyproject.toml": SETUPTOOLS_SRC.format(name="api"),
         "services/api/src/api_svc/__init__.py": "",
         "services/api/src/api_svc/tasks.py": _task("handle"),
         "libs/common/pyproject.toml": '[project]\nname = "common"\nversion = "0"\n\n'
                                       '[tool.hatch.build.targets.wheel]\n'
                                       'packages = ["lib/common"]\n',
         "libs/common/lib/common/__init__.py": "",
         "libs/common/lib/common/jobs.py": _task("cleanup")},
        {"handle": "api_svc.tasks", "cleanup": "common.jobs"},
        ["services/api/src", "libs/common/lib"],
    ),
    "src_is_a_package": (  # src/__init__.py: the code says `from src.jobs import x`
        {"src/__init__.py": "", "src/jobs.py": _task("heartbeat")},
        {"heartbeat": "src.jobs"},
        ["."],
    ),
    "package_with_tool_pyproject": (  # a pyproject.toml that only configures a tool
        {"app/__init__.py": "", "app/pyproject.toml": "[tool.ruff]\nline-length = 100\n",
         "app/jobs.py": _task("beat")},
        {"beat": "app.jobs"},
        ["."],
    ),
}

CHECK = textwrap.dedent("""
    import importlib, json, sys
    from pathlib import Path
    from nuvom_kernel.registry import REGISTRY
    tasks, paths = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    sys.path[:0] = paths
    for task in tasks:
        module = importlib.import_module(task["module"])
        fn = REGISTRY.get(task["name"])
        assert fn is not None, f"{task['module']} registers no task {task['name']!r}"
        assert Path(module.__file__).resolve() == Path(task["file"]).resolve(), (
            f"{task['module']} is {module.__file__}, the manifest says {task['file']}")
        assert fn.fn.__module__ == task["module"], fn.fn.__module__
    print("ok")
""")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_manifest_modules_import_as_installed(tmp_path: Path, layout: str) -> None:
    files, expected, install_paths = LAYOUTS[layout]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / ".nuvom" / "manifest.json").read_text())
    assert {t["name"]: t["module"] for t in manifest["tasks"]} == expected

    tasks = [{**t, "file": str(tmp_path / t["file"])} for t in manifest["tasks"]]
    paths = [str((tmp_path / p).resolve()) for p in install_paths]
    check = subprocess.run(  # -I: no cwd, no PYTHONPATH on sys.path; only the install's paths
        [sys.executable, "-I", "-c", CHECK, json.dumps(tasks), json.dumps(paths)],
        cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=60,
        check=False)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "ok"


def test_editing_pyproject_renames_cached_modules(tmp_path: Path) -> None:
    """Module names are not cached with a file's parse: a new package folder in
    pyproject.toml renames modules whose own bytes did not change."""
    (tmp_path / "lib" / "shop").mkdir(parents=True)
    (tmp_path / "lib" / "shop" / "tasks.py").write_text(_task("charge"))
    assert run_nuvom(["discover", "tasks"], tmp_path).returncode == 0
    first = json.loads((tmp_path / ".nuvom" / "manifest.json").read_text())
    assert first["tasks"][0]["module"] == "lib.shop.tasks"
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = {"" = "lib"}\n')
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "moved from lib.shop.tasks.charge" in done.stdout
    second = json.loads((tmp_path / ".nuvom" / "manifest.json").read_text())
    assert second["tasks"][0]["module"] == "shop.tasks"


def test_unreadable_pyproject_is_a_warning_and_the_layout_decides(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.setuptools\n")
    (tmp_path / "src" / "shop").mkdir(parents=True)
    (tmp_path / "src" / "shop" / "tasks.py").write_text(_task("charge"))
    done = run_nuvom(["discover", "tasks"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pyproject.toml: cannot read its package folders" in done.stderr
    manifest = json.loads((tmp_path / ".nuvom" / "manifest.json").read_text())
    assert manifest["tasks"][0]["module"] == "shop.tasks"
