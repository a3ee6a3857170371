"""Small, obviously-correct in-memory backends that ship with the kernel.

They exist for two reasons. The user pytest plugin needs an isolated queue and result store
without depending on any plugin distribution (the kernel never imports one). And the contract
suites need a reference the kernel owns: the stubs pass every contract test, and the broken
variants in :mod:`nuvom_kernel.testing.fakes` each change one method of them, which is how the
meta-tests prove that a contract fails exactly when its promise is broken.

Clarity beats speed here: every operation scans a dict under one lock.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import hashlib
import itertools
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from nuvom_kernel.backends import (
    Capabilities,
    QueueBackend,
    QueueStats,
    ResultBackend,
    newer_first,
)
from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef
from nuvom_kernel.models import (
    TERMINAL_STATES,
    JobRecord,
    JobStatus,
    Lease,
    Message,
    Settlement,
    supersedes,
)

__all__ = ["StubDiscoverer", "StubQueue", "StubResults"]


@attrs.define
class _Entry:
    message: Message
    seq: int
    deliveries: int = 0
    token: str | None = None  # set while leased
    expires_at: float = 0.0

    def claimable(self, now: float) -> bool:
        if self.token is not None:
            return self.expires_at <= now  # an expired lease is available again
        return self.message.available_at <= now


class StubQueue(QueueBackend):
    """The lease protocol in a dict: priorities, delays, visibility timeouts, fencing."""

    name = "stub"
    capabilities = Capabilities(priorities=True, delayed=True, blocking_dequeue=True)

    def __init__(self, *, visibility_timeout_secs: float = 30.0) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def push(self, messages: Sequence[Message]) -> list[bool]:
        stored = []
        with self._lock:
            for message in messages:
                new = message.id not in self._entries
                if new:
                    self._entries[message.id] = _Entry(message, next(self._seq))
                stored.append(new)
        return stored

    def _order(self, entry: _Entry) -> tuple[int, float, int]:
        return (-entry.message.priority, entry.message.created_at, entry.seq)

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        now = time.time()
        with self._lock:
            ready = sorted(
                (e for e in self._entries.values()
                 if e.claimable(now) and (queues is None or e.message.queue in queues)),
                key=self._order,
            )[:max(n, 0)]
            return [self._lease(entry, now) for entry in ready]

    def _lease(self, entry: _Entry, now: float) -> Lease:
        entry.token = uuid.uuid4().hex
        entry.deliveries += 1
        entry.expires_at = now + self.visibility_timeout_secs
        return Lease(entry.message, entry.token, entry.deliveries, entry.expires_at)

    def _held(self, lease: Lease) -> _Entry | None:
        """The entry if ``lease`` still holds it (its token was not replaced by a new claim)."""
        entry = self._entries.get(lease.id)
        if entry is None or entry.token != lease.token:
            return None
        return entry

    def ack(self, lease: Lease) -> bool:
        with self._lock:
            if self._held(lease) is None:
                return False
            del self._entries[lease.id]
            return True

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            entry.token = None
            entry.message = attrs.evolve(
                entry.message, body=entry.message.body if body is None else body,
                available_at=time.time() + max(delay_secs, 0.0),
                failures=entry.message.failures + 1)
        self.notify()
        return True

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            entry.token = None
            entry.deliveries = max(0, entry.deliveries - 1)
            if delay_secs > 0:
                entry.message = attrs.evolve(entry.message,
                                             available_at=time.time() + delay_secs)
        self.notify()
        return True

    def extend(self, lease: Lease, secs: float) -> bool:
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            entry.expires_at = time.time() + secs
            return True

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """Settle with a :class:`StubResults` (the stubs' "shared store"): a record is stored
        only while the lease holds, and the lease is acked or retried only once stored."""
        if not isinstance(results, StubResults):
            return None
        landed = []
        for item in settlements:
            with self._lock:
                held = self._held(item.lease) is not None
            if not held or not results.put(item.record):
                landed.append(False)
            elif item.retry_in is None:
                landed.append(self.ack(item.lease))
            else:
                landed.append(self.retry(item.lease, delay_secs=item.retry_in, body=item.body))
        return landed

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values()
                       if e.token is None and (queues is None or e.message.queue in queues))

    def clear(self, queues: Sequence[str] | None = None) -> int:
        with self._lock:
            doomed = [i for i, e in self._entries.items()
                      if queues is None or e.message.queue in queues]
            for job_id in doomed:
                del self._entries[job_id]
            return len(doomed)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry.token is not None:
                return False  # a leased job belongs to its worker
            del self._entries[job_id]
            return True

    def peek_state(self, job_id: str) -> JobStatus | None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            if entry.token is not None:
                return JobStatus.RUNNING
            if entry.message.available_at > time.time() and entry.message.failures:
                return JobStatus.RETRYING
            return JobStatus.QUEUED

    def stats(self) -> QueueStats:
        now = time.time()
        stats = QueueStats()
        with self._lock:
            for entry in self._entries.values():
                counts = stats.of(entry.message.queue)
                if entry.token is not None:
                    counts.running += 1
                elif entry.message.available_at > now:
                    counts.delayed += 1
                else:
                    counts.ready += 1
                    age = now - entry.message.created_at
                    counts.oldest_ready_age_secs = max(counts.oldest_ready_age_secs or 0.0, age)
        return stats


class StubResults(ResultBackend):
    """Job records in a dict; deep copies in and out, so callers never share state with it."""

    name = "stub"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}

    def put(self, record: JobRecord) -> bool:
        with self._lock:
            if not supersedes(record, self._records.get(record.job_id)):
                return False
            self._records[record.job_id] = copy.deepcopy(record)
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
            return copy.deepcopy(record) if record is not None else None

    def query(self, *, status: JobStatus | None = None, func_name: str | None = None,
              limit: int = 50, after: str | None = None) -> list[JobRecord]:
        with self._lock:
            rows = [r for r in self._records.values()
                    if (status is None or r.status is status)
                    and (func_name is None or r.func_name == func_name)]
            return copy.deepcopy(newer_first(rows, after, limit))

    def purge(self, older_than: float) -> int:
        with self._lock:
            doomed = [i for i, r in self._records.items()
                      if r.status in TERMINAL_STATES and r.updated_at < older_than]
            for job_id in doomed:
                del self._records[job_id]
            return len(doomed)


_SKIP_DIRS = {".git", ".hg", ".venv", "venv", "__pycache__", "node_modules", ".tox", ".nuvom",
              "build", "dist"}


class StubDiscoverer(Discoverer):
    """Finds ``@task`` / ``@task(...)`` functions with :mod:`ast`, never importing anything.

    Incremental: ``state`` maps each file to its content hash and what was found in it, so an
    unchanged file is not parsed again.
    """

    name = "stub"

    def discover(
        self,
        root: Path,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        state: dict[str, Any] | None = None,
    ) -> tuple[DiscoveryReport, dict[str, Any]]:
        report = DiscoveryReport()
        old = dict((state or {}).get("files", {}))
        new: dict[str, Any] = {}
        for path in sorted(_python_files(Path(root))):
            rel = path.relative_to(root).as_posix()
            if include and not any(fnmatch.fnmatch(rel, p) for p in include):
                continue
            if any(fnmatch.fnmatch(rel, p) for p in exclude):
                continue
            report.files_scanned += 1
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            cached = old.get(rel)
            if cached is None or cached["hash"] != digest:
                report.files_parsed += 1
                cached = {"hash": digest, **_scan(rel, data)}
            new[rel] = cached
            report.tasks.extend(TaskRef.from_dict(t) for t in cached["tasks"])
            report.errors.extend(cached["errors"])
        return report, {"files": new}


def _python_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return found


def _module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _task_decorator(node: ast.expr) -> ast.Call | bool:
    """``True`` for a bare ``@task``, the call for ``@task(...)``, ``False`` otherwise."""
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if name != "task":
        return False
    return node if isinstance(node, ast.Call) else True


def _scan(rel: str, data: bytes) -> dict[str, Any]:
    try:
        tree = ast.parse(data, filename=rel)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 0
        return {"tasks": [], "errors": [f"{rel}:{line}: cannot parse: {exc}"]}
    tasks, errors = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            found = _task_decorator(decorator)
            if found is False:
                continue
            options: dict[str, Any] = {}
            if isinstance(found, ast.Call):
                for keyword in found.keywords:
                    try:
                        options[keyword.arg or "**"] = ast.literal_eval(keyword.value)
                    except ValueError:
                        errors.append(f"{rel}:{keyword.value.lineno}: option {keyword.arg!r} of "
                                      f"task {node.name!r} is not a literal; ignored")
            name = options.pop("name", None) or node.name
            doc = ast.get_docstring(node)
            tasks.append(TaskRef(
                name=name, module=_module_name(rel), file=rel, line=node.lineno,
                func_name=node.name, options=options,
                description=doc.strip().splitlines()[0] if doc else None,
                is_async=isinstance(node, ast.AsyncFunctionDef),
            ).to_dict())
    return {"tasks": tasks, "errors": errors}
