"""Queue names too long for a file name (hashed there) are reported by their real name.

Why: ``encode_name`` turns a name whose escaped form passes 96 characters (20 Cyrillic
letters do) into ``~<sha256>`` in file names; ``stats`` used to report that hash, so
``nuvom status`` showed ``~932a9df6...=1`` for a queue routing put jobs in correctly. The
real name is in each message file's header, read once per long name. Real folders.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from nuvom_kernel.models import Message
from nuvom_plugins.file import FileJobQueue, _inspection
from nuvom_plugins.file._fs import encode_name

LONG = "рассылка_уведомлений"  # 20 Cyrillic letters: 120 characters %-escaped


def _msg(queue: str, available_at: float = 0.0) -> Message:
    return Message(id=uuid.uuid4().hex, body=b"x" * 10_000, queue=queue,
                   available_at=available_at)


@pytest.fixture
def queue(tmp_path: Path) -> FileJobQueue:
    return FileJobQueue(tmp_path / "q", visibility_timeout_secs=30, fsync=False)


def test_stats_names_a_hashed_queue_by_its_real_name(queue: FileJobQueue,
                                                     tmp_path: Path) -> None:
    """Ready, delayed and leased files of a long name count under it, beside a short and an
    escaped short one; a fresh instance (as ``nuvom status`` opens) names it too."""
    assert encode_name(LONG).startswith("~")
    other = LONG + "_2"
    queue.enqueue_many([_msg(LONG), _msg(LONG), _msg(LONG, available_at=time.time() + 60),
                        _msg(other), _msg("default"), _msg("очередь")])
    assert [le.message.queue for le in queue.claim(1, [LONG])] == [LONG]
    for instance in (queue, FileJobQueue(tmp_path / "q", fsync=False)):
        counts = instance.stats().queues
        assert set(counts) == {LONG, other, "default", "очередь"}, set(counts)
        assert (counts[LONG].ready, counts[LONG].delayed, counts[LONG].running) == (1, 1, 1)
        assert counts[LONG].oldest_ready_age_secs is not None
        assert counts[other].ready == 1


def test_a_long_name_is_read_once_and_a_short_one_never(
        queue: FileJobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stats stays a listing for short names: no file is opened to name them; a long
    name costs one header read per instance, not one per call."""
    from nuvom_plugins.file._fs import read_queue_name

    reads: list[str] = []

    def counting(path: Path, encoded: str) -> str | None:
        reads.append(encoded)
        return read_queue_name(path, encoded)

    monkeypatch.setattr(_inspection, "read_queue_name", counting)
    queue.enqueue_many([_msg("default") for _ in range(5)] + [_msg(LONG) for _ in range(5)])
    for _ in range(3):
        assert set(queue.stats().queues) == {"default", LONG}
    assert reads == [encode_name(LONG)]


def test_a_header_naming_another_queue_never_names_it(queue: FileJobQueue,
                                                      tmp_path: Path) -> None:
    """A header that does not name the queue its file name says (edited or renamed by
    hand) names nothing: the hash stands in, never a wrong name; once a readable file is
    there, the real name shows."""
    from nuvom_plugins.file._fs import read_queue_name

    queue.enqueue(_msg(LONG))
    [path] = (tmp_path / "q" / "ready").iterdir()
    path.write_bytes(path.read_bytes().replace(LONG.encode("unicode_escape"), b"x", 1)
                     .replace(LONG.encode(), b"x", 1))
    assert read_queue_name(path, encode_name(LONG)) is None
    assert set(queue.stats().queues) == {encode_name(LONG)}
    path.unlink()
    queue.enqueue(_msg(LONG))
    assert set(queue.stats().queues) == {LONG}
