"""Installing and uninstalling distributions in a throwaway virtualenv changes what Nuvom sees.

Built-ins enter through the same door as third-party plugins: the `nuvom` entry-point group.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_plugins_appear_and_disappear_with_their_distribution(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, nuvom = env_dir / "bin" / "python", env_dir / "bin" / "nuvom"
    project = tmp_path / "project"
    project.mkdir()
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    run([*pip, "-e", str(ROOT)], project)
    version = run([str(nuvom), "--version"], project)
    assert "nuvom, version" in version.stdout
    status = run([str(nuvom), "status"], project, check=False)
    assert status.returncode == 1
    assert "pip install ./nuvom_plugins_sqlite" in status.stderr
    assert json.loads(run([str(nuvom), "plugin", "list", "--json"], project).stdout) == []

    run([*pip, str(ROOT / "nuvom_plugins")], project)
    rows = json.loads(run([str(nuvom), "plugin", "list", "--json"], project).stdout)
    memory = next(r for r in rows if r["name"] == "memory")
    assert memory["distribution"] == "nuvom-plugins" and memory["version"] == "0.1.0"
    assert memory["provides"] == {"queue_backend": ["memory"], "result_backend": ["memory"]}
    assert memory["source"] == "entry point"
    ok = run([str(nuvom), "status"], project, check=False)
    assert "pip install ./nuvom_plugins_sqlite" in ok.stderr  # still the default backend
    env_status = subprocess.run([str(nuvom), "status", "--json"], cwd=project,
                                capture_output=True, text=True, timeout=120,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(project),
                                     "NUVOM_QUEUE_BACKEND": "memory",
                                     "NUVOM_RESULT_BACKEND": "memory"})
    assert env_status.returncode == 0, env_status.stderr
    assert json.loads(env_status.stdout)["queue_backend"] == "memory"

    run([str(py), "-m", "pip", "uninstall", "--yes", "nuvom-plugins"], project)
    rows = json.loads(run([str(nuvom), "plugin", "list", "--json"], project).stdout)
    assert all(r["name"] != "memory" for r in rows)
