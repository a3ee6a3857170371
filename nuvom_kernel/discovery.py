"""Task discovery contract and the manifest the kernel reads at worker start.

Discoverers are plugins (``nuvom_register_discoverers``); the kernel only defines what they
return (:class:`TaskRef`) and owns ``.nuvom/manifest.json``, which the worker's registry reads
to know where each task lives without importing anything up front.
"""

from __future__ import annotations

import abc
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

__all__ = [
    "MANIFEST_VERSION",
    "Discoverer",
    "DiscoveryReport",
    "TaskRef",
    "read_manifest",
    "write_manifest",
]

MANIFEST_VERSION = 1


@attrs.frozen
class TaskRef:
    """One task found in source: where it is and the options literally given to ``@task``.

    :param name: the registry name (``name=`` in the decorator, else the function name).
    :param module: the importable module path relative to the project root.
    :param file: the source file relative to the project root, POSIX separators.
    :param line: the line of the ``def``.
    :param options: keyword options written literally in the decorator.
    """

    name: str
    module: str
    file: str
    line: int
    func_name: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    description: str | None = None
    is_async: bool = False

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


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    """The manifest as a dict, ``None`` if there is none (a corrupt one is an error)."""
    path = manifest_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError(f"{path} is not a Nuvom manifest; rerun `nuvom discover tasks`")
    return data


def write_manifest(
    data_dir: Path, tasks: Iterable[TaskRef], state: Mapping[str, Any] | None = None
) -> Path:
    """Write the manifest atomically (temp file in the same directory, fsync, rename)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_path(data_dir)
    payload = {
        "version": MANIFEST_VERSION,
        "tasks": [t.to_dict() for t in sorted(tasks, key=lambda t: (t.name, t.module))],
        "state": dict(state or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".manifest.", suffix=".tmp")
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
