"""The declared ``[plugins.file]`` and ``[plugins.memory]`` schemas match what the backends
accept, so the kernel's key check (issue 12, point 3) never refuses a key a backend takes or
lets through one it would reject."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import Message
from nuvom_plugins.file.plugin import FileSettings
from nuvom_plugins.file.queue import _QUEUE_KEYS, RESULT_KEYS


def kernel_on(root: Path, plugin: str, **settings: str) -> Kernel:
    """A kernel on ``plugin``'s two backends, its ``[plugins.<plugin>]`` keys set by
    ``NUVOM_PLUGINS__<PLUGIN>__<KEY>`` variables."""
    return Kernel(root=root, environ={
        "NUVOM_QUEUE_BACKEND": plugin, "NUVOM_RESULT_BACKEND": plugin,
        **{f"NUVOM_PLUGINS__{plugin.upper()}__{key.upper()}": value
           for key, value in settings.items()}})


def test_file_schema_is_the_union_of_both_backends_keys() -> None:
    assert {f.name for f in attrs.fields(FileSettings)} == _QUEUE_KEYS | RESULT_KEYS


def test_environment_reaches_the_file_backends_typed(tmp_path: Path) -> None:
    kernel = kernel_on(tmp_path, "file", fsync="false", results_fsync="no",
                       path=str(tmp_path / "q"), segment_max_bytes="4096")
    try:
        assert kernel.queue.fsync is False  # type: ignore[attr-defined]
        assert kernel.queue.path == tmp_path / "q"  # type: ignore[attr-defined]
        assert kernel.results.fsync is False, "'no' is false, not a truthy string"  # type: ignore[attr-defined]
        assert kernel.results.segment_max_bytes == 4096  # type: ignore[attr-defined]
    finally:
        kernel.close()


def test_memory_queue_takes_its_lease_length_from_the_environment(tmp_path: Path) -> None:
    kernel = kernel_on(tmp_path, "memory", visibility_timeout_secs="2.5")
    assert kernel.queue.visibility_timeout_secs == 2.5


@pytest.mark.parametrize(("plugin", "key", "value"), [
    ("file", "visibility_timeout_secs", "1e13"), ("file", "relist_interval_secs", "1e13"),
    ("memory", "visibility_timeout_secs", "1e13")])
def test_durations_are_bounded_as_the_kernels_are(tmp_path: Path, plugin: str, key: str,
                                                  value: str) -> None:
    """A lease of 1e13 s was taken (the kernel's setting and SQLite's refuse it): a crashed
    worker's jobs would never have been recovered."""
    with pytest.raises(PluginConfigError, match="at most 31622400 seconds"):
        kernel_on(tmp_path, plugin, **{key: value})


def test_a_task_that_changes_directory_moves_no_file_store(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A relative ``path`` was read against the current folder at every call: a task that
    called ``os.chdir`` broke the worker's claims and acks, and sent records elsewhere."""
    monkeypatch.chdir(tmp_path)
    kernel = kernel_on(tmp_path, "file", path="q", results_path="r")
    try:
        assert kernel.queue and kernel.results  # built as a worker builds them, at start
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        kernel.queue.enqueue(Message(id="j1", body=b"{}"))
        [lease] = kernel.queue.claim(1)
        assert kernel.queue.ack(lease)
        assert (tmp_path / "q" / "ready").is_dir() and not (elsewhere / "q").exists()
        assert kernel.results.location == str(tmp_path / "r")
    finally:
        kernel.close()


def test_a_relist_interval_of_zero_still_means_every_poll(tmp_path: Path) -> None:
    kernel = kernel_on(tmp_path, "file", relist_interval_secs="0")
    try:
        assert kernel.queue.relist_interval_secs == 0  # type: ignore[attr-defined]
    finally:
        kernel.close()
