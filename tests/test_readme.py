"""The README's first steps are what CI runs (issue 12, points 1 and 6).

``.ci/run`` creates a fresh virtualenv and runs the README's install and test commands in it,
line for line, so CI walks the path a newcomer walks; the install stays one short command
that covers every distribution in the repository.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_steps() -> dict[str, str]:
    """``{"1": command, "2": command, ...}`` from the README's first bash block."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no bash block"
    steps: dict[str, str] = {}
    number = None
    for line in block.group(1).splitlines():
        if match := re.match(r"# (\d+)\.", line):
            number = match.group(1)
        elif line.strip() and number is not None:
            steps[number] = line.strip()
    return steps


def _ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_install_and_test_commands_in_a_fresh_virtualenv() -> None:
    steps = _readme_steps()
    lines = _ci_lines()
    venv = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv "))
    activate = next(i for i, line in enumerate(lines) if line.startswith("source ")
                    and line.endswith('/bin/activate"'))
    install, test = lines.index(steps["1"]), lines.index(steps["2"])
    assert venv < activate < install < test, "venv, activate, README step 1, README step 2"
    assert "ruff check ." in lines


def test_install_is_one_short_command_covering_every_distribution() -> None:
    install = _readme_steps()["1"]
    assert install == "pip install -r requirements-dev.txt"
    lines = [line.strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    listed = {Path(shlex.split(line)[1].split("[")[0]).as_posix() for line in lines}
    assert all(line.startswith("-e ") and line.endswith("[test]") for line in lines), lines
    distributions = {"."} | {p.parent.relative_to(ROOT).as_posix()
                             for p in ROOT.glob("*/pyproject.toml")}
    assert {p.removeprefix("./") or "." for p in listed} == distributions
