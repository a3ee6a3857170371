"""A project's namespace on a shared server (Redis, PostgreSQL) belongs to the test run, not
to whichever process touched it first: a producer or worker a test starts may be the first
to use the server, and what it wrote must still be there for the test once it has exited."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nuvom_kernel.kernel import Kernel
from tests.helpers import SERVER_BACKENDS, user_env, write_module

TASKS = """
from nuvom_kernel import task

@task
def add(a, b):
    return a + b
"""


@pytest.mark.skipif(not SERVER_BACKENDS, reason="no server backend installed")
@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_jobs_enqueued_by_a_process_that_exited_are_still_queued(
        backend: str, project: Path, make_kernel: Callable[..., Kernel]) -> None:
    write_module(project, "ns_tasks", TASKS)
    done = subprocess.run(
        [sys.executable, "-c", "import ns_tasks; ns_tasks.add.delay(1, 2); "
                               "ns_tasks.add.delay(3, 4)"],
        cwd=project, capture_output=True, text=True, timeout=60, check=False,
        env=user_env(PYTHONPATH=str(project), NUVOM_QUEUE_BACKEND=backend,
                     NUVOM_RESULT_BACKEND=backend))
    assert done.returncode == 0, done.stderr
    kernel = make_kernel(backend)
    assert kernel.queue.qsize() == 2, \
        "the producer created the namespace; its exit must not remove the jobs it queued"
