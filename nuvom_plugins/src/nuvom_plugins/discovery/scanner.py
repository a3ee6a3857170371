"""The ``ast`` discoverer: walk a project, parse its sources, never import anything.

Cost model, and why: a warm run (nothing changed) reads and hashes every candidate file but
parses none, because the previous run's per-file results are kept in the manifest's state
keyed by content hash. A cold run parses every file so that any syntax error is reported
(the discoverer contract asks for it); ``ast.parse`` is the whole cost of a cold run, so when
many files changed they are parsed in a pool of forked worker processes.
``parse_all=False`` trades that for speed: only files whose bytes mention the module of
Nuvom's decorator (``nuvom_kernel``) are parsed — a decorator can only resolve to Nuvom
through an import in the same module, so no task is missed, but a syntax error in a file
that never mentions ``nuvom_kernel`` goes unreported.

Which files: regular ``*.py`` files under ``root`` (a FIFO would block the read forever),
minus directories that are never project code (``.git``, ``__pycache__``, ``node_modules``,
environments — any directory holding a ``pyvenv.cfg`` or a conda ``conda-meta/`` —
``site-packages``, caches, ``*.egg-info``, and build output: a ``build/`` holding setuptools'
``lib/``, ``lib.*/`` or ``bdist.*/`` trees, or a ``dist/``, unless it has an ``__init__.py``,
which makes it a package of the project), minus what ``.nuvomignore`` (gitignore syntax, at
the root) and ``exclude`` globs match; when ``include`` globs are given, a file must match one
of them. Globs use gitignore semantics too (``tests`` matches that directory at any depth,
``app/**/*.py`` a subtree), git's rule for directories included: ``foo/`` excludes the
folder and nothing in it can be re-included, ``foo/**`` only its contents, so ``!foo/t.py``
brings that file back. A directory that cannot be listed is an error, like a file that cannot
be read.

Module names follow the project's packaging, not the folder tree: the ``pyproject.toml``
files met on the walk say where packages live (``src/`` layouts, monorepos with a project
per folder; see :mod:`.roots`), so the manifest names each module as Python imports it.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import multiprocessing
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from pathlib import Path
from typing import Any, ClassVar

import pathspec

from nuvom_kernel.discovery import Discoverer, DiscoveryReport, TaskRef
from nuvom_plugins.discovery.resolve import DEFAULT_DECORATORS, scan_module
from nuvom_plugins.discovery.roots import ImportRoots

__all__ = ["DEFAULT_SKIP_DIRS", "AstDiscoverer", "examine"]

log = logging.getLogger("nuvom.discovery")

DEFAULT_SKIP_DIRS: frozenset[str] = frozenset({
    ".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".nuvom", ".eggs", "site-packages",
    "dist-packages", ".idea", ".vscode",
})
IGNORE_FILE = ".nuvomignore"
#: 2: literal schedules are checked (a warning names a schedule workers would refuse), so
#: files cached by version 1 are examined again. 3: a schedule held in a variable, a
#: non-number ``every()`` argument and an infinite ``catch_up_window_secs`` are warned about.
#: 4: non-literal options are warned about, a task with a non-literal name is left out, and a
#: fallback ``task`` bound in ``except ImportError`` no longer hides Nuvom's. 5: each task
#: records the options it was given as no literal (``unread``). 6: a schedule discovery
#: cannot read, and ``**options``, are listed in ``unread`` too (a worker keeps the imported
#: task's schedule for them when the manifest changes).
_STATE_VERSION = 6
#: What setuptools' ``build`` command leaves in ``build/``: ``lib``, ``lib.<platform>``,
#: ``bdist.<platform>``, ``temp.<platform>``, ``scripts-<version>``.
_BUILD_TREES = ("lib.", "bdist.", "temp.", "scripts-")


def _spec(lines: Sequence[str], source: str = "--exclude/--include",
          errors: list[str] | None = None) -> pathspec.PathSpec[Any] | None:
    """The patterns of ``lines`` (from ``source``). A pattern that is no valid glob
    (``[z-a].py``: pathspec's regex error named neither it nor its file, and the whole
    discovery failed on it) raises a ``ValueError`` naming both, or, given ``errors``, is
    said there and left out (the file's other patterns still apply)."""
    good = []
    for line in lines:
        if not line.strip():
            continue
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except (re.error, ValueError) as exc:  # (pathspec's own errors are ValueErrors)
            said = f"{source} pattern {line!r} is no valid glob ({exc}); fix or remove it"
            if errors is None:
                raise ValueError(said) from None
            errors.append(f"{said}; it is left out")
            continue
        good.append(line)
    return pathspec.GitIgnoreSpec.from_lines(good) if good else None


def _not_project_code(parent: str, name: str) -> bool:
    """Whether the folder ``name`` in ``parent`` holds no code of the project, whatever its
    name: an environment (``pyvenv.cfg``; conda writes ``conda-meta/`` and no
    ``pyvenv.cfg``) or build output. Build output holds a *copy* of the project's modules, and
    the first copy in path order won (``build.lib.myapp.tasks`` in the manifest)."""
    path = os.path.join(parent, name)
    if os.path.exists(os.path.join(path, "pyvenv.cfg")) or \
            os.path.isdir(os.path.join(path, "conda-meta")):
        return True
    return name in ("build", "dist") and _build_output(path, name)


def _build_output(path: str, name: str) -> bool:
    """``dist/`` or a setuptools ``build/`` tree; never a folder with ``__init__.py``, a
    package of the project that happens to be called so (``myapp/build/``)."""
    if os.path.exists(os.path.join(path, "__init__.py")):
        return False
    if name == "dist":  # wheels, sdists, bundles: never sources to import
        return True
    try:
        entries = os.listdir(path)
    except OSError:
        return False  # entered, so that the walk reports it
    return any(e == "lib" or e.startswith(_BUILD_TREES) for e in entries)


def _excludes_dir(spec: pathspec.PathSpec[Any] | None, rel: str) -> bool:
    """Whether ``spec`` excludes the folder ``rel`` as git decides it: the last pattern
    matching the folder itself wins, and a pattern ending in ``/**`` matches only what is
    *inside* its folder. pathspec matches ``foo/**`` against ``foo/`` too, which pruned
    ``foo`` and so ignored ``!foo/tasks.py`` (git keeps that file)."""
    if spec is None:
        return False
    parent = rel.rpartition("/")[0]
    excluded = False
    for pattern in spec.patterns:
        if pattern.include is None:
            continue
        text = getattr(pattern, "pattern", None)
        if isinstance(text, str) and text.rstrip().rstrip("/").endswith("/**"):
            hit = bool(parent) and pattern.match_file(parent + "/") is not None
        else:
            hit = pattern.match_file(rel + "/") is not None
        if hit:
            excluded = pattern.include
    return excluded


def _regular(path: str) -> bool:
    """Whether ``path`` is a regular file: reading a FIFO blocks until something writes to
    it (forever), a device may never end. One that cannot be stat'ed is kept, so that
    reading it reports why."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def module_name(rel: str) -> str:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/__init__.py`` -> ``pkg``."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


class AstDiscoverer(Discoverer):
    """Static task discovery (see the module docs for what is scanned and what it costs).

    :param decorators: fully qualified names that count as Nuvom's task decorator.
    :param skip_dirs: directory names never entered (environments and build output are
        recognised by what they hold, whatever this says: see the module docs).
    :param parse_all: parse every changed file (report every syntax error) rather than only
        files that mention ``nuvom_kernel`` (much faster on big trees; see module docs).
    :param workers: processes used to parse when at least ``parallel_min_files`` files
        changed (default: the CPU count, at most 8; ``1`` never starts a pool).
    """

    name: ClassVar[str] = "ast"

    def __init__(
        self,
        *,
        decorators: frozenset[str] = DEFAULT_DECORATORS,
        skip_dirs: frozenset[str] = DEFAULT_SKIP_DIRS,
        parse_all: bool = True,
        workers: int | None = None,
        parallel_min_files: int = 200,
    ) -> None:
        self.decorators = frozenset(decorators)
        self.parse_all = parse_all
        self.skip_dirs = frozenset(skip_dirs)
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        self.parallel_min_files = parallel_min_files

    def discover(
        self,
        root: Path,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        state: dict[str, Any] | None = None,
    ) -> tuple[DiscoveryReport, dict[str, Any]]:
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"discovery root {root} is not a directory")
        key = ",".join(sorted(self.decorators)) + f";all={self.parse_all}"
        previous: dict[str, Any] = {}
        if state and state.get("version") == _STATE_VERSION and state.get("key") == key:
            previous = state.get("files") or {}
        report = DiscoveryReport()
        ignore = self._ignore_spec(root, report)
        files: dict[str, Any] = {}
        changed: dict[str, bytes | None] = {}  # bytes kept only while a serial parse is likely
        projects: list[str] = []  # folders holding a pyproject.toml
        for rel in self._walk(root, ignore, _spec(exclude), _spec(include), projects,
                              report.errors):
            report.files_scanned += 1
            try:
                data = (root / rel).read_bytes()
            except OSError as exc:
                report.errors.append(f"{rel}: cannot read: {exc.strerror or exc}")
                continue
            digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            files[rel] = previous.get(rel)
            if _hash_of(files[rel]) != digest:
                changed[rel] = data if len(changed) < self.parallel_min_files else None
        for rel, entry, parsed in self._examine_all(root, changed):
            files[rel] = _kept(rel, entry, previous.get(rel))
            report.files_parsed += parsed
        # Names are given here, not cached per file: editing pyproject.toml renames modules
        # whose own bytes did not change.
        roots = ImportRoots.find(root, projects)
        report.warnings += roots.warnings
        for entry in files.values():
            if isinstance(entry, dict):
                report.tasks += [TaskRef.from_dict({**t, "module": roots.module(t["file"])})
                                 for t in entry.get("tasks", [])]
                report.errors += entry.get("errors", [])
                report.warnings += entry.get("warnings", [])
        self._check_duplicates(report)
        return report, {"version": _STATE_VERSION, "key": key, "files": files}

    def _examine_all(self, root: Path, changed: dict[str, bytes | None]
                     ) -> Iterator[tuple[str, Any, bool]]:
        """Parse changed files: in forked worker processes when there are many (``ast.parse``
        is the whole cost of a cold run and it scales with cores), serially otherwise.

        Forking is only safe in a single-threaded process, and ``spawn`` would re-run an
        unguarded ``__main__`` script, so a process with threads parses serially.
        """
        args = (self.decorators, self.parse_all)
        if len(changed) >= self.parallel_min_files and self.workers > 1 and \
                threading.active_count() == 1 and \
                "fork" in multiprocessing.get_all_start_methods():
            try:
                ctx = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
                    results = list(pool.map(examine_path, repeat(str(root)), changed,
                                            repeat(args), chunksize=32))
                yield from results
                return
            except (OSError, BrokenProcessPool) as exc:
                log.warning("discovery: parsing serially, no process pool (%s)", exc)
        for rel, data in changed.items():
            if data is None:
                yield examine_path(str(root), rel, args)
            else:
                yield (rel, *examine(rel, data, *args))

    # --- files ---------------------------------------------------------------------------

    def _ignore_spec(self, root: Path, report: DiscoveryReport) -> pathspec.PathSpec[Any] | None:
        path = root / IGNORE_FILE
        try:
            return _spec(path.read_text(encoding="utf-8").splitlines(), IGNORE_FILE,
                         report.errors)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            report.errors.append(f"{IGNORE_FILE}: cannot use it ({exc}); nothing is ignored")
            return None

    def _walk(self, root: Path, ignore: pathspec.PathSpec[Any] | None,
              exclude: pathspec.PathSpec[Any] | None,
              include: pathspec.PathSpec[Any] | None, projects: list[str] | None = None,
              errors: list[str] | None = None) -> Iterator[str]:
        """Relative POSIX paths of candidate files, in a stable (sorted) order; the folders
        holding a ``pyproject.toml`` are appended to ``projects`` and the folders that
        cannot be listed to ``errors`` (as an unreadable file is) on the way."""
        def skipped(rel: str) -> bool:
            return bool((ignore and ignore.match_file(rel)) or
                        (exclude and exclude.match_file(rel)))

        def skipped_dir(rel: str) -> bool:
            return _excludes_dir(ignore, rel) or _excludes_dir(exclude, rel)

        def unreadable(exc: OSError) -> None:
            if errors is not None:
                rel = Path(os.path.relpath(exc.filename or root, root)).as_posix()
                errors.append(f"{rel}/: cannot read this directory: "
                              f"{exc.strerror or exc}; nothing in it is scanned")

        real_root = os.path.realpath(root)
        followed: list[str] = []  # real folders entered through links, in walk order

        def inside(path: str, folder: str) -> bool:
            return os.path.commonpath([path, folder]) == folder

        def elsewhere(path: str) -> bool:
            """A link to outside the project: Python imports through it (``import pkg``
            with ``pkg -> ../shared/pkg``), so its files are the project's. Not followed:
            a link into the project (its target is scanned where it is; the same file under
            two names would be two modules defining the same tasks), nor one into, or
            around, a folder walked already (a second name, or a loop)."""
            real = os.path.realpath(path)
            return not any(inside(real, seen) or inside(seen, real)
                           for seen in (real_root, *followed))

        def enter(dirpath: str, name: str) -> bool:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                return True
            if not elsewhere(path):
                return False
            followed.append(os.path.realpath(path))
            return True

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable,
                                                    followlinks=True):
            reldir = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if reldir == "." else reldir + "/"
            dirnames[:] = [
                d for d in sorted(dirnames)
                if d not in self.skip_dirs and not d.endswith(".egg-info")
                and not _not_project_code(dirpath, d)
                and not skipped_dir(f"{prefix}{d}") and enter(dirpath, d)]
            if projects is not None and "pyproject.toml" in filenames:
                projects.append(reldir if prefix else "")
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path) and not elsewhere(path):
                    continue  # another name for a project file: scanned under its own
                if not _regular(path):
                    continue  # a FIFO, socket or device named *.py: reading it may block
                rel = prefix + name
                if skipped(rel) or (include is not None and not include.match_file(rel)):
                    continue
                yield rel

    @staticmethod
    def _check_duplicates(report: DiscoveryReport) -> None:
        seen: dict[str, TaskRef] = {}
        for ref in report.tasks:
            first = seen.setdefault(ref.name, ref)
            if first is not ref:
                report.warnings.append(
                    f"{ref.file}:{ref.line}: task name {ref.name!r} is also defined at "
                    f"{first.file}:{first.line}; give one of them name=... to keep both")


def examine(rel: str, data: bytes, decorators: frozenset[str], parse_all: bool
            ) -> tuple[str | dict[str, Any], bool]:
    """The state entry of one changed file (just its hash when it holds nothing to report)
    and whether it was parsed."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    relevant = any(d.split(".")[0].encode() in data for d in decorators)
    if not relevant and not parse_all:
        return digest, False  # cannot import Nuvom's decorator, so cannot hold a task
    try:
        tree = ast.parse(data, filename=rel)
    except SyntaxError as exc:
        return {"hash": digest, "tasks": [], "warnings": [], "unparsed": True, "errors": [
            f"{rel}:{exc.lineno or 0}: syntax error: {exc.msg}; file skipped"]}, True
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        return {"hash": digest, "tasks": [], "warnings": [], "unparsed": True,
                "errors": [f"{rel}:0: cannot parse: {exc}; file skipped"]}, True
    if not relevant:  # parsed for its syntax errors only: it cannot hold a task
        return digest, True
    scan = scan_module(tree, decorators)
    module = module_name(rel)
    tasks = [TaskRef(name=t.name, module=module, file=rel, line=t.line, func_name=t.func_name,
                     options=t.options, description=t.description,
                     is_async=t.is_async, unread=t.unread).to_dict() for t in scan.tasks]
    warnings = [f"{rel}:{w}" for w in scan.warnings]
    if not tasks and not warnings:
        return digest, True
    return {"hash": digest, "tasks": tasks, "warnings": warnings, "errors": []}, True


def _kept(rel: str, entry: Any, before: Any) -> Any:
    """``entry``, but for a file that no longer parses, with the tasks the last scan that
    parsed it found.

    Why: a typo saved in a task module, then a worker's start-up discovery, wrote a
    manifest without that module's tasks, so their schedules stopped and `nuvom enqueue`
    called them unknown, while the module's jobs waited. The file's error is still
    reported (the command exits 1), and its jobs fail on import until it is fixed."""
    if not (isinstance(entry, dict) and entry.get("unparsed") and isinstance(before, dict)
            and before.get("tasks")):
        return entry
    tasks = before["tasks"]
    names = ", ".join(str(t.get("name")) for t in tasks)
    return {**entry, "tasks": tasks, "warnings": [
        f"{rel}: its task(s) {names} are kept as the last scan that parsed it found them "
        "(known and scheduled, but their jobs fail until the module imports); fix the file "
        "and run `nuvom discover tasks` again"]}


def examine_path(root: str, rel: str, args: tuple[frozenset[str], bool]
                 ) -> tuple[str, Any, bool]:
    """:func:`examine` reading the file itself (runs in pool workers)."""
    try:
        data = (Path(root) / rel).read_bytes()
    except OSError as exc:
        return rel, {"hash": None, "tasks": [], "warnings": [],
                     "errors": [f"{rel}: cannot read: {exc.strerror or exc}"]}, False
    return (rel, *examine(rel, data, *args))


def _hash_of(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("hash")
    return None
