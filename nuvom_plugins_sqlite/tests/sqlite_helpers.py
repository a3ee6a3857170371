"""Helpers shared by this distribution's tests (a unique module name: the kernel's tests have
their own ``conftest.py`` and may run in the same session)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nuvom_kernel.models import Message


def msg(job_id: str, **kwargs: object) -> Message:
    """A message with a recognisable body."""
    return Message(id=job_id, body=f"body-{job_id}".encode(), **kwargs)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], object], timeout: float = 5.0,
               step: float = 0.01) -> object:
    """Poll ``predicate`` until it is truthy or the deadline passes (then fail the test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(step)


def run_as(user: str, fn: Callable[[], object]) -> str:
    """Run ``fn`` in a forked child with ``user``'s uid and gid (the caller must be root);
    ``"ok"``, or ``"<exception type>: <message>"`` if it raised. Why fork and not a new
    interpreter: this venv's Python may sit where ``user`` cannot read it (``/root``); the
    forked child has every module loaded already."""
    import pwd  # POSIX only: imported where needed, not by every test module

    entry = pwd.getpwnam(user)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        out = "ok"
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            fn()
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, out.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


#: The ``nuvom`` console script of the environment running the tests: what a user types.
NUVOM = Path(sys.executable).parent / ("nuvom.exe" if os.name == "nt" else "nuvom")


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell environment: no ``NUVOM_*`` or ``PYTHONPATH`` left over from the test
    run (as the kernel's ``tests/helpers.py``; this distribution's tests stand alone)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
    return {**env, **extra}


def run_nuvom(args: list[str], cwd: Path, timeout: float = 120, **env: str
              ) -> subprocess.CompletedProcess[str]:
    """Run the real ``nuvom`` command from ``cwd``, as a user would from a terminal."""
    assert NUVOM.exists(), f"{NUVOM} is missing: install the kernel (pip install -e .)"
    return subprocess.run([str(NUVOM), *args], cwd=cwd, env=user_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_worker(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``nuvom runworker`` in ``project``; its output and errors on one text pipe."""
    return subprocess.Popen([str(NUVOM), "runworker", *args], cwd=project,
                            env=user_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop_worker(worker: subprocess.Popen[str]) -> str:
    """SIGINT a :func:`start_worker` process (a clean drain) and return its output; kill it
    if it has not stopped after 30 s, so a hung worker fails the test instead of hanging."""
    worker.send_signal(signal.SIGINT)
    try:
        out, _ = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, _ = worker.communicate()
    return out
