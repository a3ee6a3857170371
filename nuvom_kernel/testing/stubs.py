"""The kernel's own reference backends and discoverer, under the name ``stub``.

They exist for two reasons. The user pytest plugin needs an isolated queue and result store
without depending on any plugin distribution (the kernel never imports one). And the contract
suites need a reference the kernel owns: the stubs pass every contract test, and the broken
variants in :mod:`nuvom_kernel.testing.fakes` each change one method of them, which is how the
meta-tests prove that a contract fails exactly when its promise is broken. The backends are
the in-memory reference store of :mod:`.memory` (the ``memory`` plugin registers the same
classes under its own name).
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef
from nuvom_kernel.testing.memory import MemoryJobQueue, MemoryResultBackend

__all__ = ["StubDiscoverer", "StubQueue", "StubResults"]


class StubQueue(MemoryJobQueue):
    """The reference queue under the name ``stub`` (the kernel never imports a plugin)."""

    name = "stub"


class StubResults(MemoryResultBackend):
    """The reference result backend under the name ``stub``."""

    name = "stub"


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
