"""FileResultBackend: latest-line-wins records, paging, purge/compaction, torn lines, and
several processes appending to one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from nuvom_kernel.backends import BackendContext, page_cursor
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins.file import FileResultBackend
from nuvom_plugins.file import _record_index as index_module


def rec(job_id: str, status: JobStatus = JobStatus.SUCCEEDED, **kw: object) -> JobRecord:
    kw.setdefault("task", "add")
    return JobRecord(job_id=job_id, status=status, **kw)  # type: ignore[arg-type]


@pytest.fixture
def backend(tmp_path: Path) -> FileResultBackend:
    return FileResultBackend(tmp_path / "r")


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("results-*.jsonl"))


def test_latest_line_wins_and_unknown_is_none(backend: FileResultBackend) -> None:
    backend.put(rec("a", JobStatus.RUNNING, attempts=1))
    backend.put(rec("a", JobStatus.FAILED, attempts=2, error_type="ValueError",
                    error_message="bad", traceback="Traceback..."))
    got = backend.get("a")
    assert got is not None and got.status is JobStatus.FAILED and got.attempts == 2
    assert backend.get_error("a") == {"type": "ValueError", "message": "bad",
                                      "traceback": "Traceback..."}
    assert backend.get("never-seen") is None
    backend.set_result("b", {"x": [1, 2]}, task="mul")
    assert backend.get_result("b") == {"x": [1, 2]}
    assert backend.get_full("b")["task"] == "mul"  # type: ignore[index]


def test_other_instance_sees_new_records(tmp_path: Path) -> None:
    a, b = FileResultBackend(tmp_path / "r"), FileResultBackend(tmp_path / "r")
    a.put(rec("x", JobStatus.QUEUED))
    assert b.get("x").status is JobStatus.QUEUED  # type: ignore[union-attr]
    a.put(rec("x", JobStatus.SUCCEEDED, result=42))
    assert b.get_result("x") == 42


def test_query_filters_and_pages_newest_first(backend: FileResultBackend) -> None:
    for i in range(30):
        backend.put(rec(f"j{i:02d}", JobStatus.SUCCEEDED if i % 3 else JobStatus.FAILED,
                        task="even" if i % 2 == 0 else "odd", updated_at=1000.0 + i))
    page1 = backend.list_jobs(limit=5)
    assert [r["job_id"] for r in page1] == ["j29", "j28", "j27", "j26", "j25"]
    page2 = backend.list_jobs(limit=5, after=page_cursor(page1[-1]))
    assert [r["job_id"] for r in page2] == ["j24", "j23", "j22", "j21", "j20"]
    failed = backend.query(status=JobStatus.FAILED)
    assert [r.job_id for r in failed] == [f"j{i:02d}" for i in range(27, -1, -3)]
    assert [r["job_id"] for r in backend.list_jobs(status="FAILED", task="even", limit=3)] \
        == ["j24", "j18", "j12"]
    assert backend.query(task="nope") == []


def test_purge_removes_old_terminal_records_only(tmp_path: Path) -> None:
    backend = FileResultBackend(tmp_path / "r")
    backend.put(rec("old-done", updated_at=100.0))
    backend.put(rec("old-running", JobStatus.RUNNING, updated_at=100.0))
    backend.put(rec("new-done", updated_at=time.time()))
    other = FileResultBackend(tmp_path / "r")
    assert other.get("old-done") is not None
    assert backend.purge(older_than=1000.0) == 1
    assert backend.get("old-done") is None and other.get("old-done") is None
    assert other.get("old-running") is not None and other.get("new-done") is not None
    assert FileResultBackend(tmp_path / "r").get("old-done") is None  # cold reader too


def test_purge_compacts_segments_without_resurrecting(tmp_path: Path) -> None:
    path = tmp_path / "r"
    backend = FileResultBackend(path, segment_max_bytes=4096)
    watcher = FileResultBackend(path, segment_max_bytes=4096)
    for i in range(200):
        backend.put(rec(f"j{i}", result="x" * 50, updated_at=100.0 + i))
    backend.put(rec("keeper", JobStatus.RUNNING, updated_at=1.0))
    assert watcher.get("j0") is not None  # the watcher's index points into old segments
    before = len(segments(path))
    assert before > 5
    assert backend.purge(older_than=250.0) == 150
    after = len(segments(path))
    assert after < before, (before, after)
    for reader in (backend, watcher, FileResultBackend(path)):
        assert reader.get("j10") is None and reader.get("j149") is None
        assert reader.get("j150").result == "x" * 50  # type: ignore[union-attr]
        assert reader.get("keeper").status is JobStatus.RUNNING  # type: ignore[union-attr]
        assert len(reader.query(limit=1000)) == 51
        assert reader.problems() == []


def test_non_json_record_is_refused_with_a_clear_error(backend: FileResultBackend) -> None:
    with pytest.raises(SerializationError, match="job bad"):
        backend.put(rec("bad", result=object()))
    backend.put(rec("fine"))
    assert backend.get("fine") is not None


def test_a_record_edited_to_a_wrong_type_is_skipped_in_lists_and_named_on_get(
        tmp_path: Path) -> None:
    """A hand edit (``"started_at": "yesterday"``): every list (`nuvom history recent`)
    and read failed with a bare ``ValueError`` the CLI blamed on the plugin's settings."""
    path = tmp_path / "r"
    FileResultBackend(path).put_many([rec("good"), rec("odd")])
    [segment] = segments(path)
    lines = segment.read_text().splitlines()
    edited = [json.loads(line) for line in lines]
    for line in edited:
        if line["id"] == "odd":
            line["rec"]["started_at"] = "yesterday"
    segment.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n"
                               for line in edited))
    backend = FileResultBackend(path)
    assert [r.job_id for r in backend.query()] == ["good"]
    with pytest.raises(SerializationError, match="job odd: stored record is invalid "
                                                 "\\(started_at is 'yesterday'"):
        backend.get("odd")


