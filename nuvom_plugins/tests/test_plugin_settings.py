"""The declared ``[plugins.file]`` and ``[plugins.memory]`` schemas match what the backends
accept, so the kernel's key check (issue 12, point 3) never refuses a key a backend takes or
lets through one it would reject."""

from __future__ import annotations

from pathlib import Path

import attrs

from nuvom_kernel.kernel import Kernel
from nuvom_plugins.file.plugin import FileSettings
from nuvom_plugins.file.queue import _QUEUE_KEYS, RESULT_KEYS


def test_file_schema_is_the_union_of_both_backends_keys() -> None:
    assert {f.name for f in attrs.fields(FileSettings)} == _QUEUE_KEYS | RESULT_KEYS


def test_environment_reaches_the_file_backends_typed(tmp_path: Path) -> None:
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "file", "NUVOM_RESULT_BACKEND": "file",
        "NUVOM_PLUGINS__FILE__FSYNC": "false", "NUVOM_PLUGINS__FILE__RESULTS_FSYNC": "no",
        "NUVOM_PLUGINS__FILE__PATH": str(tmp_path / "q"),
        "NUVOM_PLUGINS__FILE__SEGMENT_MAX_BYTES": "4096"})
    try:
        assert kernel.queue.fsync is False  # type: ignore[attr-defined]
        assert kernel.queue.path == tmp_path / "q"  # type: ignore[attr-defined]
        assert kernel.results.fsync is False, "'no' is false, not a truthy string"  # type: ignore[attr-defined]
        assert kernel.results.segment_max_bytes == 4096  # type: ignore[attr-defined]
    finally:
        kernel.close()


def test_memory_queue_takes_its_lease_length_from_the_environment(tmp_path: Path) -> None:
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": "memory",
        "NUVOM_PLUGINS__MEMORY__VISIBILITY_TIMEOUT_SECS": "2.5"})
    assert kernel.queue.visibility_timeout_secs == 2.5
