"""Entry points for the child processes of ``test_processes.py`` (spawned, so they must live
in an importable module, not in the test file pytest imports under its own rules)."""

from __future__ import annotations

import random
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from nuvom_plugins_sqlite import SQLiteJobQueue


def claim_loop(path: Path, start: Event, ready: Event, pushed: Event, out: Any,
               seed: int) -> None:
    """Open the (fresh) file as soon as ``start`` fires, say ``ready``, then claim and ack
    until the queue stays empty after ``pushed``; send back every id claimed and any failed
    ack. Each job 'runs' for 0.3 ms, as real ones take time: a consumer acking back to back
    can otherwise starve the other process, whose SQLite busy handler sleeps between tries."""
    rng = random.Random(seed)
    start.wait(30)
    q = SQLiteJobQueue(path)
    q.qsize()  # both children migrate the new file at the same moment
    ready.set()
    claimed: list[str] = []
    bad_acks: list[str] = []
    while True:
        leases = q.pop_batch(rng.randint(1, 8), timeout=0.2)
        for lease in leases:
            claimed.append(lease.id)
            time.sleep(0.0003)
            if not q.ack(lease):
                bad_acks.append(lease.id)
        if not leases and pushed.is_set() and q.qsize() == 0:
            break
    out.put((claimed, bad_acks))
    q.close()


def claim_and_hang(path: Path, claimed: Event, visibility: float) -> None:
    """Lease one job and never finish it (the parent kills this process with SIGKILL)."""
    q = SQLiteJobQueue(path, visibility_timeout_secs=visibility)
    lease = q.dequeue(timeout=10)
    assert lease is not None
    claimed.set()
    time.sleep(60)


def pickup_latencies(path: Path, ready: Event, out: Any, n: int) -> None:
    """Idle-wait for ``n`` jobs whose body is the producer's ``time.time()`` at enqueue;
    report each job's pickup latency in seconds."""
    q = SQLiteJobQueue(path)
    q.pop_batch(1, timeout=0.3)  # settle into the idle wait
    ready.set()
    latencies = []
    for _ in range(n):
        lease = q.dequeue(timeout=20)
        assert lease is not None
        latencies.append(time.time() - float(lease.message.body))
        q.ack(lease)
    out.put(latencies)