def test_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "r"
    writer = FileResultBackend(path)
    for i in range(5):
        writer.put(rec(f"j{i}", result=i))
    writer.close()
    [seg] = segments(path)
    torn = json.dumps({"_nv": 1, "op": "put", "rec": rec("torn").to_dict()})[:40]
    with seg.open("ab") as fh:  # what a writer killed inside write() leaves behind
        fh.write(torn.encode())
    reader = FileResultBackend(path)
    assert [reader.get_result(f"j{i}") for i in range(5)] == [0, 1, 2, 3, 4]
    assert reader.get("torn") is None
    assert any("unterminated last line" in p for p in reader.problems())
    reader.put(rec("after", result="ok"))  # opening for write seals the torn tail
    assert reader.get_result("after") == "ok"
    fresh = FileResultBackend(path)
    assert fresh.get_result("after") == "ok" and fresh.get_result("j4") == 4
    assert any("undecodable line" in p for p in fresh.problems())


def test_record_glued_to_a_torn_prefix_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "r"
    writer = FileResultBackend(path)
    writer.put(rec("first"))
    [seg] = segments(path)
    with seg.open("ab") as fh:  # a torn write, then a live writer appending after it
        fh.write(b'{"_nv":1,"op":"put","rec":{"job_id":"tor')
    writer.put(rec("second", result=2))
    reader = FileResultBackend(path)
    assert reader.get_result("second") == 2 and reader.get("first") is not None
    assert any("torn line" in p for p in reader.problems())


def test_get_reads_one_line_not_the_history(backend: FileResultBackend,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(2000):
        backend.put(rec(f"j{i}", result="y" * 100))
    assert backend.get("j0") is not None  # warm the index
    reads: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)
    for i in (5, 1500, 1999):
        assert backend.get(f"j{i}").result == "y" * 100  # type: ignore[union-attr]
    assert len(reads) == 3 and max(reads) < 1000, reads  # one line each


def test_from_settings(tmp_path: Path) -> None:
    ctx = BackendContext(data_dir=tmp_path / ".nuvom")
    backend = FileResultBackend.from_settings({"path": "the-queue's-key"}, ctx)
    assert backend.path == tmp_path / ".nuvom" / "results"
    backend = FileResultBackend.from_settings(
        {"results_path": str(tmp_path / "res"), "segment_max_bytes": 4096}, ctx)
    assert backend.path == tmp_path / "res" and backend.segment_max_bytes == 4096


APPENDER = """
import sys
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins.file import FileResultBackend
b = FileResultBackend(sys.argv[1], segment_max_bytes=256 * 1024)
who, n = sys.argv[2], int(sys.argv[3])
print("go", flush=True)
sys.stdin.readline()
for i in range(n):
    size = (i * 7919) % 40000  # lines from ~300 bytes to ~40 KB
    b.put(JobRecord(job_id=f"{who}-{i}", task=who, status=JobStatus.SUCCEEDED,
                    result=who[0] * size))
"""


def test_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(APPENDER), str(path),
                               who, "300"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for who in ("alpha", "bravo", "charlie", "delta")]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
    for proc in procs:
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    lines = 0
    for seg in segments(path):
        data = seg.read_bytes()
        assert data == b"" or data.endswith(b"\n")
        for line in data.splitlines():
            obj = json.loads(line)  # any interleaving would break a line
            rec_ = obj["rec"]
            assert rec_["result"] == rec_["task"][0] * len(rec_["result"])
            lines += 1
    assert lines == 1200
    assert len(segments(path)) > 3  # rotation happened while all four were writing
    reader = FileResultBackend(path)
    assert len(reader.query(limit=5000)) == 1200 and reader.problems() == []
    assert len(reader.query(task="charlie", limit=5000)) == 300


