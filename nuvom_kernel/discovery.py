"""Task discovery contract and the manifest the kernel reads at worker start.

Discoverers are plugins (``nuvom_register_discoverers``); the kernel only defines what they
return (:class:`TaskRef`) and owns ``.nuvom/manifest.json``, which the worker's registry reads
to know where each task lives without importing anything up front.
"""

from __future__ import annotations

import abc
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import attrs

from nuvom_kernel.errors import NuvomError

__all__ = [
    "MANIFEST_VERSION",
    "Discoverer",
    "DiscoveryReport",
    "ManifestError",
    "Scan",
    "TaskRef",
    "changed_since",
    "files_root",
    "import_roots",
    "read_manifest",
    "recorded_scan",
    "usable_manifest",
    "write_manifest",
]

MANIFEST_VERSION = 1


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen
class TaskRef:
    """One task found in source: where it is and the options literally given to ``@task``.

    :param name: the registry name (``name=`` in the decorator, else the function name).
    :param module: the importable module path relative to the project root.
    :param file: the source file relative to the project root, POSIX separators.
    :param line: the line of the ``def``.
    :param options: keyword options written literally in the decorator.
    :param unread: the names of options given in the decorator that are not literals, so
        ``options`` lacks them: ``nuvom list tasks`` shows them unknown, not as defaults
        (``retries=RETRIES`` read 0 where 3 runs).
    """

    name: str
    module: str
    file: str
    line: int
    func_name: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    description: str | None = None
    is_async: bool = False
    unread: tuple[str, ...] = attrs.field(default=(), converter=_names)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRef:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.define
class DiscoveryReport:
    """What one discovery run found and what changed since the previous manifest."""

    tasks: list[TaskRef] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)  # "file:line: message"
    warnings: list[str] = attrs.field(factory=list)
    files_scanned: int = 0
    files_parsed: int = 0  # files actually re-parsed (changed content)


