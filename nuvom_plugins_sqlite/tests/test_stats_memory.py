"""`nuvom status` reads counts, not bodies: its query's check for rows that break the schema
(``typeof(body)``) sat inside a ``GROUP BY``, which put every body into SQLite's sort, so
the command's memory grew with the bytes queued (40,000 jobs of 20 KB: 854 MB), and so did
every worker exporting metrics (``stats()`` every 5 s). A real database of ~96 MB of bodies
and the real command; its peak memory is read from the kernel (``wait4``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlite_helpers import user_env

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import Message
from nuvom_plugins_sqlite.queue import SQLiteJobQueue

BODY = 64 * 1024
JOBS = 1500  # ~96 MB of bodies


#: Starts `nuvom status` and prints its peak memory. Why a launcher: Linux counts into a
#: child's peak the memory of the process it was spawned from (the old address space at
#: ``exec``), so measured straight from this test's process, whose memory grows as it
#: pushes the bodies, the second status looked 13 MB bigger when other tests ran first.
LAUNCHER = """\
import os, subprocess, sys
with open(sys.argv[1], "wb") as sink:
    proc = subprocess.Popen(sys.argv[2:], stdout=sink, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _status_peak_mb(project: Path, db: Path) -> tuple[dict[str, object], float]:
    """`nuvom status --json` on ``db``: its output and its peak resident memory (MB)."""
    out = project / "status.json"
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(out), sys.executable, "-m",
                           "nuvom_kernel", "status", "--json"], cwd=project,
                          env=user_env(NUVOM_PLUGINS__SQLITE__PATH=str(db)),
                          capture_output=True, text=True, check=True, timeout=120)
    code, peak_kb = map(int, done.stdout.split())
    assert code == 0
    return json.loads(out.read_text()), peak_kb / 1024


def test_status_memory_does_not_grow_with_the_bytes_queued(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = SQLiteJobQueue.from_settings({"path": str(db)}, BackendContext(data_dir=tmp_path))
    _, empty_mb = _status_peak_mb(tmp_path, db)
    body = os.urandom(BODY)
    for _ in range(JOBS // 500):
        queue.push([Message(id=uuid.uuid4().hex, body=body, task="t") for _ in range(500)])
    queue.close()
    data, full_mb = _status_peak_mb(tmp_path, db)
    assert data["queues"]["default"]["ready"] == JOBS  # type: ignore[index]
    grown = full_mb - empty_mb
    assert grown < JOBS * BODY / 2**20 / 4, (
        f"`nuvom status` took {grown:.0f} MB more beside {JOBS * BODY / 2**20:.0f} MB of "
        "queued bodies: it reads them")
