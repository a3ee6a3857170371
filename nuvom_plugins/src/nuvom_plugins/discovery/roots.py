"""Import roots: which folder a source file is imported *from*, so the manifest names its
module the way Python will (``pkg.tasks`` for ``src/pkg/tasks.py``, not ``src.pkg.tasks``).

Why it matters: the worker imports the module the manifest names. A name relative to the
scan root is wrong for any project whose packages do not sit at its top: with a ``src/``
layout, ``src.pkg.tasks`` either fails to import or — ``src`` passing as a namespace package
— loads a second copy of a module the producer knows as ``pkg.tasks``.

Where roots come from, for the scanned folder and for every folder below it holding a
``pyproject.toml`` (a monorepo has one per project):

* setuptools: ``[tool.setuptools.packages.find] where``, ``[tool.setuptools] package-dir``
  (``"" = "src"``, or one folder per package: ``pkg = "lib/pkg"``);
* poetry: ``[tool.poetry] packages = [{include = "pkg", from = "src"}]``;
* hatch: ``[tool.hatch.build.targets.wheel] packages = ["src/pkg"]``;
* pdm: ``[tool.pdm.build] package-dir = "src"``;
* none declared: ``src/`` when it exists and is not itself a package (setuptools'
  automatic discovery does the same), else the project folder itself — unless that folder is
  a package (it has an ``__init__.py``: its ``pyproject.toml`` only configures tools), which
  is imported from above, never from inside.

The scanned folder itself is always the last resort (a worker started there has it on
``sys.path``). A file belongs to the deepest root above it, and its module is its path below
that root, whether or not the folders have ``__init__.py`` — so namespace packages (PEP 420)
get their full dotted name.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["ImportRoot", "ImportRoots"]


@attrs.frozen
class ImportRoot:
    """Files under ``folder`` (POSIX, relative to the scan root; ``""`` is the root) are
    modules named ``prefix`` + their dotted path below it.

    :param prefix: the package a ``package-dir`` entry maps the folder to (``""`` for a
        plain root, whose subfolders are top-level packages).
    :param declared_by: the ``pyproject.toml`` that says so, for messages (``None``: the
        fallback).
    """

    folder: str
    prefix: str = ""
    declared_by: str | None = None


def _join(base: str, rel: str) -> str:
    joined = posixpath.normpath(posixpath.join(base, rel.replace("\\", "/")))
    return "" if joined == "." else joined


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _declared(project: str, data: dict[str, Any], source: str) -> list[ImportRoot]:
    """The roots one ``pyproject.toml`` declares, in any of the build tools' spellings."""
    roots: list[ImportRoot] = []

    def add(folder: str, prefix: str = "") -> None:
        roots.append(ImportRoot(_join(project, folder), prefix, source))

    where = _get(data, "tool", "setuptools", "packages", "find", "where")
    for folder in where if isinstance(where, list) else []:
        if isinstance(folder, str):
            add(folder)
    package_dir = _get(data, "tool", "setuptools", "package-dir")
    if isinstance(package_dir, dict):
        for package, folder in package_dir.items():
            if isinstance(folder, str):
                add(folder, "" if package == "" else str(package))
    for entry in _get(data, "tool", "poetry", "packages") or []:
        if isinstance(entry, dict) and isinstance(entry.get("include"), str):
            add(str(entry.get("from") or "."))
    for package in _get(data, "tool", "hatch", "build", "targets", "wheel", "packages") or []:
        if isinstance(package, str):
            add(posixpath.dirname(package.rstrip("/")) or ".")
    pdm = _get(data, "tool", "pdm", "build", "package-dir")
    if isinstance(pdm, str):
        add(pdm)
    return roots


def _is_package(folder: Path) -> bool:
    """A folder with ``__init__.py`` is a package, imported as a name from the folder above
    it (``src.jobs`` for ``src/jobs.py``), so it is never an import root itself."""
    return (folder / "__init__.py").is_file()


@attrs.frozen
class ImportRoots:
    """Every import root of a scanned tree, deepest first, and what went wrong reading it."""

    roots: tuple[ImportRoot, ...]
    warnings: tuple[str, ...] = ()

    @classmethod
    def find(cls, scan_root: Path, projects: Iterable[str]) -> ImportRoots:
        """Roots of ``scan_root``, given the folders (relative, POSIX) holding a
        ``pyproject.toml``. An unreadable one is a warning and falls back to the layout."""
        roots: list[ImportRoot] = []
        warnings: list[str] = []
        for project in sorted(set(projects) | {""}):
            pyproject = posixpath.join(project, "pyproject.toml")
            declared: list[ImportRoot] = []
            if (scan_root / pyproject).is_file():
                try:
                    data = tomllib.loads((scan_root / pyproject).read_text(encoding="utf-8"))
                    declared = _declared(project, data, pyproject)
                except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                    warnings.append(f"{pyproject}: cannot read its package folders ({exc}); "
                                    "module names assume the folder layout")
            if declared:
                roots += declared
            elif project and _is_package(scan_root / project):
                continue  # a package with a tool-only pyproject.toml: named from above
            elif (scan_root / project / "src").is_dir() and \
                    not _is_package(scan_root / project / "src"):
                roots.append(ImportRoot(_join(project, "src")))
            elif project:
                roots.append(ImportRoot(project))
        roots.append(ImportRoot(""))
        unique = {(r.folder, r.prefix): r for r in reversed(roots)}  # first declaration wins
        ordered = sorted(unique.values(), key=lambda r: (-len(r.folder), r.folder, r.prefix))
        return cls(tuple(ordered), tuple(warnings))

    def module(self, rel: str) -> str:
        """The dotted module name of the source file ``rel`` (POSIX, relative to the scan
        root): ``src/pkg/__init__.py`` -> ``pkg``, ``src/ns/sub/mod.py`` -> ``ns.sub.mod``."""
        for root in self.roots:
            if root.folder and not rel.startswith(root.folder + "/"):
                continue
            below = rel[len(root.folder) + 1:] if root.folder else rel
            parts = below[:-3].split("/") if below.endswith(".py") else below.split("/")
            if parts[-1] == "__init__":
                parts.pop()
            dotted = ".".join(p for p in [root.prefix, *parts] if p)
            if dotted:
                return dotted
        raise ValueError(f"{rel} is not a module file")  # pragma: no cover - "" matches all