UPDATER = """
import sys, time
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins.file import FileResultBackend
b = FileResultBackend(sys.argv[1], segment_max_bytes=32 * 1024)
who, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    job = f"{who}-{i}"
    b.put(JobRecord(job_id=job, task=who, status=JobStatus.RUNNING, result="r" * 200))
    b.put(JobRecord(job_id=job, task=who, status=JobStatus.SUCCEEDED, result=i))
"""


def test_purge_while_other_processes_write(tmp_path: Path) -> None:
    path = tmp_path / "r"
    backend = FileResultBackend(path, segment_max_bytes=32 * 1024)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(UPDATER), str(path),
                               who, "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for who in ("a", "b", "c")]
    purged = 0
    while any(p.poll() is None for p in procs):
        purged += backend.purge(older_than=time.time())  # compacts under the writers' feet
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    survivors = {r.job_id: r for r in backend.query(limit=5000)}
    fresh = FileResultBackend(path, segment_max_bytes=32 * 1024)
    assert {r.job_id for r in fresh.query(limit=5000)} == set(survivors)
    assert all(r.status is JobStatus.SUCCEEDED and r.result == int(r.job_id.split("-")[1])
               for r in survivors.values())
    assert purged + len(survivors) == 1200  # every job purged once or still there, finished
    assert backend.purge(older_than=time.time() + 1) == len(survivors)
    for reader in (backend, fresh, FileResultBackend(path)):
        assert reader.query(limit=5000) == [] and reader.problems() == []
    assert len(segments(path)) <= 2  # dead segments were deleted


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_instance_inherited_by_a_forked_child_keeps_working(tmp_path: Path) -> None:
    backend = FileResultBackend(tmp_path / "r", segment_max_bytes=8192)
    backend.put(rec("before-fork"))
    pid = os.fork()
    if pid == 0:  # child: its own lock, same files
        try:
            for i in range(200):
                backend.put(rec(f"child-{i}", result="c" * 100))
        finally:
            os._exit(0)
    for i in range(200):
        backend.put(rec(f"parent-{i}", result="p" * 100))
    _, status = os.waitpid(pid, 0)
    assert status == 0
    ids = {r.job_id for r in FileResultBackend(tmp_path / "r").query(limit=1000)}
    assert len(ids) == 401 and backend.get("child-199") is not None
    assert backend.problems() == []


# --- SPI v1: fenced writes, run/token, records written before them ------------------------


