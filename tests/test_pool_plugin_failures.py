"""A plugin the worker disabled stays disabled in its process pool's children.

The worker (the ``nuvom`` CLI) disables a plugin whose ``nuvom_register_commands`` raises
after loading; its children load the plugins without building the CLI, so they never called
that hook and kept the plugin's other hooks running where the tasks run. Real processes: an
installed distribution (a ``.dist-info`` on ``PYTHONPATH``), ``nuvom runworker --pool
process``, and a task that enqueues from its child.
"""

from __future__ import annotations

from pathlib import Path

from nuvom_kernel import JobStatus
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import (
    fake_distribution,
    read_until_started,
    start_worker,
    stop_worker,
    wait_until,
    write_module,
)

#: Its command hook raises; its other hooks record the process they ran in.
BROKEN_COMMANDS = '''
import os
from nuvom_kernel import hookimpl

LOG = {log!r}


def _ran(hook):
    with open(LOG, "a") as out:
        out.write(f"{{hook}} {{os.getpid()}}\\n")


@hookimpl
def nuvom_configure(config):
    _ran("nuvom_configure")


@hookimpl
def nuvom_before_enqueue(job):
    _ran("nuvom_before_enqueue")


@hookimpl
def nuvom_register_commands(cli):
    raise RuntimeError("boom in commands")
'''

TASKS = '''
import os
from nuvom_kernel import task


@task
def follow_up():
    return None


@task
def enqueue_from_the_child():
    follow_up.delay()
    return os.getpid()
'''

SQLITE = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}


def test_a_plugin_the_worker_disabled_runs_no_hook_in_its_children(project: Path) -> None:
    log = project / "hooks.log"
    site = fake_distribution(project / "site", "khpoolcmd",
                             BROKEN_COMMANDS.format(log=str(log)))
    write_module(project, "pool_tasks", TASKS)
    worker = start_worker(project, {"PYTHONPATH": str(site), **SQLITE},
                          "--pool", "process", "--workers", "1", "--no-scheduler")
    try:
        started = "".join(read_until_started(worker))
        assert " started: " in started, started
        from pool_tasks import enqueue_from_the_child

        with use_kernel(Kernel(root=project, environ=SQLITE)) as kernel:
            job = enqueue_from_the_child.delay()
            wait_until(lambda: kernel.refresh_job(job).status in (JobStatus.SUCCEEDED,
                                                                  JobStatus.FAILED),
                       timeout=60, what="the job run by a child")
            assert job.status is JobStatus.SUCCEEDED, job.error
            child = job.result
            kernel.close()
    finally:
        out = started + stop_worker(worker)
    failure = ("plugin 'khpoolcmd' (distribution nuvom-plugins-khpoolcmd 0.1) failed in "
               "nuvom_register_commands: RuntimeError('boom in commands')")
    assert out.count(failure) == 1, out  # said once, by the worker
    assert child != worker.pid  # it ran in a child, or the check below would be empty
    ran = [line.split() for line in log.read_text().splitlines()]
    # the worker loaded it (and ran its configure) before its CLI disabled it
    assert ["nuvom_configure", str(worker.pid)] in ran, ran
    in_child = [hook for hook, pid in ran if pid == str(child)]
    assert not in_child, f"the disabled plugin's hooks ran in the pool child: {in_child}"
