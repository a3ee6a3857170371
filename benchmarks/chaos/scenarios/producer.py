"""A producer killed with SIGKILL inside ``.map()`` (``producer``): a backend keeps all or
none of the batch, and never shows a half-written job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nuvom_kernel.envelope import Envelope

from ..backends import profile
from ..outcome import Outcome, Sizes, wait_for
from ..project import project_for, stop_all

__all__ = ["scenario_producer_crash"]

PRODUCER_SOURCE = '''\
"""Chaos producer: ``.map()`` N jobs; marks the moment the batch goes to the backend."""

import os
import sys
import time

sys.path.insert(0, os.getcwd())

import chaos_tasks
from nuvom_kernel import hookimpl
from nuvom_kernel.kernel import Kernel, set_kernel

N = int(sys.argv[1])


class Probe:
    """nuvom_before_enqueue runs for every job before the one backend call; on a backend
    that observes a batch as it reads it (``observed_as_read``: a run of the batch observed
    as the backend reads it), the first call is where the backend call begins."""

    seen = 0
    marked = 0.0
    mark_at = N

    @hookimpl
    def nuvom_before_enqueue(self, job):
        Probe.seen += 1
        if Probe.seen == Probe.mark_at:
            Probe.marked = time.monotonic()
            os.close(os.open("producer.pushing", os.O_WRONLY | os.O_CREAT, 0o644))


kernel = Kernel(plugins={"chaos-probe": Probe()})
set_kernel(kernel)
kernel.queue.qsize()  # open the backend (and its files) before anything is timed
if kernel.queue.observed_as_read:
    Probe.mark_at = 1
jobs = chaos_tasks.work.map([(i, 0.0) for i in range(N)])
elapsed = time.monotonic() - Probe.marked
with open("producer.done.tmp", "w") as fh:  # renamed whole: a kill never leaves it empty
    fh.write(f"{len(jobs)} {elapsed}")
os.replace("producer.done.tmp", "producer.done")
'''


def scenario_producer_crash(base: Path, backend: str, sizes: Sizes) -> Outcome:
    """SIGKILL a producer in the middle of ``.map()`` of N jobs: a transactional backend
    keeps all or none of the batch, and no backend ever shows a half-written job."""
    out = Outcome("producer", backend)
    atomic = profile(backend).atomic_push
    n = sizes.producer_jobs
    with project_for(base, backend, "producer") as project:
        project.write("chaos_producer.py", PRODUCER_SOURCE)
        kernel = project.kernel()
        env = project.worker_env()
        pushing, done = project.root / "producer.pushing", project.root / "producer.done"

        def produce(kill_after: float | None, on_visible: bool = False) -> tuple[bool, bool]:
            """Run one producer; kill it ``kill_after`` seconds into its backend call, or
            (``on_visible``) as soon as the queue shows any of its jobs. Returns (killed
            while pushing, push completed)."""
            pushing.unlink(missing_ok=True)
            done.unlink(missing_ok=True)
            proc = subprocess.Popen([sys.executable, "chaos_producer.py", str(n)],
                                    cwd=project.root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            try:
                if kill_after is None and not on_visible:
                    output = proc.communicate(timeout=300)[0].decode(errors="replace")
                    if proc.returncode != 0:
                        raise RuntimeError(f"producer failed:\n{output[-2000:]}")
                    return False, True
                wait_for(lambda: pushing.exists() or proc.poll() is not None, 120,
                         "the producer to reach its backend call", interval=0.0005)
                if on_visible:
                    wait_for(lambda: kernel.queue.qsize() > 0 or proc.poll() is not None, 120,
                             "the first job of the batch to become visible", interval=0.001)
                else:
                    time.sleep(kill_after)  # the kill point itself, not a synchronisation
                proc.kill()
                proc.wait(30)
                return not done.exists(), done.exists()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()

        def inspect(label: str) -> int:
            """Claim everything there is (a claim also finishes publishing a batch whose
            producer died after its commit), decode every message, then empty the queue.
            Each claimed batch is acked at once and jobs are counted by id: on a slow
            machine claiming 10,000 jobs outlasts the 2 s leases, and an expired lease's job
            would be claimed, and counted, again."""
            queue = kernel.queue
            decoded: set[str] = set()
            bad: list[str] = []
            while True:
                leases = queue.claim(1000)
                if not leases:
                    break
                for lease in leases:
                    try:
                        job = Envelope.from_message(lease.message, kernel.serializer).job()
                        if job.task != "chaos_work":
                            raise ValueError(f"task {job.task!r}")
                        decoded.add(job.id)
                    except Exception as exc:
                        bad.append(f"{lease.id}: {exc!r}")
                queue.ack_many(leases)
            stats = queue.stats()
            out.check(not bad, f"{label}: {len(bad)} visible job(s) do not decode: {bad[:3]}")
            out.check(not stats.quarantined,
                      f"{label}: half-written entries were quarantined: {stats.quarantined[:3]}")
            queue.clear()
            return len(decoded)

        def took() -> float:
            """How long the last uncrashed producer spent in its backend call."""
            return float(done.read_text().split()[1])

        produce(None)
        calibrated = took()
        out.check(inspect("uncrashed run") == n, "an uncrashed .map() did not enqueue its batch")
        results: list[tuple[str, bool, int]] = []

        def trial(label: str, kill_after: float | None, on_visible: bool = False) -> bool:
            """One killed producer, judged; returns whether the kill landed mid-call."""
            mid, finished = produce(kill_after, on_visible)
            count = inspect(f"kill at {label}")
            if atomic:
                out.check(count in (0, n), f"kill at {label} into .map() of {n}: {count} "
                                           f"jobs enqueued, expected 0 or {n}")
            if finished:
                out.check(count == n, f"the producer finished but {count} of {n} are queued")
            results.append((label, mid, count))
            return mid

        # A slow backend call gets fewer timed kills (the CI budget), never fewer than one.
        timed = max(1, min(sizes.producer_trials, int(sizes.producer_budget_secs / calibrated)))
        for k in range(timed):
            # Spread the kills over the backend call, denser towards its end, where a
            # non-transactional backend makes its writes visible.
            fraction = 0.05 + 0.93 * (k / (timed - 1)) ** 0.5 if timed > 1 else 0.5
            if not trial(f"+{fraction * calibrated * 1000:.0f} ms", fraction * calibrated) \
                    and done.exists():
                calibrated = min(calibrated, took())  # the first run was slow (cold caches)
        for _ in range(3):  # make sure at least one kill lands inside the call
            if any(mid for _, mid, _ in results):
                break
            trial(f"+{calibrated * 300:.0f} ms", calibrated * 0.3)
            if done.exists():
                calibrated = min(calibrated, took())
        # One more kill the moment the batch starts to show: mid-publication for a backend
        # that makes jobs visible one by one, just after the commit for a transactional one.
        trial("first visible job", None, on_visible=True)
        out.check(any(mid for _, mid, _ in results),
                  "no kill landed inside the backend call (nothing was tested)")
        partial = sum(1 for _, mid, count in results if mid and 0 < count < n)
        out.notes.append(
            f"backend call took {calibrated * 1000:.0f} ms for {n} jobs; kills mid-call: "
            + ", ".join(f"{label} -> {c}" for label, mid, c in results if mid)
            + ("; all-or-none" if atomic else
               f"; {partial} partial batch(es), every visible job whole"))
        leftovers = _hidden_files(project.data_dir)
        if leftovers:
            out.notes.append(f"{leftovers} invisible temp file(s) left by killed producers "
                             "(the backend sweeps them by age)")
        # The backend is not wedged by a producer killed inside its transaction.
        ids = project.enqueue("work", [(i, 0.0) for i in range(50)])
        project.start_worker(2)
        project.wait_succeeded(len(ids), 60, "jobs after the producer crashes")
        project.judge(out, ids)
        stop_all(project, out)
    return out


def _hidden_files(directory: Path) -> int:
    """Dot files under ``directory`` other than markers and locks: writers' temp files."""
    if not directory.exists():
        return 0
    return sum(1 for p in directory.rglob(".*") if p.is_file() and "-marker" not in p.name
               and p.name != ".lock")

