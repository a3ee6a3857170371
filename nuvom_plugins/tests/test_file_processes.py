"""FileJobQueue across real processes: crashes mid-write and mid-job, concurrent claimers.

Children are plain ``python -c`` processes on the same directory; synchronisation is by
conditions with deadlines (a line on stdout, a file appearing), never by sleeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nuvom_kernel.models import Message
from nuvom_plugins.file import FileJobQueue

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX rename semantics")


def spawn(code: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """The child's next stdout line (the pipe read blocks; the deadline guards a hang)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"child exited early (rc={proc.poll()}): {err}")
    assert time.monotonic() <= deadline, "child too slow"
    return line.strip()


def body_for(i: int, size: int) -> bytes:
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


WRITER = """
import sys, hashlib
from nuvom_kernel.models import Message
from nuvom_plugins.file import FileJobQueue
q = FileJobQueue(sys.argv[1], fsync=True)
size = int(sys.argv[2])
def body_for(i):
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]
print("ready", flush=True)
i = 0
while True:
    q.enqueue(Message(id=f"m{i}", body=body_for(i)))
    i += 1
"""


def test_writer_killed_mid_write_never_yields_a_half_job(tmp_path: Path) -> None:
    path = tmp_path / "q"
    size = 4 * 1024 * 1024  # big bodies: most of the writer's time is spent inside write()
    reader = FileJobQueue(path, fsync=False)
    seen: set[str] = set()
    leftovers = 0
    for round_ in range(3):
        proc = spawn(WRITER, str(path), str(size))
        read_line(proc)
        deadline = time.monotonic() + 20
        while len(seen) < 2 * (round_ + 1):  # read concurrently with the writer
            for lease in reader.claim(4):
                n = int(lease.id[1:])
                assert lease.message.body == body_for(n, size), f"{lease.id} is damaged"
                seen.add(f"{round_}:{lease.id}")
                assert reader.ack(lease)
            assert time.monotonic() < deadline, "writer made no progress"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        leftovers += sum(n.startswith(".tmp-") for n in os.listdir(path / "ready"))
    for lease in reader.claim(1000):  # whatever was complete at the kill
        assert lease.message.body == body_for(int(lease.id[1:]), size)
    assert reader.stats().quarantined == []
    # the killed writers' half files exist only under hidden temp names
    print(f"temp files left by killed writers: {leftovers}")


HOLDER = """
import sys, time
from nuvom_plugins.file import FileJobQueue
q = FileJobQueue(sys.argv[1], visibility_timeout_secs=0.3, fsync=False)
lease = q.claim(1)[0]
print(lease.id, lease.expires_at, flush=True)
while True:
    time.sleep(60)
"""


def test_sigkilled_worker_lease_comes_back_after_visibility_timeout(tmp_path: Path) -> None:
    path = tmp_path / "q"
    queue = FileJobQueue(path, visibility_timeout_secs=0.3, fsync=False)
    queue.enqueue(Message(id="job-1", body=b"payload"))
    proc = spawn(HOLDER, str(path))
    job_id, expires_at = read_line(proc).split()
    assert job_id == "job-1"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if time.time() < float(expires_at) - 0.05:
        assert queue.claim(1) == []  # still leased to the dead worker
    deadline = time.monotonic() + 5
    while not (leases := queue.claim(1)):
        assert time.monotonic() < deadline, "lease of the killed worker never expired"
        time.sleep(0.01)
    assert leases[0].id == "job-1" and leases[0].deliveries == 2
    assert leases[0].message.body == b"payload"
    assert queue.ack(leases[0]) and queue.qsize() == 0


CLAIMER = """
import sys, json, time
from nuvom_plugins.file import FileJobQueue
q = FileJobQueue(sys.argv[1], visibility_timeout_secs=30, fsync=False)
out = open(sys.argv[2], "w")
print("go", flush=True)
sys.stdin.readline()
got = 0
t0 = time.perf_counter()
while True:
    leases = q.claim(10)
    if not leases:
        if q.qsize() == 0:
            break
        continue
    for lease in leases:
        out.write(lease.id + "\\n")
        assert q.ack(lease), lease.id
        got += 1
out.close()
print(json.dumps({"claimed": got, "secs": time.perf_counter() - t0}), flush=True)
"""


