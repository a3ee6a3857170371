"""The README's third command, ``python examples/quickstart/demo.py``, run as a new user
would: a real worker process on the embedded SQLite default, stopped with SIGINT.

Run with this interpreter and a PATH without its virtualenv's ``bin/``: the demo started
``nuvom`` by name, so ``.venv/bin/python examples/quickstart/demo.py`` (no activated
virtualenv) failed to start its worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quickstart_demo_runs_end_to_end_without_the_venv_on_path() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    done = subprocess.run([sys.executable, "examples/quickstart/demo.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "add(2, 3) = 5" in done.stdout, done.stdout
    assert "map of 100 jobs: sum = 9900" in done.stdout, done.stdout
    assert "worker exited with status 0" in done.stdout, done.stdout
    assert "101 jobs processed (0 failed)" in done.stderr, done.stderr[-3000:]
