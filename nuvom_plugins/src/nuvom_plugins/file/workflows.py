"""Workflow graphs of the file queue: one JSON document per workflow under
``<queue path>/workflows/``, changed under an ``flock`` on ``workflows/.lock``.

A document is replaced by writing a dot-prefixed temp file and renaming it over the old one
(fsynced when the queue fsyncs), so a reader never sees half a document. A transaction
saves the documents, then pushes the steps it released: a crash in between leaves a step
RELEASED in its document but not in the queue, and the settle that is then repeated (its
lease was not acked) pushes it, having checked it is neither queued nor recorded (see
``advance(unseen=...)``). Pushing first ran a join twice under the SIGKILL test. Each
settle rewrites its
workflow's document: O(n) per step, so this backend suits workflows of hundreds of steps,
not the 10,000-member fan-outs SQLite handles in O(1) per step.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nuvom_kernel.models import Message
from nuvom_kernel.workflow.docstore import DocGraphTxn, ended_before, waiting_in
from nuvom_kernel.workflow.graph import GraphTxn, Node

__all__ = ["WorkflowFiles"]

T = TypeVar("T")


class WorkflowFiles:
    """The ``workflows/`` folder of one file queue."""

    def __init__(self, path: Path, *, fsync: bool,
                 push: Callable[[list[Message]], Any]) -> None:
        self.dir = path / "workflows"
        self.fsync = fsync
        self._push = push

    def _file(self, flow_id: str) -> Path:
        if not flow_id or "/" in flow_id or flow_id.startswith("."):
            raise ValueError(f"not a workflow id: {flow_id!r}")
        return self.dir / f"{flow_id}.json"

    def _load(self, flow_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._file(flow_id).read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def _save(self, doc: dict[str, Any]) -> None:
        target = self._file(doc["flow"]["id"])
        temp = self.dir / f".{target.name}.{os.getpid()}.tmp"
        with open(temp, "wb") as fh:
            fh.write(json.dumps(doc, separators=(",", ":")).encode())
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(temp, target)

    def purge(self, older_than: float) -> int:
        """Delete the documents of workflows that ended before ``older_than``."""
        if not self.dir.exists():
            return 0

        def run(_: GraphTxn) -> int:
            removed = 0
            for path in self.dir.glob("*.json"):
                doc = self._load(path.stem)
                if doc is not None and ended_before(doc, older_than):
                    path.unlink(missing_ok=True)
                    removed += 1
            return removed
        return self.transaction(run, ())

    def _locate(self, node_id: str) -> str | None:
        """The workflow holding a step, by reading every document (a cancel by id)."""
        for path in self.dir.glob("*.json"):
            doc = self._load(path.stem)
            if doc is not None and node_id in doc["nodes"]:
                return path.stem
        return None

    def step(self, job_id: str, workflow: str | None) -> Node | None:
        """A step's node without the lock (a document is replaced by a rename, so a read
        sees a whole one, and ``Job.get()`` polling a waiting step must not hold up the
        settles): in ``workflow`` when the caller knows it, else found by reading every
        document, as a cancel by id does."""
        doc = None
        if workflow:
            try:
                doc = self._load(workflow)
            except ValueError:  # not a workflow id: look everywhere
                doc = None
        if doc is None or job_id not in doc["nodes"]:
            found = self._locate(job_id) if self.dir.exists() else None
            doc = None if found is None else self._load(found)
        if doc is None or job_id not in doc["nodes"]:
            return None
        return Node(**doc["nodes"][job_id])

    def waiting_steps(self) -> int:
        docs = (self._load(p.stem) for p in self.dir.glob("*.json"))
        return waiting_in(doc for doc in docs if doc is not None)

    def transaction(self, fn: Callable[[GraphTxn], T], workflows: Sequence[str]) -> T:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # per open file: threads exclude each other too
            try:
                txn = DocGraphTxn(self._load, self._save, self._push, workflows,
                                  self._locate)
                out = fn(txn)
                txn.commit()
                return out
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
