"""``nuvom status`` shows a queue backend's ``QueueStats.warnings``: one ``warning:`` line
each, and a ``warnings`` array in ``--json``; a backend that reports none shows none."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from nuvom_kernel.cli.jobs import status
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.views import QueueStats


def _kernel(tmp_path: Path) -> Kernel:
    return Kernel(root=tmp_path, environ={})


def test_no_warnings_by_default(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path)
    try:
        assert QueueStats().warnings == []
        human = CliRunner().invoke(status, [], obj=kernel)
        assert human.exit_code == 0, human.output
        assert "warning:" not in human.output
        as_json = CliRunner().invoke(status, ["--json"], obj=kernel)
        assert json.loads(as_json.output)["warnings"] == []
    finally:
        kernel.close()


def test_each_warning_is_shown(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path)
    said = ["table q.jobs has 9 dead rows", "session pid 7 has held a snapshot"]
    kernel.queue.stats = lambda: QueueStats(warnings=list(said))  # type: ignore[method-assign]
    try:
        human = CliRunner().invoke(status, [], obj=kernel)
        assert human.exit_code == 0, human.output
        assert [ln for ln in human.output.splitlines() if ln.startswith("warning: ")] == \
            [f"warning: {w}" for w in said]
        as_json = CliRunner().invoke(status, ["--json"], obj=kernel)
        assert json.loads(as_json.output)["warnings"] == said
    finally:
        kernel.close()
