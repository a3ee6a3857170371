"""Helpers shared by this distribution's tests (a unique module name: the kernel's tests have
their own ``conftest.py`` and may run in the same session)."""

from __future__ import annotations

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
