"""Real processes for the dashboard's tests: ``nuvom dashboard`` and ``nuvom runworker``,
started from a project folder as a user would, stopped with SIGINT (killed if stuck)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nuvom_kernel.testing.contracts._support import wait_until

__all__ = ["Dashboard", "start_worker", "stop", "wait_until"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    return {**env, "NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite", **extra}


def _nuvom(project: Path, args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nuvom_kernel", *args], cwd=project,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGINT, then the process's whole output; killed if it has not stopped in 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def start_worker(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return _nuvom(project, ["runworker", "--workers", "2", *args], **env)


class Dashboard:
    """``nuvom dashboard --port 0`` in ``project``; :attr:`url` once it listens."""

    def __init__(self, project: Path, *args: str, **env: str) -> None:
        self.proc = _nuvom(project, ["dashboard", "--port", "0", *args], **env)
        self.lines: list[str] = []
        found = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "nuvom dashboard on http" in line:
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(60) or self.proc.poll() is not None:
            out = self.stop()
            raise AssertionError(f"nuvom dashboard did not start:\n{out}")
        match = re.search(r"on (http://\S+/) ", "".join(self.lines))
        assert match, self.lines
        self.url = match.group(1).replace("0.0.0.0", "127.0.0.1")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return "".join(self.lines)
