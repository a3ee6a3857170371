"""A pushed batch: read a chunk at a time, each chunk's statement run on a second thread
while the next chunk is read, all of it one transaction."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel.models import Message
from nuvom_plugins_sqlite import SQLiteJobQueue
from nuvom_plugins_sqlite.insert import INSERT_CHUNK, chunk_rows

THREAD = "nuvom-sqlite-insert"


class Logged(Sequence[Message]):
    """A batch that logs each read of its messages in ``events`` (``("read", start)``),
    as the kernel's batch builds messages when they are read."""

    def __init__(self, messages: list[Message], events: list[tuple[Any, ...]]) -> None:
        self.messages = messages
        self.events = events

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: Any) -> Any:
        start = index.indices(len(self.messages))[0] if isinstance(index, slice) else index
        self.events.append(("read", start, threading.current_thread().name))
        return self.messages[index]


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SQLiteJobQueue]:
    q = SQLiteJobQueue(tmp_path / "q.db")
    q.qsize()  # the file and its write connection exist
    yield q
    q.close()


def _write_conn(queue: SQLiteJobQueue) -> sqlite3.Connection:
    return queue._db._write_conn()[1]


def _messages(n: int, prefix: str = "m") -> list[Message]:
    return [Message(id=f"{prefix}{i}", body=f'{{"n":{i}}}'.encode(), task="app.t")
            for i in range(n)]


def _insert_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


def test_each_chunk_is_read_on_the_callers_thread_and_stored_on_the_second_one(
        queue: SQLiteJobQueue) -> None:
    """The caller reads (the kernel encodes) chunk by chunk, in order; each chunk's
    statement runs on the second thread once the chunk was read. (When a read overlaps
    the statement before it is up to the scheduler.)"""
    events: list[tuple[Any, ...]] = []
    _write_conn(queue).set_trace_callback(
        lambda sql: events.append(("insert", threading.current_thread().name))
        if sql.startswith("INSERT") else None)
    sent = _messages(3 * INSERT_CHUNK + 7)  # four statements: the fewest that use the thread
    try:
        assert queue.push(Logged(sent, events)) == [True] * len(sent)
        assert queue.push(Logged(_messages(3 * INSERT_CHUNK, "x"), events)) == \
            [True] * 3 * INSERT_CHUNK
    finally:
        _write_conn(queue).set_trace_callback(None)
    reads = [e[1] for e in events if e[0] == "read"]
    assert reads == [*range(0, len(sent), INSERT_CHUNK), *range(0, 3 * INSERT_CHUNK,
                                                                  INSERT_CHUNK)]
    assert {e[2] for e in events if e[0] == "read"} == {threading.current_thread().name}
    me = threading.current_thread().name
    assert [e for e in events if e[0] == "insert"] == [("insert", THREAD)] * 4 + \
        [("insert", me)] * 3, "three statements run on the caller's thread"
    order = [e[0] for e in events]
    reads = [i for i, kind in enumerate(order) if kind == "read"]
    inserts = [i for i, kind in enumerate(order) if kind == "insert"]
    assert all(r < i for r, i in zip(reads, inserts, strict=True)), order
    claimed = {lease.id: lease.message.body for lease in queue.claim(10 * INSERT_CHUNK)}
    assert {k: v for k, v in claimed.items() if k.startswith("m")} == \
        {m.id: m.body for m in sent}
    assert not _insert_threads()


def test_a_statement_failing_on_the_second_thread_stores_nothing_of_the_batch(
        queue: SQLiteJobQueue) -> None:
    _write_conn(queue).execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON nuvom_queue WHEN NEW.id = 'm777' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
    batch = _messages(4 * INSERT_CHUNK)
    with pytest.raises(sqlite3.IntegrityError, match="refused by a test trigger"):
        queue.push(batch)
    assert queue.qsize() == 0 and not _insert_threads()
    assert queue.push(_messages(4 * INSERT_CHUNK, "again")) == [True] * 4 * INSERT_CHUNK


def test_a_message_that_cannot_be_stored_in_a_later_chunk_stores_nothing_of_the_batch(
        queue: SQLiteJobQueue) -> None:
    batch = _messages(4 * INSERT_CHUNK)
    batch[2 * INSERT_CHUNK + 1] = Message(id="bad", body="not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message 'bad': body must be bytes"):
        queue.push(batch)
    assert queue.qsize() == 0 and not _insert_threads()


def test_a_library_that_takes_999_parameters_gets_smaller_statements(
        queue: SQLiteJobQueue) -> None:
    conn = _write_conn(queue)
    if not hasattr(conn, "setlimit"):
        pytest.skip("Connection.setlimit needs Python 3.11")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    assert chunk_rows(conn) == 124
    # rows of two queues: eight parameters a row, the most a statement can take
    sent = [Message(id=f"x{i}", body=b"{}", queue=f"q{i % 2}") for i in range(300)]
    assert queue.push(sent) == [True] * 300
    assert {lease.id for lease in queue.claim(300)} == {m.id for m in sent}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_process_on_one_cpu_stores_every_chunk_on_the_callers_thread(
        queue: SQLiteJobQueue) -> None:
    threads: list[str] = []
    _write_conn(queue).set_trace_callback(
        lambda sql: threads.append(threading.current_thread().name)
        if sql.startswith("INSERT") else None)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        sent = _messages(4 * INSERT_CHUNK + 1)
        assert queue.push(sent) == [True] * len(sent)
    finally:
        os.sched_setaffinity(0, cpus)
        _write_conn(queue).set_trace_callback(None)
    assert threads == [threading.current_thread().name] * 5
    assert {lease.id for lease in queue.claim(len(sent))} == {m.id for m in sent}
