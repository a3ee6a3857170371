"""The distributions as a user gets them (issue 21): built with ``python -m build``, checked
by ``twine``, installed from the built folder with **no index**, then the README's quick start.

The distributions are the ``-e ./folder[test]`` lines of ``requirements-dev.txt`` (a new one
joins every check here by its line there). Installs use ``--no-index --find-links``: the name
``nuvom`` belongs to another project on the public index, which these tests must never reach.
Third-party dependencies (pluggy, redis, psycopg, ...) are downloaded into a second folder
first, by name, so the install itself needs no index.
"""

from __future__ import annotations

import email.parser
import importlib
import importlib.metadata
import json
import re
import shlex
import signal
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def distribution_folders() -> list[Path]:
    """Every distribution of the repository, in requirements-dev.txt's order (kernel first)."""
    folders = []
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.startswith("-e "):
            folders.append((ROOT / shlex.split(line)[1].split("[")[0]).resolve())
    return folders


def pyproject(folder: Path) -> dict[str, Any]:
    with open(folder / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


FOLDERS = distribution_folders()
NAMES = {canonicalize_name(pyproject(f)["project"]["name"]) for f in FOLDERS}
PLUGIN_FOLDERS = [f for f in FOLDERS if f != ROOT]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_the_version_has_one_source_the_package(folder: Path) -> None:
    project = pyproject(folder)
    assert "version" not in project["project"], f"{folder.name}: version is written twice"
    assert project["project"]["dynamic"] == ["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    installed = importlib.metadata.version(project["project"]["name"])
    assert getattr(importlib.import_module(module), name) == installed


def test_every_plugin_distribution_has_an_extra_and_all_names_every_one() -> None:
    extras = pyproject(ROOT)["project"]["optional-dependencies"]
    own = {key: {canonicalize_name(Requirement(r).name) for r in reqs}
           for key, reqs in extras.items()}
    plugin_extras = {key: names for key, names in own.items() if names <= NAMES - {"nuvom"}}
    plugins = {canonicalize_name(pyproject(f)["project"]["name"]) for f in PLUGIN_FOLDERS}
    assert set().union(*plugin_extras.values()) == plugins, \
        "each plugin distribution of requirements-dev.txt needs an extra in pyproject.toml"
    (everything,) = extras["all"]
    assert Requirement(everything).name == "nuvom"
    assert Requirement(everything).extras == set(plugin_extras), "`all` must name every extra"
    for folder in PLUGIN_FOLDERS:  # never resolves to the unrelated `nuvom` on the index
        deps = [Requirement(r) for r in pyproject(folder)["project"]["dependencies"]]
        kernel = next(r for r in deps if r.name == "nuvom")
        assert kernel.specifier.contains("0.1.0") and not kernel.specifier.contains("0.11.2")


def test_test_modules_of_the_plugins_have_names_of_their_own() -> None:
    """The plugins' test folders are not packages, so pytest imports their modules by file
    name alone: a second ``test_browse.py`` in another folder stopped the whole run at
    collection ("import file mismatch")."""
    seen: dict[str, Path] = {}
    for folder in PLUGIN_FOLDERS:
        tests = folder / "tests"
        if (tests / "__init__.py").exists():
            continue
        for module in sorted(tests.glob("*.py")):  # helpers are imported by name too
            if module.name == "conftest.py":  # pytest keeps one per folder
                continue
            other = seen.setdefault(module.name, module)
            assert other == module, f"{module} and {other}: rename one of them"


def test_mypy_checks_every_distribution_strictly() -> None:
    mypy = pyproject(ROOT)["tool"]["mypy"]
    assert mypy["strict"] is True
    packages = {"nuvom_kernel"} | {p.parent.name for f in PLUGIN_FOLDERS
                                   for p in (f / "src").glob("*/__init__.py")}
    assert set(mypy["packages"]) == packages, "[tool.mypy] packages: one per distribution"


def test_the_kernel_exposes_its_spi_version() -> None:
    import nuvom_kernel

    assert isinstance(nuvom_kernel.SPI_VERSION, int) and nuvom_kernel.SPI_VERSION >= 1
    proc = subprocess.run([sys.executable, "-m", "nuvom_kernel", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == (f"nuvom, version {nuvom_kernel.__version__} "
                                   f"(plugin SPI {nuvom_kernel.SPI_VERSION})")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every distribution built (sdist, then the wheel from that sdist) into one folder."""
    out = tmp_path_factory.mktemp("wheelhouse")
    for folder in FOLDERS:
        _run([sys.executable, "-m", "build", "--outdir", out, folder], cwd=folder)
    return out


def _third_party_requirements(wheelhouse: Path) -> list[str]:
    """What the built wheels need from elsewhere (extras like ``test`` and ``bench`` left
    out, our own distributions left out)."""
    needed = set()
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            headers = email.parser.Parser().parsestr(zf.read(meta).decode())
        for line in headers.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if canonicalize_name(req.name) in NAMES:
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                req.marker = None
                needed.add(str(req))
    return sorted(needed)


@pytest.mark.slow
def test_every_distribution_builds_an_sdist_and_a_wheel_that_twine_accepts(
        wheelhouse: Path) -> None:
    built = sorted(p.name for p in wheelhouse.iterdir())
    for name in NAMES:
        stem = name.replace("-", "_")
        assert any(re.fullmatch(rf"{stem}-[\d.]+-py3-none-any\.whl", b) for b in built), built
        assert any(re.fullmatch(rf"{stem}-[\d.]+\.tar\.gz", b) for b in built), built
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            assert any(n.endswith("/py.typed") for n in zf.namelist()), f"{wheel.name}: no py.typed"
    _run([sys.executable, "-m", "twine", "check", "--strict", *sorted(wheelhouse.iterdir())],
         cwd=wheelhouse)


def _quick_start() -> tuple[str, str, str]:
    """The README's quick start: ``tasks.py``, the worker command and the ``>>>`` session."""
    section = (ROOT / "README.md").read_text().split("## Quick start, by hand", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    tasks = next(body for lang, body in blocks if lang == "python" and ">>>" not in body)
    session = next(body for lang, body in blocks if lang == "python" and ">>>" in body)
    worker = next(line for lang, body in blocks if lang == "bash"
                  for line in body.splitlines() if line.startswith("nuvom runworker"))
    return tasks, worker, session


def _entry_point_names(folders: list[Path]) -> set[str]:
    return {name for f in folders for name in pyproject(f)["project"]["entry-points"]["nuvom"]}


@pytest.mark.slow
def test_a_fresh_virtualenv_with_no_index_runs_the_readme_quick_start(
        wheelhouse: Path, tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", deps,
          *_third_party_requirements(wheelhouse)], cwd=tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    project = tmp_path / "project"
    project.mkdir()

    def install(spec: str) -> None:
        _run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-index",
              "--find-links", wheelhouse, "--find-links", deps, spec], cwd=project, env=env)

    def plugin_names(*command: str | Path) -> set[str]:
        rows = json.loads(_run([*command, "plugin", "list", "--json"], project, env).stdout)
        return {row["name"] for row in rows}

    install("nuvom[sqlite]")
    where = _run([bin_dir / "python", "-c", "import nuvom_kernel; print(nuvom_kernel.__file__)"],
                 project, env).stdout
    assert where.startswith(str(env_dir)), f"imported from the checkout, not the wheel: {where}"

    tasks, worker_command, session = _quick_start()
    (project / "tasks.py").write_text(tasks)
    (project / "session.txt").write_text(session)
    worker = subprocess.Popen([bin_dir / "nuvom", *shlex.split(worker_command)[1:]], cwd=project,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        doctest = subprocess.run([bin_dir / "python", "-m", "doctest", "session.txt"],
                                 cwd=project, env=env, capture_output=True, text=True,
                                 timeout=120)
    finally:
        worker.send_signal(signal.SIGINT)
        output, _ = worker.communicate(timeout=60)
    assert doctest.returncode == 0, f"README session failed:\n{doctest.stdout}\n{output}"
    assert worker.returncode == 0, output

    sqlite_only = [f for f in FOLDERS if pyproject(f)["project"]["name"] ==
                   "nuvom-plugins-sqlite"]
    assert plugin_names(bin_dir / "nuvom") >= _entry_point_names(sqlite_only)
    assert plugin_names(bin_dir / "python", "-m", "nuvom_kernel") == plugin_names(
        bin_dir / "nuvom")

    install("nuvom[all]")
    assert plugin_names(bin_dir / "nuvom") >= _entry_point_names(PLUGIN_FOLDERS)
    freeze = _run([bin_dir / "python", "-m", "pip", "freeze"], project, env).stdout
    installed = {canonicalize_name(line.split("==")[0]) for line in freeze.splitlines()}
    assert NAMES <= installed
