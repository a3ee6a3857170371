"""An observer that raises on every job is reported once with its traceback and the way out,
then at most once a minute with a count, not as a CRITICAL traceback per job (thousands a
second in a drain, burying every other line of the log)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import JobStatus, events, hookimpl
from nuvom_kernel.kernel import use_kernel
from nuvom_kernel.worker import Worker
from tests.helpers import wait_until, write_module


class Broken:
    """A metrics plugin broken in one hook."""

    @hookimpl
    def nuvom_after_execute(self, job: Any, result: Any) -> None:
        raise ValueError("label 'queue' missing")


def test_an_observer_failing_on_every_job_is_reported_once(
        make_kernel: Any, project: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_module(project, "flood_tasks", "from nuvom_kernel import task\n"
                 "@task\ndef noop(i):\n    return i\n")
    kernel = make_kernel("memory")
    kernel.pm.register(Broken(), name="brokenmetrics")
    with use_kernel(kernel), caplog.at_level(logging.CRITICAL, logger="nuvom.events"):
        from flood_tasks import noop

        worker = Worker(kernel, workers=2, poll_timeout_secs=0.2)
        worker.start()
        try:
            jobs = noop.map([(i,) for i in range(200)])
            wait_until(lambda: all(j.refresh().status is JobStatus.SUCCEEDED for j in jobs),
                       what="every job done")
        finally:
            worker.stop()
        assert worker.join() == 0
    reports = [r for r in caplog.records if "brokenmetrics" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    assert reports[0].exc_info is not None, "the first report carries the traceback"
    text = reports[0].getMessage()
    assert "plugin 'brokenmetrics' raised in nuvom_after_execute; ignored" in text
    assert "NUVOM_DISABLE_PLUGINS=brokenmetrics" in text


def test_a_repeated_error_is_reported_again_with_its_count(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(events, "REPEAT_SECS", 0.0)  # every repeat is due at once

    class Impl:
        plugin_name = "countedmetrics"

    impl = Impl()
    with caplog.at_level(logging.CRITICAL, logger="nuvom.events"):
        for _ in range(3):
            events._isolated(impl, "nuvom_after_settle", ValueError("boom"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "raised in nuvom_after_settle; ignored (the job goes on)" in lines[0]
    assert lines[1] == ("plugin 'countedmetrics' raised in nuvom_after_settle again; ignored: "
                        "ValueError: boom (0 more time(s) since the last report)")
    assert caplog.records[1].exc_info is None
