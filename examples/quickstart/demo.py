"""End to end on the embedded default (SQLite, no server): `nuvom discover tasks`, start
`nuvom runworker`, enqueue from this process, wait for the results, then stop the worker
with SIGINT (a clean drain).

Run from the repository root:  python examples/quickstart/demo.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    project = Path(tempfile.mkdtemp(prefix="nuvom-quickstart-"))
    (project / "tasks.py").write_text((HERE / "tasks.py").read_text())
    os.chdir(project)
    sys.path.insert(0, str(project))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    # `python -m nuvom_kernel` is the `nuvom` command, found without the virtualenv's bin/
    # on PATH (a demo run as `.venv/bin/python demo.py` failed to start its worker).
    # Discovery first, as in a project: the worker then knows every task's options before
    # its first job (it says so when there is no manifest).
    nuvom = [sys.executable, "-m", "nuvom_kernel"]
    subprocess.run([*nuvom, "discover", "tasks"], cwd=project, env=env, check=True)
    worker = subprocess.Popen([*nuvom, "runworker", "--workers", "2"], cwd=project, env=env)
    try:
        from tasks import add

        job = add.delay(2, 3)
        print(f"enqueued job {job.id}; waiting for the worker...")
        print("add(2, 3) =", job.get(timeout=30))
        jobs = add.map([(i, i) for i in range(100)])
        print("map of 100 jobs: sum =", sum(j.get(timeout=30) for j in jobs))
    finally:
        worker.send_signal(signal.SIGINT)
        code = worker.wait(timeout=60)
    print(f"worker exited with status {code} (data in {project / '.nuvom'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
