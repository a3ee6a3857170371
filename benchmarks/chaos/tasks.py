"""What runs inside the workers: the chaos task module, written into every project.

Each attempt appends ``start``/``end`` lines to the execution log (see :mod:`.execlog`).
"""

from __future__ import annotations

__all__ = ["LOG_NAME", "TASKS_MODULE", "TASKS_SOURCE"]

TASKS_MODULE = "chaos_tasks"
LOG_NAME = "chaos.log"

TASKS_SOURCE = '''\
"""Chaos tasks: each attempt appends whole lines to the execution log (O_APPEND)."""

import os
import time

from nuvom_kernel import current_job, task
from nuvom_kernel.worker import child

LOG = os.path.abspath(os.environ.get("CHAOS_LOG", "chaos.log"))


def mark(kind):
    job = current_job()
    jid, attempt = (job.id, job.attempts) if job is not None else ("-", 0)
    pid = child.PARENT_PID or os.getpid()  # the worker's pid, also in a process-pool child
    line = f"{kind} {jid} {pid} {attempt} {time.time():.6f}\\n".encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task(name="chaos_work")
def work(i, secs=0.0):
    mark("start")
    if secs > 0:
        time.sleep(secs)
    mark("end")
    return i


@task(name="chaos_timed", timeout_secs=1.0)
def timed(i, secs=0.0):
    mark("start")
    time.sleep(secs)
    mark("end")
    return i


@task(name="chaos_flip")
def flip(i, secs=0.0):
    mark("start")
    attempt = current_job().attempts
    time.sleep(secs)
    mark("end")
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return i


@task(name="chaos_gated")
def gated(i, gate="gate", limit=120.0):
    mark("start")
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    mark("end")
    return i
'''
