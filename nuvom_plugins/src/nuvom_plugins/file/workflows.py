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
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nuvom_kernel.errors import CorruptWorkflowError
from nuvom_kernel.models import Message
from nuvom_kernel.workflow.docstore import DocGraphTxn, checked_doc, ended_before, waiting_in
from nuvom_kernel.workflow.graph import GraphTxn, Node, stored_node

__all__ = ["WorkflowFiles"]

T = TypeVar("T")

log = logging.getLogger("nuvom.file.queue")


class WorkflowFiles:
    """The ``workflows/`` folder of one file queue."""

    def __init__(self, path: Path, *, fsync: bool,
                 push: Callable[[list[Message]], Any]) -> None:
        self.dir = path / "workflows"
        self.fsync = fsync
        self._push = push
        self._said: set[str] = set()  # corrupt documents already logged

    def _file(self, flow_id: str) -> Path:
        if not flow_id or "/" in flow_id or flow_id.startswith("."):
            raise ValueError(f"not a workflow id: {flow_id!r}")
        return self.dir / f"{flow_id}.json"

    def _load(self, flow_id: str) -> dict[str, Any] | None:
        """The document, ``None`` if there is none; :class:`CorruptWorkflowError` (naming
        the file) if it does not decode."""
        path = self._file(flow_id)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:  # not JSON, not UTF-8
            raise CorruptWorkflowError(flow_id, str(path), f"not JSON ({exc})") from None
        return checked_doc(data, flow_id, str(path))

    def _where(self, flow_id: str) -> str:
        return str(self._file(flow_id))

    def _documents(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Every readable document; one that does not decode is left in place, said once
        per process, and skipped, so it holds up no scan (`nuvom status`, a purge, a cancel
        by id) of the others."""
        for path in self.dir.glob("*.json"):
            try:
                doc = self._load(path.stem)
            except (CorruptWorkflowError, ValueError) as exc:
                if path.name not in self._said:
                    self._said.add(path.name)
                    log.error("%s; it is skipped", exc)
                continue
            if doc is not None:
                yield path, doc

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
            for path, doc in self._documents():
                if ended_before(doc, older_than):
                    path.unlink(missing_ok=True)
                    removed += 1
            return removed
        return self.transaction(run, ())

    def _locate(self, node_id: str) -> str | None:
        """The workflow holding a step, by reading every document (a cancel by id)."""
        for path, doc in self._documents():
            if node_id in doc["nodes"]:
                return path.stem
        return None

    def step(self, job_id: str, workflow: str | None) -> Node | None:
        """A step's node without the lock (a document is replaced by a rename, so a read
        sees a whole one, and ``Job.get()`` polling a waiting step must not hold up the
        settles): in ``workflow`` when the caller knows it, else found by reading every
        document, as a cancel by id does."""
        doc, flow_id = None, workflow
        if flow_id:
            try:
                doc = self._load(flow_id)
            except ValueError:  # not a workflow id: look everywhere (corrupt: raised)
                doc = None
        if doc is None or job_id not in doc["nodes"]:
            flow_id = self._locate(job_id) if self.dir.exists() else None
            doc = None if flow_id is None else self._load(flow_id)
        if flow_id is None or doc is None or job_id not in doc["nodes"]:
            return None
        return stored_node(doc["nodes"][job_id], flow_id, self._where(flow_id))

    def waiting_steps(self) -> int:
        return waiting_in(doc for _, doc in self._documents())

    def transaction(self, fn: Callable[[GraphTxn], T], workflows: Sequence[str]) -> T:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # per open file: threads exclude each other too
            try:
                txn = DocGraphTxn(self._load, self._save, self._push, workflows,
                                  self._locate, self._where)
                out = fn(txn)
                txn.commit()
                return out
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