class Discoverer(abc.ABC):
    """Finds tasks under a project root without importing it.

    ``state`` is the discoverer's own cache from the previous run (e.g. content hashes), kept
    in the manifest so incremental runs survive between processes.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def discover(
        self,
        root: Path,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        state: dict[str, Any] | None = None,
    ) -> tuple[DiscoveryReport, dict[str, Any]]:
        """Scan ``root``; return the report and the new state to store for next time."""


def manifest_path(data_dir: Path) -> Path:
    return data_dir / "manifest.json"


class ManifestError(NuvomError, ValueError):
    """``.nuvom/manifest.json`` cannot be used: not JSON, or not a manifest's shape.

    A ``ValueError`` (what readers already catch: a worker logs it and runs without the
    manifest). ``problem`` is what is wrong, without the file name or the fix, for a caller
    that words its own (``nuvom discover tasks`` rewrites the file anyway).
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is not a valid Nuvom manifest: {problem}. Rerun "
                         f"`nuvom discover tasks` to rewrite it.")
        self.path = path
        self.problem = problem


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    """The manifest as a dict, ``None`` if there is none.

    Its shape is checked here, once, for every reader (the worker's registry, its scheduler
    and concurrency limits, ``nuvom list tasks``, ``nuvom discover tasks``): each of them
    indexes entries by ``name`` and ``module`` and reads ``options`` as a mapping, so a
    hand-edited or truncated file would otherwise stop a worker with a bare ``KeyError``.

    :raises ManifestError: (a ``ValueError``) the file is not JSON, or not a manifest's
        shape; the message names the file, the first wrong entry, and the fix.
    """
    path = manifest_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"it is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:  # a folder, or a file this user may not read: say which
        raise ManifestError(path, f"it cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(path, f"it is not valid JSON ({exc})") from None
    problem = _manifest_problem(data)
    if problem is not None:
        raise ManifestError(path, problem)
    return cast("dict[str, Any]", data)


def usable_manifest(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a manifest that can be read (its tasks may be none)."""
    try:
        return read_manifest(data_dir) is not None
    except ValueError:
        return False


@attrs.frozen
class Scan:
    """Where a discovery run looked: what ``nuvom discover tasks --root --include --exclude``
    was given, kept in the manifest (``scan``) for a worker that discovers again at start."""

    root: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def to_dict(self, project: Path) -> dict[str, Any]:
        """The root relative to ``project`` where it is inside it (a project moved or
        mounted elsewhere keeps its manifest valid), else absolute."""
        try:
            root = self.root.resolve().relative_to(project.resolve()).as_posix()
        except ValueError:
            root = str(self.root.resolve())
        return {"root": root, "include": list(self.include), "exclude": list(self.exclude)}


def recorded_scan(manifest: Mapping[str, Any], project: Path) -> Scan | None:
    """How ``manifest`` was discovered (its root, made absolute against ``project``, and the
    ``--include``/``--exclude`` globs), so that it can be discovered again alike; ``None``
    for a manifest that does not say (written before it was recorded, or by hand)."""
    scan = manifest.get("scan")
    if not isinstance(scan, dict) or not isinstance(scan.get("root"), str):
        return None
    globs = [scan.get(key) or [] for key in ("include", "exclude")]
    if not all(isinstance(g, list) and all(isinstance(x, str) for x in g) for g in globs):
        return None
    return Scan(project / scan["root"], tuple(globs[0]), tuple(globs[1]))


def files_root(manifest: Mapping[str, Any], project: Path) -> Path:
    """The folder the manifest's task files are relative to: the root it records it was
    discovered from, else ``project``."""
    scan = recorded_scan(manifest, project)
    return scan.root if scan is not None else project


def import_roots(manifest: Mapping[str, Any], project: Path) -> list[Path]:
    """The folders the manifest's modules are imported from, absolute: each task's file
    (relative to the recorded scan root) without its module's path (``src/shop/tasks.py``
    as ``shop.tasks`` -> ``src``). An entry whose file does not end in its module's path
    (written by hand) gives none."""
    base = files_root(manifest, project)
    roots: dict[Path, None] = {}
    for entry in manifest.get("tasks", []):
        file, module = entry.get("file"), entry.get("module")
        if not isinstance(file, str) or not isinstance(module, str):
            continue
        parts = list(Path(file).with_suffix("").parts)
        if parts[-1:] == ["__init__"]:
            parts.pop()
        names = module.split(".")
        if len(parts) >= len(names) and parts[len(parts) - len(names):] == names:
            roots[(base / Path(*parts[:len(parts) - len(names)])).absolute()] = None
    return list(roots)


def changed_since(data_dir: Path, root: Path) -> list[str]:
    """The manifest's task files modified after it was written, or removed, for a worker
    to discover again or say at start that it may be stale: a ``schedule=`` added to a
    task after discovery never fired, and nothing said why. Files are relative to the root
    the manifest records (:func:`recorded_scan`), else to ``root`` (the project).

    A removed file counts where another file the manifest names is there (the sources
    are deployed beside it): a deleted task module's schedule kept firing jobs that failed
    as unknown tasks, and each process-pool child said it could not import it. Where none
    is there (a manifest shipped without its sources, or written from another ``--root``
    without a record of it), and for a manifest that cannot be read (said elsewhere),
    nothing counts."""
    try:
        written = manifest_path(data_dir).stat().st_mtime
        manifest = read_manifest(data_dir)
    except (OSError, ValueError):
        return []
    root = files_root(manifest or {}, root)
    changed, gone, present = [], [], False
    for name in sorted({t["file"] for t in (manifest or {}).get("tasks", [])
                        if isinstance(t.get("file"), str)}):
        try:
            modified = (root / name).stat().st_mtime
        except FileNotFoundError:
            gone.append(name)
            continue
        except OSError:
            continue
        present = True
        if modified > written:
            changed.append(name)
    return sorted(changed + gone) if present else changed


def _manifest_problem(data: Any) -> str | None:
    """What makes ``data`` not a manifest (the first problem found), or ``None``."""
    if not isinstance(data, dict):
        return f"the top level is {_json_type(data)}, not an object"
    if "tasks" not in data:
        return "it has no \"tasks\" list"
    tasks = data["tasks"]
    if not isinstance(tasks, list):
        return f"\"tasks\" is {_json_type(tasks)}, not a list"
    for index, entry in enumerate(tasks):
        where = f"tasks[{index}]"
        if not isinstance(entry, dict):
            return f"{where} is {_json_type(entry)}, not an object"
        for key in ("name", "module"):
            value = entry.get(key)
            if isinstance(value, str) and value:
                continue
            task = f" (task {entry['name']!r})" if key == "module" else ""
            got = "is missing" if key not in entry else f"is {_json_type(value)}"
            return f"{where}{task}: \"{key}\" {got}, not a non-empty string"
        if not isinstance(entry.get("options", {}), dict | None):
            return (f"{where} (task {entry['name']!r}): \"options\" is "
                    f"{_json_type(entry['options'])}, not an object")
    if not isinstance(data.get("state", {}), dict | None):
        return f"\"state\" is {_json_type(data['state'])}, not an object"
    return None


def _json_type(value: Any) -> str:
    """``value``'s JSON type, for a message (``1`` -> ``a number``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def write_manifest(
    data_dir: Path, tasks: Iterable[TaskRef], state: Mapping[str, Any] | None = None,
    scan: Mapping[str, Any] | None = None,
) -> Path:
    """Write the manifest atomically (temp file in the same directory, fsync, rename).

    :param scan: :meth:`Scan.to_dict` of the run that found ``tasks``, if any.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_path(data_dir)
    payload: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "tasks": [t.to_dict() for t in sorted(tasks, key=lambda t: (t.name, t.module))],
        "state": dict(state or {}),
    }
    if scan is not None:
        payload["scan"] = dict(scan)
    # Not mkstemp: its files are 0600, and a worker running as another user (discovery
    # run by a build step as root, say) could not read the manifest. This one gets the
    # umask's mode, like the store beside it.
    tmp = str(data_dir / f".manifest.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
