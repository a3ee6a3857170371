"""FileJobQueue.browse beyond the contract: what only the file layout can get wrong (names
that hold whole microseconds and encoded ids, damaged files, a look that must move nothing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.views import QueuedJob
from nuvom_plugins.file import FileJobQueue


@pytest.fixture
def queue(tmp_path: Path) -> FileJobQueue:
    return FileJobQueue(tmp_path / "q", visibility_timeout_secs=30.0, fsync=False)


def msg(job_id: str, **kw: object) -> Message:
    return Message(id=job_id, body=f"body-{job_id}".encode(), task="t", **kw)  # type: ignore[arg-type]


def pages(queue: FileJobQueue, limit: int, **kw: object) -> list[QueuedJob]:
    jobs: list[QueuedJob] = []
    after = None
    for _ in range(10_000):
        page = queue.browse(after=after, limit=limit, **kw)  # type: ignore[arg-type]
        jobs += page
        if len(page) < limit:
            return jobs
        after = page[-1].cursor
    raise AssertionError("browse never returned a short page")


def listing(queue: FileJobQueue) -> dict[str, list[str]]:
    return {kind: sorted(os.listdir(queue.path / kind)) for kind in ("ready", "delayed", "leased")}


def test_ties_within_one_microsecond_page_exactly(queue: FileJobQueue) -> None:
    """File names hold whole microseconds: floats that differ below one, and equal floats
    broken by id (ids whose encoded form sorts otherwise), must still page in exact order."""
    base = 1_700_000_000.0
    sent = [msg(job_id, created_at=base + frac)
            for frac in (0.0, 1e-7, 2e-7, 0.5e-6)  # all in one microsecond of the name
            for job_id in (f"a{frac}", f"Z{frac}", f"é{frac}", f"{'x' * 120}{frac}")]
    sent += [msg(f"later{i}", created_at=base + 1e-6 * (i % 3 + 1)) for i in range(30)]
    queue.enqueue_many(sent)
    want = [(m.created_at, m.id) for m in sorted(sent, key=lambda m: (m.created_at, m.id))]
    for limit in (1, 2, 3, 5, 7, 16, 100):
        assert [(j.created_at, j.id) for j in pages(queue, limit)] == want, limit
    long_id = next(j for j in pages(queue, 100) if j.id.startswith("xxx"))
    assert long_id.queue == "default" and len(long_id.id) > 100, "real id, not its hash"


def test_a_big_page_and_queue_filter_over_many_messages(queue: FileJobQueue) -> None:
    base = time.time() - 1000
    sent = [msg(f"m{i:05d}", created_at=base + (i // 7) * 1e-3, queue="ab"[i % 2])
            for i in range(3000)]
    queue.enqueue_many(sent)
    got = pages(queue, 1000, queues=["b"])
    assert [j.id for j in got] == [m.id for m in sent if m.queue == "b"]


def test_damaged_files_are_skipped_not_fatal(queue: FileJobQueue) -> None:
    """A name that does not parse, a header that does not decode, a header naming another id:
    each is left for the claim that reaches it to quarantine; browse lists the rest."""
    base = time.time() - 100
    queue.enqueue_many([msg(f"m{i}", created_at=base + i) for i in range(4)])
    ready = queue.path / "ready"
    names = sorted(os.listdir(ready))
    (ready / "not-a-message-name").write_bytes(b"junk")
    (ready / names[1]).write_bytes(b"NVQ1 {not json\nbody")
    (ready / names[2]).write_bytes(b"")
    header = (ready / names[3]).read_bytes().replace(b'"id":"m3"', b'"id":"other"')
    (ready / names[3]).write_bytes(header)
    assert [j.id for j in queue.browse()] == ["m0"]
    assert queue.claim(10)[0].id == "m0"
    assert len(queue.stats().quarantined) == 4, "the claim quarantined every damaged file"


def test_a_message_seen_in_two_folders_is_listed_once(queue: FileJobQueue) -> None:
    """A claim between the listing of ready/ and leased/ shows one message in both: a
    second link under its leased name stands for that."""
    queue.enqueue(msg("one"))
    [name] = os.listdir(queue.path / "ready")
    expiry = int((time.time() + 60) * 1e6)
    os.link(queue.path / "ready" / name, queue.path / "leased" / f"{expiry:017d}.tok.{name}")
    assert [j.id for j in queue.browse()] == ["one"]


def test_browsing_moves_nothing(queue: FileJobQueue) -> None:
    """An expired lease and a due delayed retry read as waiting, and stay where they are
    (only a claim recovers and promotes)."""
    queue.enqueue_many([msg("a", created_at=1.0), msg("b", created_at=2.0)])
    leases = {lease.id: lease for lease in queue.claim(2)}
    assert queue.extend(leases["a"], 0)
    assert queue.retry(leases["b"], delay_secs=60)
    [delayed] = os.listdir(queue.path / "delayed")
    due = f"{int((time.time() - 1) * 1e6):017d}"  # its retry delay is over, as if waited
    os.rename(queue.path / "delayed" / delayed,
              queue.path / "delayed" / f"{due}{delayed[17:]}")
    before = listing(queue)
    jobs = {j.id: j for j in queue.browse()}
    assert listing(queue) == before
    assert (jobs["a"].state, jobs["a"].deliveries, jobs["a"].lease_expires_at) == \
        (JobStatus.QUEUED, 1, None)
    assert (jobs["b"].state, jobs["b"].failures) == (JobStatus.QUEUED, 1)
    assert jobs["b"].available_at == pytest.approx(time.time() - 1, abs=1.0)
    assert queue.browse(states={JobStatus.RETRYING, JobStatus.RUNNING}) == []


def test_a_header_without_task_reads_the_task_its_body_names(tmp_path: Path) -> None:
    q = FileJobQueue(tmp_path / "q", fsync=False)
    q.enqueue(Message(id="old", body=b'{"v":1,"id":"old","task":"tasks.single"}', task="x"))
    [name] = os.listdir(q.path / "ready")
    data = (q.path / "ready" / name).read_bytes().replace(b'"task":"x",', b"")
    (q.path / "ready" / name).write_bytes(data)
    assert [(j.id, j.task) for j in q.browse()] == [("old", "tasks.single")]
    q.enqueue(Message(id="older", body=b'{"task":"y"}', task="x", created_at=1.0))
    [older] = [n for n in os.listdir(q.path / "ready") if ".older." in n]
    (q.path / "ready" / older).write_bytes(
        (q.path / "ready" / older).read_bytes().replace(b'"task":"x",', b"")[:-1] + b"!")
    assert [j.id for j in q.browse()] == ["old"], "a damaged body found looking for the task"


def test_a_name_that_disagrees_with_its_header_is_placed_by_its_name(
        queue: FileJobQueue) -> None:
    """A file renamed by hand (the old-layout tests do it) keeps its place: its cursor is
    the time its name holds, or the next page would skip or repeat the others."""
    queue.enqueue_many([msg(f"m{i}", created_at=100.0 + i) for i in range(3)])
    ready = queue.path / "ready"
    [moved] = [n for n in os.listdir(ready) if ".m0." in n]
    os.rename(ready / moved, ready / f"{moved[:10]}{101_500_000:017d}{moved[27:]}")
    jobs = pages(queue, 1)
    assert [(j.id, j.created_at) for j in jobs] == [("m1", 101.0), ("m0", 101.5),
                                                    ("m2", 102.0)]
