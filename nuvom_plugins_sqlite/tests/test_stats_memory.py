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


def _status_peak_mb(project: Path, db: Path) -> tuple[dict[str, object], float]:
    """`nuvom status --json` on ``db``: its output and its peak resident memory (MB)."""
    out = project / "status.json"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "status", "--json"],
                                cwd=project, env=user_env(NUVOM_PLUGINS__SQLITE__PATH=str(db)),
                                stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(out.read_text()), usage.ru_maxrss / 1024


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