def test_three_processes_claim_2000_messages_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "q"
    queue = FileJobQueue(path, fsync=False)
    ids = [f"job-{i:04d}" for i in range(2000)]
    t0 = time.perf_counter()
    queue.enqueue_many([Message(id=i, body=i.encode()) for i in ids])
    push_secs = time.perf_counter() - t0
    procs = [spawn(CLAIMER, str(path), str(tmp_path / f"out{k}"), stdin=subprocess.PIPE)
             for k in range(3)]
    for proc in procs:  # all three imported and ready: start them together
        assert read_line(proc) == "go"
    t0 = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("start\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    drain_secs = time.perf_counter() - t0
    claimed: list[str] = []
    for k in range(3):
        claimed += (tmp_path / f"out{k}").read_text().split()
    assert len(claimed) == 2000, "some message was claimed twice or never"
    assert sorted(claimed) == ids
    assert all(r["claimed"] > 0 for r in results), results  # every process took part
    assert queue.qsize() == 0 and queue.stats().in_flight == 0
    print(f"push 2000: {push_secs:.2f}s; 3 claimers drained in {drain_secs:.2f}s "
          f"({2000 / drain_secs:.0f} claims+acks/s); per process {results}")


PRODUCER = """
import sys
from nuvom_kernel.models import Message
from nuvom_plugins.file import FileJobQueue
q = FileJobQueue(sys.argv[1], fsync=True)
print("ready", flush=True)
batch = 0
while True:
    q.enqueue_many([Message(id=f"b{batch}-{i}", body=b"z" * 20000, queue=f"batch{batch}")
                    for i in range(200)])
    batch += 1
"""


def test_producer_killed_mid_batch_leaves_all_or_none(tmp_path: Path) -> None:
    path = tmp_path / "q"
    reader = FileJobQueue(path, fsync=False)
    for delay in (0.05, 0.2, 0.4):
        proc = spawn(PRODUCER, str(path))
        read_line(proc)
        time.sleep(delay)  # not synchronisation: only varies where in a batch the kill lands
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        depth = reader.stats().depth
        assert all(count == 200 for count in depth.values()), depth
        reader.clear()
    assert reader.stats().quarantined == []


PUSHER = """
import sys, json, random
from nuvom_kernel.models import Message
from nuvom_plugins.file import FileJobQueue
q = FileJobQueue(sys.argv[1], fsync=False)
who = sys.argv[2]
ids = [f"job-{i:03d}" for i in range(300)]
random.Random(who).shuffle(ids)
print("go", flush=True)
sys.stdin.readline()
stored = []
for k in range(0, len(ids), 7):  # batches of 7, and every fifth id pushed alone as well
    chunk = ids[k:k + 7]
    for message_id, ok in zip(chunk, q.push([Message(id=i, body=who.encode()) for i in chunk])):
        if ok:
            stored.append(message_id)
    if q.push([Message(id=chunk[0], body=who.encode())])[0]:
        stored.append(chunk[0])
print(json.dumps(stored), flush=True)
"""


def test_processes_pushing_the_same_ids_store_each_once(tmp_path: Path) -> None:
    path = tmp_path / "q"
    queue = FileJobQueue(path, fsync=False)
    procs = [spawn(PUSHER, str(path), f"p{k}", stdin=subprocess.PIPE) for k in range(4)]
    for proc in procs:
        assert read_line(proc) == "go"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("start\n")
        proc.stdin.flush()
    stored: list[str] = []
    winners: dict[str, str] = {}
    for k, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        mine = json.loads(out.strip().splitlines()[-1])
        stored += mine
        winners.update({i: f"p{k}" for i in mine})
    assert sorted(stored) == [f"job-{i:03d}" for i in range(300)], \
        "every id must be reported stored by exactly one push"
    assert queue.qsize() == 300
    leases = queue.claim(1000)
    assert len(leases) == 300
    assert all(le.message.body.decode() == winners[le.id] for le in leases), \
        "the stored message is the one whose push reported True"


def test_ids_of_a_batch_killed_before_its_commit_can_be_pushed_again(tmp_path: Path) -> None:
    path = tmp_path / "q"
    reader = FileJobQueue(path, fsync=False)
    for delay in (0.05, 0.2):
        proc = spawn(PRODUCER, str(path))
        read_line(proc)
        time.sleep(delay)  # not synchronisation: only varies where in a batch the kill lands
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        present = {q for q, n in reader.stats().depth.items() if n}
        batches = {int(q[len("batch"):]) for q in present}
        last = max(batches, default=-1)
        for batch in range(last + 2):  # every committed batch, and the one being written
            again = [Message(id=f"b{batch}-{i}", body=b"again") for i in range(200)]
            assert reader.push(again) == [f"batch{batch}" not in present] * 200, batch
        assert reader.qsize() == 200 * (last + 2)
        reader.clear()
        assert os.listdir(path / "staging") == []
        assert [n for n in os.listdir(path / "ids") if not n.startswith(".")] == []
