"""Worker heartbeats for the file result backend: one small JSON file per live worker.

``<results path>/workers/<worker id>.json`` holds ``{"expires_at": …, "info": {…}}`` and is
replaced whole on every heartbeat (written to a hidden temp file, then renamed over the old
one), so a reader in any process sees the last heartbeat or the one before, never a torn
one. A worker that stops beating leaves its file behind; readers skip expired files and
delete them. Expiry is judged by each reader's clock: hosts sharing the directory need
roughly synchronised clocks (NTP), as they do for leases.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from nuvom_kernel.backends import WorkerInfo
from nuvom_plugins.file._fs import TMP_PREFIX, encode_name, write_new_file

__all__ = ["WorkerFiles"]


class WorkerFiles:
    """The ``workers/`` directory of one results path."""

    def __init__(self, results_path: Path) -> None:
        self.path = results_path / "workers"

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"expires_at": time.time() + ttl_secs, "info": info.to_dict()})
        tmp = write_new_file(self.path, data.encode(), fsync=False)
        os.replace(tmp, self.path / f"{encode_name(info.id)}.json")

    def live(self) -> list[WorkerInfo]:
        now = time.time()
        workers = []
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                continue
            path = self.path / name
            try:
                data = json.loads(path.read_bytes())
                expired = float(data["expires_at"]) <= now
                info = WorkerInfo.from_dict(data["info"])
            except FileNotFoundError:  # forgotten or swept by another reader meanwhile
                continue
            except (ValueError, KeyError, TypeError):
                expired, info = True, None  # unreadable: nobody can use it; sweep it
            if expired:
                with contextlib.suppress(OSError):
                    path.unlink()
            elif info is not None:
                workers.append(info)
        return sorted(workers, key=lambda w: w.id)

    def forget(self, worker_id: str) -> bool:
        try:
            (self.path / f"{encode_name(worker_id)}.json").unlink()
        except FileNotFoundError:
            return False
        return True