def test_records_written_before_run_and_token_load_and_are_fenced(tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.mkdir()
    old = rec("old", JobStatus.SUCCEEDED, attempts=2, result=5).to_dict()
    del old["run"], old["token"]
    line = {"_nv": 1, "op": "put", "id": "old", "st": "SUCCEEDED", "fn": "add",
            "ts": old["updated_at"], "rec": old}  # the previous line layout: no ru/at
    (path / "results-00000001.jsonl").write_text(json.dumps(line, separators=(",", ":")) + "\n")
    backend = FileResultBackend(path)
    got = backend.get("old")
    assert got is not None and (got.run, got.token, got.attempts, got.result) == \
        (1, None, 2, 5)
    assert backend.put(rec("old", JobStatus.FAILED, attempts=1)) is False
    assert backend.put(rec("old", JobStatus.RETRYING, attempts=2)) is False
    assert backend.put(rec("old", JobStatus.QUEUED, run=2, token="t")) is True
    assert FileResultBackend(path).get("old").run == 2  # type: ignore[union-attr]


def test_put_many_fences_within_the_batch(backend: FileResultBackend) -> None:
    first = rec("a", JobStatus.RUNNING, attempts=1)
    assert backend.put_many([first, rec("a", JobStatus.SUCCEEDED, attempts=1),
                             rec("a", JobStatus.RUNNING, attempts=1), rec("b")]) == \
        [True, True, False, True]
    assert backend.get("a").status is JobStatus.SUCCEEDED  # type: ignore[union-attr]


FENCED_WRITER = """
import sys, random
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins.file import FileResultBackend
b = FileResultBackend(sys.argv[1], segment_max_bytes=64 * 1024)
k, writers = int(sys.argv[2]), int(sys.argv[3])
print("go", flush=True)
sys.stdin.readline()
rng = random.Random(k)
for attempt in range(1 + k, 200, writers):  # each writer owns different attempt numbers
    for job in rng.sample(range(20), 20):
        b.put(JobRecord(job_id=f"j{job}", task="f", status=JobStatus.RUNNING,
                        attempts=attempt, worker=str(k)))
"""


def test_fenced_puts_from_several_processes_keep_the_latest_attempt(tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.mkdir()
    writers = 4
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(FENCED_WRITER),
                               str(path), str(k), str(writers)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(writers)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
    for proc in procs:
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    reader = FileResultBackend(path)
    final = {r.job_id: r.attempts for r in reader.query(limit=100)}
    assert final == {f"j{j}": 199 for j in range(20)}, \
        "an earlier attempt must never replace a later one, whoever writes last"
    # and no line of the history ever went backwards for a job
    seen: dict[str, int] = {}
    for seg in segments(path):
        for raw in seg.read_bytes().splitlines():
            obj = json.loads(raw)
            assert obj["at"] > seen.get(obj["id"], 0), (obj["id"], obj["at"], seen)
            seen[obj["id"]] = obj["at"]


def _line_of(tmp_path: Path, record: JobRecord) -> bytes:
    """The exact line a put appends for ``record`` (written to a scratch directory)."""
    scratch = FileResultBackend(tmp_path / "scratch")
    scratch.put(record)
    scratch.close()
    [seg] = segments(tmp_path / "scratch")
    return seg.read_bytes()


def _bytes_searched(call: Callable[[], object]) -> int:
    """Total length of the bytes objects that code in ``results.py`` calls a method of
    (``find``, ``rfind``, ``split``, ...) while ``call`` runs.

    It measures the reader's work without a clock: a method scans at most the object it is
    called on, so a reader that searches each byte a bounded number of times stays within
    a small multiple of the bytes it reads, while one that re-searches a growing buffer
    per chunk does not. Counted through ``sys.setprofile``'s ``c_call`` events, which see
    every call of a C method together with the object it is bound to.
    """
    searched = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal searched
        owner = getattr(arg, "__self__", None)
        if event == "c_call" and isinstance(owner, bytes | bytearray) \
                and frame.f_code.co_filename == index_module.__file__:
            searched += len(owner)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return searched


def test_reading_past_a_long_line_is_linear(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 KB reads make a 1 MB record span 256 chunks; searching the whole buffer per chunk
    # would scan ~128 MB, searching each chunk once ~1 MB (plus a few passes over the line
    # when it is indexed).
    monkeypatch.setattr(index_module, "_CHUNK", 4096)
    path = tmp_path / "r"
    writer = FileResultBackend(path)
    writer.put(rec("before", result=1))
    writer.put(rec("big", result="x" * 2**20))
    writer.put(rec("after", result=2))
    writer.close()
    size = segments(path)[0].stat().st_size
    reader = FileResultBackend(path)
    searched = _bytes_searched(lambda: reader.get("after"))
    assert searched < 8 * size, (searched, size)
    assert reader.get_result("after") == 2 and reader.get_result("before") == 1
    assert reader.get_result("big") == "x" * 2**20


def test_a_record_spanning_many_chunks_reads_back_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries never show: offsets of the lines after a long one, a long line
    still being written (left for later, then read once complete), and the byte counts
    of a long torn line in an active and in a sealed segment."""
    monkeypatch.setattr(index_module, "_CHUNK", 4096)
    big = _line_of(tmp_path, rec("big", result="y" * 300_000))
    path = tmp_path / "r"
    writer = FileResultBackend(path)
    writer.put(rec("first", result=1))
    writer.close()
    [seg] = segments(path)
    start = seg.stat().st_size
    with seg.open("ab") as fh:  # a long write caught half-way, 36 chunks in
        fh.write(big[:150_000])
    reader = FileResultBackend(path)
    assert reader.get_result("first") == 1 and reader.get("big") is None
    assert any(p.endswith(f":{start}: unterminated last line (a write in progress, or a "
                          f"writer crashed mid-line; sealed when a writer next opens the "
                          f"file)") for p in reader.problems())
    with seg.open("ab") as fh:
        fh.write(big[150_000:])
    writer = FileResultBackend(path)
    writer.put(rec("second", result=2))
    assert reader.get_result("big") == "y" * 300_000 and reader.get_result("second") == 2
    assert reader.get_result("first") == 1 and reader.problems() == []

    torn = big[:100_000]  # a writer killed mid-line, then the segment sealed by rotation
    with seg.open("ab") as fh:
        fh.write(torn)
    end = seg.stat().st_size
    (path / "results-00000002.jsonl").touch()
    fresh = FileResultBackend(path)
    assert fresh.get_result("big") == "y" * 300_000 and fresh.get_result("second") == 2
    assert fresh.problems() == [f"{seg}:{end - len(torn)}: torn last line "
                                f"({len(torn)} bytes) skipped"]
    writer.put(rec("third", result=3))  # lands in the new segment
    assert fresh.get_result("third") == 3 and reader.get_result("third") == 3
