"""Corrupt data (``corrupt``): garbage queue entries, truncated and future payloads, missing
tasks, unreadable records. The generic corruption goes through the SPI, so every backend
gets it; :attr:`BackendProfile.corrupt` adds a backend's own garbage."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

from nuvom_kernel.envelope import Envelope
from nuvom_kernel.models import JobStatus, Message, TaskOptions

from ..backends import Corruption, profile
from ..outcome import ChaosTimeout, Outcome, Sizes, wait_for
from ..project import Project, brief, project_for, run_cli, stop_all
from ..tasks import TASKS_MODULE

__all__ = ["scenario_corrupt"]


def _generic_corruption(project: Project) -> tuple[dict[str, str], str]:
    """Messages pushed through the backend SPI that no worker can run; returns job id ->
    the error type its FAILED record must name, and the id of a job a future kernel
    enqueued (a worker leaves it in the queue for a newer worker: no record)."""
    kernel = project.kernel()
    expected: dict[str, str] = {}
    bad = "nuvom_kernel.errors.SerializationError"
    missing = "nuvom_kernel.errors.UnknownTaskError"

    def push(body: bytes) -> None:
        job_id = f"corrupt{len(expected)}x{random.getrandbits(32):08x}"
        kernel.queue.enqueue(Message(id=job_id, body=body, queue="default"))
        expected[job_id] = bad

    envelope = kernel.serializer.loads(
        Envelope.for_call("chaos_work", TASKS_MODULE, TaskOptions(), [1], {})
        .to_body(kernel.serializer))
    whole = kernel.serializer.dumps(envelope)
    push(b"\xff\xfe\x00 not even text")  # undecodable payload
    push(whole[: len(whole) // 2])  # truncated envelope
    future = f"future{random.getrandbits(32):08x}"
    kernel.queue.enqueue(Message(id=future, queue="default",
                                 body=kernel.serializer.dumps({**envelope, "v": 99})))
    push(kernel.serializer.dumps({**envelope, "args": "not a list", "opts": 5}))
    expected[project.enqueue_raw("chaos_removed_task", [1], TASKS_MODULE)] = missing
    expected[project.enqueue_raw("chaos_moved_task", [1], "chaos_module_gone")] = missing
    return expected, future


def scenario_corrupt(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """Garbage entries, truncated payloads, missing tasks, unreadable records: each ends
    as a clear FAILED record or in quarantine, every good job still runs, and ``nuvom
    status`` reports the damage."""
    out = Outcome("corrupt", backend)
    with project_for(base, backend, "corrupt") as project:
        half = sizes.flow_jobs // 2
        ids = project.enqueue("work", [(i, 0.0) for i in range(half)])
        victim = project.enqueue("work", [(-1, 0.0)])[0]
        expected, future = _generic_corruption(project)
        corruptor = profile(backend).corrupt
        damage = corruptor(project, victim) if corruptor else Corruption()
        if victim not in damage.failed:
            out.notes.append("the truncated job was quarantined (no record expected)")
        for job_id in damage.failed:
            expected[job_id] = "nuvom_kernel.errors.SerializationError"
        out.notes += damage.notes
        ids += project.enqueue("work", [(i, 0.0) for i in range(half, sizes.flow_jobs)])
        project.start_worker(2)
        project.start_worker(2)
        kernel = project.kernel()
        project.wait_succeeded(len(ids), 60, settled=False)
        out.check(project.record(future) is None and kernel.queue.peek(future) is not None,
                  f"the job of a future kernel's envelope should wait in the queue for a "
                  f"newer worker, got record {brief(project.record(future))}")
        wait_for(lambda: kernel.queue.cancel(future), 30,  # no newer worker will come
                 "the future kernel's job to be cancelled (not leased)", interval=0.05)
        project.wait_succeeded(len(ids), 60)

        def settled() -> bool:
            records = [project.record(j) for j in expected]
            return all(r is not None and r.status is JobStatus.FAILED for r in records)

        with contextlib.suppress(ChaosTimeout):
            wait_for(settled, 30, "every corrupt job to be recorded FAILED", interval=0.1)
        project.judge(out, ids)
        for job_id, error_type in expected.items():
            record = project.record(job_id)
            out.completed += out.check(
                record is not None and record.status is JobStatus.FAILED
                and record.error_type == error_type and bool(record.error_message)
                and record.attempts == 1,
                f"corrupt job {job_id}: expected one FAILED attempt with {error_type}, "
                f"got {brief(record)}")
        out.submitted += len(expected)
        wait_for(lambda: kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0,
                 30, "the queue to drain around the corrupt entries")
        stats = kernel.queue.stats()
        out.check(len(stats.quarantined) >= damage.quarantined,
                  f"{damage.quarantined} corrupt entries should be quarantined, stats lists "
                  f"{stats.quarantined}")
        out.check(all(w.alive() for w in project.workers), "a worker died on corrupt data")
        status = run_cli(project, "status", "--json")
        out.check(status.returncode == 0, f"nuvom status failed:\n{status.stderr[-2000:]}")
        if status.returncode == 0:
            data = json.loads(status.stdout)
            out.check(len(data["quarantined"]) >= damage.quarantined,
                      f"nuvom status lists {len(data['quarantined'])} quarantined entries, "
                      f"expected {damage.quarantined}")
            out.check(data["states"].get("FAILED", 0) >= len(expected),
                      f"nuvom status counts {data['states'].get('FAILED', 0)} FAILED, "
                      f"expected {len(expected)}")
            out.check(data["states"].get("SUCCEEDED", 0) == len(ids),
                      f"nuvom status counts {data['states']} for {len(ids)} good jobs")
        history = run_cli(project, "history", "recent", "--status", "FAILED", "--json",
                       "--limit", "100")
        out.check(history.returncode == 0,
                  f"nuvom history fails on corrupt records:\n{history.stderr[-2000:]}")
        out.notes.append(f"{len(expected)} corrupt jobs recorded FAILED, "
                         f"{len(stats.quarantined)} entries quarantined")
        stop_all(project, out)
    return out

