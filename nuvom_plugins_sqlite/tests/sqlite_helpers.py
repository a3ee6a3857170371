"""Helpers shared by this distribution's tests (a unique module name: the kernel's tests have
their own ``conftest.py`` and may run in the same session)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

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
