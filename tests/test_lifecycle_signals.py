"""A stop signal handled just before a lifecycle hook began could not interrupt it: the
chaos suite's hung startup hook, reached only after 20 jobs were served on a loaded
machine, then held the main thread and the worker never drained on SIGINT. A signal that
came first now skips the startup hooks (and a second one the shutdown hooks), said in the
log; the hooks run as before otherwise. Real kernel and worker, a real plugin."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import hookimpl
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.worker import Worker


class _Recorder:
    def __init__(self) -> None:
        self.ran: list[str] = []

    @hookimpl
    def nuvom_worker_startup(self, worker: Any) -> None:
        self.ran.append("startup")

    @hookimpl
    def nuvom_worker_shutdown(self, worker: Any) -> None:
        self.ran.append("shutdown")


@pytest.fixture
def recorded(project: Path) -> Any:
    recorder = _Recorder()
    kernel = Kernel(root=project, plugins={"lifecycle-recorder": recorder},
                    environ={"NUVOM_QUEUE_BACKEND": "memory",
                             "NUVOM_RESULT_BACKEND": "memory"})
    worker = Worker(kernel, workers=1, scheduler=False)
    yield recorder, worker
    kernel.close()


@pytest.mark.parametrize(("signals", "expected"), [
    (0, ["startup", "shutdown"]),
    (1, ["shutdown"]),  # a drain: its shutdown hooks still run
    (2, []),  # stop at once
])
def test_hooks_signalled_before_they_began_are_not_run(
        recorded: Any, caplog: pytest.LogCaptureFixture, signals: int,
        expected: list[str]) -> None:
    recorder, worker = recorded
    worker.signals.received = signals
    with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        worker.signals.emit_lifecycle("nuvom_worker_startup")
        worker.signals.emit_lifecycle("nuvom_worker_shutdown")
    assert recorder.ran == expected
    said = [r for r in caplog.records if "were not run" in r.getMessage()]
    skipped = [r.getMessage() for r in said]
    assert len(skipped) == 2 - len(expected), skipped
    assert all(r.levelno == logging.WARNING for r in said), "by design, not an error"
    assert all("signalled to stop before its plugins'" in m and "lifecycle-recorder" in m
               for m in skipped)


def test_no_hook_skipped_is_not_said(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every forced stop logged about shutdown hooks that were not run, with no
    plugin implementing one."""
    from nuvom_kernel.testing.pytest_plugin import build_test_kernel

    kernel = build_test_kernel(project)  # no installed plugin: none has a shutdown hook
    try:
        worker = Worker(kernel, workers=1, scheduler=False)
        worker.signals.received = 2
        with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
            worker.signals.emit_lifecycle("nuvom_worker_shutdown")
        assert not [r for r in caplog.records if "were not run" in r.getMessage()]
    finally:
        kernel.close()


class _Hangs:
    """A startup hook that a stop signal reaches while it runs (as if it hung there)."""

    @hookimpl
    def nuvom_worker_startup(self, worker: Any) -> None:
        import signal

        worker.signals.handle(signal.SIGTERM, None)  # what the signal does, mid-hook
        raise AssertionError("the signal did not interrupt the hook")


def test_an_interrupted_lifecycle_hook_names_its_plugin(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """plugin_hooks.md promises a hook's failure is isolated and named: the interrupted one
    was "a plugin's nuvom_worker_startup hook"."""
    kernel = Kernel(root=project, plugins={"hangs-at-start": _Hangs()},
                    environ={"NUVOM_QUEUE_BACKEND": "memory",
                             "NUVOM_RESULT_BACKEND": "memory"})
    try:
        worker = Worker(kernel, workers=1, scheduler=False)
        with caplog.at_level(logging.ERROR, logger="nuvom.worker"):
            worker.signals.emit_lifecycle("nuvom_worker_startup")
        said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
        assert said == ["the nuvom_worker_startup hook of plugin 'hangs-at-start' was still "
                        "running when the worker was signalled; it was interrupted"], said
    finally:
        kernel.close()
