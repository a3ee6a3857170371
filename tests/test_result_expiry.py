"""Finished job records expire: a real `nuvom runworker` deletes records (and ended
workflows) older than the result backend's ``result_ttl_secs`` on SQLite and the file
backend, the stores without an expiry of their own; unfinished jobs are kept. Before,
records stayed until `nuvom purge results` (a soak's SQLite file grew ~150 MB an hour)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_kernel import chain
from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.values import RESULT_TTL_SECS
from nuvom_plugins_sqlite.results import PURGE_CHUNK, SQLiteResultBackend
from tests.helpers import start_worker, stop_worker, wait_until, write_module

TASKS = """
import pathlib
from nuvom_kernel import task

@task
def ok(x):
    return x

@task
def bad():
    raise ValueError("no")

@task
def held(gate):
    path = pathlib.Path(gate)
    while not path.exists():
        import time; time.sleep(0.05)
    return "released"
"""

TTL = 2.0


@pytest.fixture(params=["sqlite", "file"])
def env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    name = request.param
    write_module(project, "t_expiry", TASKS)
    yield {"NUVOM_QUEUE_BACKEND": name, "NUVOM_RESULT_BACKEND": name,
           f"NUVOM_PLUGINS__{name.upper()}__RESULT_TTL_SECS": str(TTL)}


@pytest.mark.slow
def test_a_worker_deletes_finished_records_after_the_ttl_and_keeps_running_ones(
        env: dict[str, str], project: Path) -> None:
    from t_expiry import bad, held, ok  # type: ignore[import-not-found]

    kernel = Kernel(root=project, environ=env)
    assert kernel.results.result_ttl_secs == TTL
    gate = project / "gate"
    worker = start_worker(project, env, "--workers", "2")
    try:
        with use_kernel(kernel):
            running = held.delay(str(gate))
            done, failed = ok.delay(1), bad.delay()
            flow = chain(ok.s(5), ok.si(6)).delay()
            assert done.get(timeout=60) == 1 and flow.get(timeout=60) == 6
        wait_until(lambda: kernel.results.get(failed.id) is not None
                   and kernel.results.get(failed.id).status is JobStatus.FAILED,  # type: ignore[union-attr]
                   timeout=60, what="the failing job to fail")
        wait_until(lambda: kernel.queue.peek_state(running.id) is JobStatus.RUNNING,
                   timeout=60, what="the held job to start")
        finished_at = time.time()
        wait_until(lambda: all(kernel.results.get(j.id) is None for j in (done, failed)),
                   timeout=30, what="the finished records to expire")
        assert time.time() - finished_at > TTL / 2, "deleted before its TTL"
        wait_until(lambda: kernel.queue.read_workflow(flow.id, nodes=False) is None,
                   timeout=60, what="the ended workflow to be deleted with its steps")
        assert kernel.queue.peek_state(running.id) is JobStatus.RUNNING
        gate.touch()
        with use_kernel(kernel):
            assert running.get(timeout=60) == "released"
    finally:
        gate.touch()
        out = stop_worker(worker)
    assert "deleted" in out and "result_ttl_secs of result backend" in out, out


def test_sqlite_purges_a_long_backlog_in_chunks_and_keeps_unfinished_records(
        tmp_path: Path) -> None:
    backend = SQLiteResultBackend(tmp_path / "r.db")
    assert backend.result_ttl_secs == RESULT_TTL_SECS == 7 * 86400
    old = time.time() - 10 * 86400
    n = 2 * PURGE_CHUNK + 17
    records = [JobRecord(job_id=f"j{i}", task="t", status=JobStatus.SUCCEEDED,
                         updated_at=old) for i in range(n)]
    records += [JobRecord(job_id=f"r{i}", task="t", status=JobStatus.RUNNING,
                          updated_at=old) for i in range(3)]
    records.append(JobRecord(job_id="new", task="t", status=JobStatus.FAILED,
                             updated_at=time.time()))
    backend.put_many(records)
    assert backend.purge(time.time() - RESULT_TTL_SECS) == n
    left = {r.job_id for r in backend.query(limit=100)}
    assert left == {"r0", "r1", "r2", "new"}


@pytest.mark.parametrize("name", ["sqlite", "file"])
def test_a_bad_result_ttl_names_the_setting(project: Path, name: str) -> None:
    env = {"NUVOM_QUEUE_BACKEND": name, "NUVOM_RESULT_BACKEND": name,
           f"NUVOM_PLUGINS__{name.upper()}__RESULT_TTL_SECS": "-5"}
    with pytest.raises(PluginConfigError, match=f"NUVOM_PLUGINS__{name.upper()}__RESULT_TTL_SECS"):
        Kernel(root=project, environ=env).results  # noqa: B018 - building it checks
