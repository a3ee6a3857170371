"""``[plugins.sqlite]`` durations: finite and at most the kernel's longest (366 days)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.values import MAX_SECONDS
from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend

KEYS = ["busy_timeout_secs", "visibility_timeout_secs"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [float("inf"), "inf", 1e13])
def test_an_endless_or_huge_duration_is_refused_naming_the_setting(
        tmp_path: Path, key: str, value: object) -> None:
    """``inf`` made leases that never expire (a crashed worker's job never ran again) and
    busy waits without end; the kernel and the PostgreSQL plugin refuse it."""
    settings = {"path": str(tmp_path / "q.db"), key: value}
    for backend in (SQLiteJobQueue, SQLiteResultBackend):
        with pytest.raises(ConfigError) as refused:
            backend.from_settings(settings, BackendContext())
        text = str(refused.value)
        assert f"[plugins.sqlite] {key}={value!r} (NUVOM_PLUGINS__SQLITE__{key.upper()}) " \
            "is invalid" in text, text
        assert f"at most {MAX_SECONDS} seconds (366 days)" in text, text


@pytest.mark.parametrize("key", KEYS)
def test_durations_end_at_366_days(tmp_path: Path, key: str) -> None:
    path = str(tmp_path / "q.db")
    queue = SQLiteJobQueue.from_settings({"path": path, key: MAX_SECONDS}, BackendContext())
    assert getattr(queue.settings, key) == MAX_SECONDS
    queue.close()
    with pytest.raises(ConfigError, match=rf"{key}={MAX_SECONDS + 1} \(.*\) is invalid"):
        SQLiteJobQueue.from_settings({"path": path, key: MAX_SECONDS + 1}, BackendContext())


@pytest.mark.parametrize("where", ["toml", "env"])
def test_the_cli_refuses_a_duration_over_366_days_with_exit_2(tmp_path: Path,
                                                             where: str) -> None:
    """1e13 s: finite, so the kernel's own check of plugin floats (finite numbers) passes
    it; the plugin's bound refuses it. (``inf`` is refused by both.)"""
    env = {"PATH": "/usr/bin:/bin", "NUVOM_QUEUE_BACKEND": "sqlite",
           "NUVOM_RESULT_BACKEND": "sqlite"}
    if where == "toml":
        (tmp_path / ".nuvom_plugins.toml").write_text(
            "[plugins.sqlite]\nvisibility_timeout_secs = 1e13\n")
    else:
        env["NUVOM_PLUGINS__SQLITE__VISIBILITY_TIMEOUT_SECS"] = "1e13"
    status = subprocess.run([sys.executable, "-m", "nuvom_kernel", "status"], cwd=tmp_path,
                            text=True, capture_output=True, timeout=60, env=env)
    assert status.returncode == 2, status
    source = (f"{tmp_path / '.nuvom_plugins.toml'} [plugins.sqlite]: "
              "visibility_timeout_secs=10000000000000.0" if where == "toml" else
              "env NUVOM_PLUGINS__SQLITE__VISIBILITY_TIMEOUT_SECS: "
              "visibility_timeout_secs='1e13'")
    assert status.stderr.startswith(
        f"Error: {source} is invalid: it must be a finite number of seconds > 0 and at most "
        "31622400 seconds (366 days)"
    ), status.stderr
    assert "Traceback" not in status.stderr
