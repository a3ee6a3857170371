"""SQLiteJobQueue in one process: ordering, leases, fencing, delays, stats, settings."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlite_helpers import msg, wait_until

from nuvom_kernel.backends import BackendContext, QueueCounts
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.models import JobStatus, Message
from nuvom_plugins_sqlite import SQLiteJobQueue


def ids(leases: list) -> list[str]:
    return [lease.id for lease in leases]


def test_fifo_within_a_priority_and_higher_priority_first(queue: SQLiteJobQueue) -> None:
    base = time.time()
    queue.enqueue_many([
        msg("low-1", priority=0, created_at=base),
        msg("high-2", priority=5, created_at=base + 2),
        msg("low-2", priority=0, created_at=base + 1),
        msg("high-1", priority=5, created_at=base + 1),
        msg("neg", priority=-3, created_at=base - 10),
    ])
    assert ids(queue.claim(10)) == ["high-1", "high-2", "low-1", "low-2", "neg"]


def test_equal_created_at_falls_back_to_insertion_order(queue: SQLiteJobQueue) -> None:
    same = time.time()
    queue.enqueue_many([msg(f"j{i}", created_at=same) for i in range(20)])
    got = []
    while batch := queue.claim(3):
        got += ids(batch)
    assert got == [f"j{i}" for i in range(20)]


def test_claim_returns_the_stored_message(queue: SQLiteJobQueue) -> None:
    sent = Message(id="a", body=b"\x00\xffpayload", queue="mail", priority=7,
                   created_at=123.5)
    queue.enqueue(sent)
    [lease] = queue.claim(1)
    assert lease.message == sent
    assert lease.deliveries == 1
    assert lease.expires_at == pytest.approx(time.time() + 30, abs=2)


def test_delayed_messages_never_block_ready_ones(queue: SQLiteJobQueue) -> None:
    now = time.time()
    queue.enqueue_many([
        msg("later-high", priority=9, available_at=now + 60, created_at=now - 5),
        msg("later", available_at=now + 60, created_at=now - 5),
        msg("ready", created_at=now),
    ])
    assert ids(queue.claim(5)) == ["ready"]
    assert queue.qsize() == 2
    assert queue.stats().delayed == 2
    assert queue.peek_state("later") is JobStatus.QUEUED


def test_delayed_message_becomes_claimable_when_due(queue: SQLiteJobQueue) -> None:
    due = time.time() + 0.2
    queue.enqueue(msg("soon", available_at=due))
    early = queue.claim(1)
    assert early == [] or time.time() >= due, "a delayed message waits for its time"
    lease = early[0] if early else queue.dequeue(timeout=5.0)
    assert lease is not None and lease.id == "soon"


def test_ack_deletes_and_is_fenced_by_token(queue: SQLiteJobQueue) -> None:
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    forged = type(lease)(lease.message, "not-the-token", lease.deliveries, lease.expires_at)
    assert queue.ack(forged) is False
    assert queue.peek_state("a") is JobStatus.RUNNING
    assert queue.ack(lease) is True
    assert queue.ack(lease) is False
    assert queue.peek_state("a") is None
    assert queue.qsize() == 0


def test_each_claim_gets_a_fresh_token(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg(f"j{i}") for i in range(50)])
    leases = queue.claim(50)
    assert len({lease.token for lease in leases}) == 50
    assert queue.release(leases[0])
    [again] = queue.claim(1)
    assert again.id == leases[0].id and again.token != leases[0].token


def test_lost_lease_cannot_ack_retry_extend_or_release(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.2)
    q.enqueue(msg("a"))
    [first] = q.claim(1)
    second = wait_until(lambda: q.claim(1), timeout=5.0)[0]  # first lease expired
    assert second.id == "a" and second.deliveries == 2
    assert q.ack(first) is False
    assert q.retry(first, delay_secs=0) is False
    assert q.extend(first, 10) is False
    assert q.release(first) is False
    assert q.extend_many([first, second], 10) == [False, True]
    assert q.ack(second) is True
    q.close()


def test_visibility_timeout_expiry_redelivers_with_count(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.25)
    q.enqueue(msg("a"))
    assert len(q.claim(1)) == 1
    claimed = time.time()
    again = q.claim(1)
    assert again == [] or time.time() - claimed >= 0.25  # hidden while the lease holds
    lease2 = q.dequeue(timeout=5.0)
    assert lease2 is not None and lease2.id == "a"
    assert time.time() - claimed >= 0.2
    assert lease2.deliveries == 2
    lease3 = q.dequeue(timeout=5.0)  # and again: the count keeps growing
    assert lease3 is not None and lease3.deliveries == 3
    q.close()


def test_extend_keeps_a_running_job_hidden(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.3)
    q.enqueue(msg("a"))
    [lease] = q.claim(1)
    deadline = time.monotonic() + 1.0  # 3x the visibility timeout, extended all along
    while time.monotonic() < deadline:
        assert q.extend(lease, 0.3)
        assert q.claim(1) == []
        assert q.peek_state("a") is JobStatus.RUNNING
        time.sleep(0.05)
    assert q.ack(lease)
    q.close()


def test_retry_delays_keeps_deliveries_and_replaces_body(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("a"), msg("b", created_at=time.time() + 1)])
    [lease] = queue.claim(1)
    assert queue.retry(lease, delay_secs=60, body=b"new-body")
    assert queue.peek_state("a") is JobStatus.RETRYING
    assert ids(queue.claim(5)) == ["b"]  # the retrying job does not block b
    assert queue.stats().delayed == 1
    # retry without delay: visible at once, body kept, deliveries counted on
    queue.clear()
    queue.enqueue(msg("c"))
    [lease] = queue.claim(1)
    assert queue.retry(lease, delay_secs=0)
    [again] = queue.claim(1)
    assert again.deliveries == 2 and again.message.body == b"body-c"


def test_retry_body_is_stored(queue: SQLiteJobQueue) -> None:
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    assert queue.retry(lease, delay_secs=0, body=b"v2")
    [again] = queue.claim(1)
    assert again.message.body == b"v2"


def test_failures_count_retries_and_survive_expiry(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=0.2)
    q.enqueue(Message(id="a", body=b"x", task="tasks.flaky"))
    [lease] = q.claim(1)
    assert (lease.message.task, lease.message.failures) == ("tasks.flaky", 0)
    assert q.retry(lease, delay_secs=0)
    [lease] = q.claim(1)
    assert lease.message.failures == 1
    assert q.retry(lease, delay_secs=0, body=b"y")
    [lease] = q.claim(1)  # ... and its lease expires: a delivery, not a failure
    again = wait_until(lambda: q.claim(1))[0]
    assert (again.message.failures, again.deliveries, again.message.body) == (2, 4, b"y")
    assert q.ack(lease) is False, "an expired lease taken over is lost"
    q.close()


def test_release_with_delay_waits_and_is_retrying_only_after_a_failure(
        queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("first"), msg("failed")])
    leases = {le.id: le for le in queue.claim(2)}
    assert queue.retry(leases["failed"], delay_secs=0)
    [failed] = queue.claim(1)
    assert queue.release(leases["first"], delay_secs=60)
    assert queue.release(failed, delay_secs=60)
    assert queue.peek_state("first") is JobStatus.QUEUED
    assert queue.peek_state("failed") is JobStatus.RETRYING
    assert queue.claim(5) == []
    assert queue.stats().queues["default"] == QueueCounts(delayed=2)


def test_extend_to_zero_is_claimable_by_the_next_claim(queue: SQLiteJobQueue) -> None:
    """The claim caches when the next waiting row is due (the lease's expiry, 30 s away);
    expiring the lease now must not wait for that hint."""
    queue.enqueue_many([msg("a"), msg("b")])
    [lease] = queue.claim(1)
    assert ids(queue.claim(1)) == ["b"]  # a claim that leased: the hint is a's expiry
    assert queue.extend(lease, 0)
    [again] = queue.claim(1)
    assert (again.id, again.deliveries) == ("a", 2)
    assert queue.peek_state("a") is JobStatus.RUNNING


@pytest.mark.parametrize("how", ["push", "retry", "release"])
def test_a_row_due_before_the_cached_hint_is_claimed_when_due(queue: SQLiteJobQueue,
                                                              how: str) -> None:
    queue.enqueue_many([msg("a"), msg("b")])
    a, _ = queue.claim(2)  # a claim that leased: the hint is their expiry, 30 s away
    if how == "push":
        queue.enqueue(msg("soon", available_at=time.time() + 0.05))
    elif how == "retry":
        assert queue.retry(a, delay_secs=0.05)
    else:
        assert queue.release(a, delay_secs=0.05)
    due = time.time() + 0.05
    wait_until(lambda: time.time() > due, timeout=5.0)
    assert ids(queue.claim(5)) == ["soon" if how == "push" else "a"], \
        "the first claim after the row is due takes it"


def test_release_restores_delivery_count(queue: SQLiteJobQueue) -> None:
    queue.enqueue(msg("a"))
    [lease] = queue.claim(1)
    assert lease.deliveries == 1
    assert queue.release(lease)
    assert queue.peek_state("a") is JobStatus.QUEUED
    [again] = queue.claim(1)
    assert again.deliveries == 1


def test_named_queues(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("m1", queue="mail"), msg("d1"), msg("m2", queue="mail"),
                        msg("r1", queue="reports")])
    assert queue.qsize(["mail"]) == 2
    assert queue.qsize([]) == 0
    assert ids(queue.claim(10, ["mail"])) == ["m1", "m2"]
    assert queue.claim(10, []) == []
    assert ids(queue.claim(10, ["reports", "default"])) == ["d1", "r1"]
    assert queue.qsize() == 0


def test_clear_counts_leased_messages_too(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("a"), msg("b", queue="x"), msg("c", queue="x")])
    queue.claim(1, ["x"])
    assert queue.clear(["x"]) == 2
    assert queue.qsize() == 1
    assert queue.clear() == 1
    assert queue.clear() == 0


def test_push_skips_queued_ids_and_reports_each(queue: SQLiteJobQueue) -> None:
    """Duplicates anywhere in a batch (queued before, leased, repeated within the batch,
    several of them) are skipped and reported, and the batch is still one transaction."""
    queue.enqueue_many([msg("dup"), msg("leased")])
    [lease] = queue.claim(1)
    assert lease.id == "dup"
    batch = [msg("new-1"), Message(id="dup", body=b"impostor"), msg("new-2"),
             Message(id="new-1", body=b"twin"), msg("leased"), msg("new-3")]
    assert queue.push(batch) == [True, False, True, False, False, True]
    assert queue.qsize() == 4  # leased, new-1, new-2, new-3
    bodies = {le.id: le.message.body for le in queue.claim(10)}
    assert bodies == {"leased": b"body-leased", "new-1": b"body-new-1",
                      "new-2": b"body-new-2", "new-3": b"body-new-3"}
    assert queue.push([msg("dup")]) == [False]  # one message: the autocommit path
    assert queue.ack(lease)
    assert queue.push([msg("dup")]) == [True]


def test_push_refuses_a_bad_message_before_storing_any(queue: SQLiteJobQueue) -> None:
    queue.enqueue(msg("a"))
    with pytest.raises(TypeError, match="body must be bytes"):
        queue.push([msg("b"), Message(id="x", body="text")])  # type: ignore[arg-type]
    assert queue.qsize() == 1


def test_qsize_and_stats(queue: SQLiteJobQueue) -> None:
    now = time.time()
    queue.enqueue_many([msg("a", created_at=now - 10), msg("b"), msg("c", queue="mail"),
                        msg("d", available_at=now + 60)])
    queue.claim(1)  # leases "a"
    stats = queue.stats()
    assert stats.queues == {
        "default": QueueCounts(ready=1, delayed=1, running=1,
                               oldest_ready_age_secs=pytest.approx(0, abs=5)),
        "mail": QueueCounts(ready=1, oldest_ready_age_secs=pytest.approx(0, abs=5)),
    }
    assert stats.quarantined == []
    assert queue.qsize() == 3
    assert queue.qsize(["mail"]) == 1


def test_cancel_removes_waiting_messages_only(queue: SQLiteJobQueue) -> None:
    queue.enqueue_many([msg("a"), msg("b"), msg("later", available_at=time.time() + 60)])
    [lease] = queue.claim(1)
    assert queue.cancel("a") is False  # leased: its worker decides
    assert queue.cancel("b") is True
    assert queue.cancel("b") is False
    assert queue.cancel("later") is True
    assert queue.ack(lease)
    assert queue.qsize() == 0


def test_peek_state_of_unknown_id_is_none(queue: SQLiteJobQueue) -> None:
    assert queue.peek_state("never-seen") is None


def test_many_threads_share_one_backend_without_double_claims(
    queue: SQLiteJobQueue,
) -> None:
    total = 1500
    queue.enqueue_many([msg(f"j{i}") for i in range(total)])
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while leases := queue.claim(3):
                for lease in leases:
                    assert queue.ack(lease)
                with lock:
                    claimed.extend(ids(leases))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(claimed) == total and len(set(claimed)) == total
    assert queue.qsize() == 0


@pytest.mark.parametrize("wakeups", [True, False], ids=["wake-sockets", "data-version"])
def test_wait_is_woken_by_a_push_from_another_connection(db_path: Path, wakeups: bool) -> None:
    """A waiter in one backend instance (its own connections and sockets, as in another
    process) sees pushes through another instance within milliseconds, not at the base
    class's polls (up to 0.1 s apart): the median of pushes at varied moments proves it.
    Without wake-up sockets (non-Linux), ``PRAGMA data_version`` polling does the job."""
    consumer = SQLiteJobQueue(db_path)
    consumer._waker.enabled = wakeups
    producer = SQLiteJobQueue(db_path)
    n = 6
    latencies: list[float] = []
    ready = threading.Event()

    def wait() -> None:
        consumer.pop_batch(1, timeout=0.3)  # settle into the idle wait once
        ready.set()
        for _ in range(n):
            lease = consumer.dequeue(timeout=10)
            assert lease is not None
            latencies.append(time.time() - float(lease.message.body))

    thread = threading.Thread(target=wait)
    thread.start()
    assert ready.wait(5)
    for i in range(n):
        time.sleep(0.12 + 0.019 * i)  # let the waiter back off to its longest interval
        producer.enqueue(Message(id=f"j{i}", body=repr(time.time()).encode()))
    thread.join(10)
    assert len(latencies) == n
    assert sorted(latencies)[n // 2] < 0.025, latencies
    assert (consumer._waker.dir.exists() and any(consumer._waker.dir.iterdir())) == wakeups
    consumer.close()
    producer.close()


def test_wake_registration_of_a_dead_waiter_is_removed(queue: SQLiteJobQueue) -> None:
    if not queue._waker.enabled:
        pytest.skip("wake-up sockets are Linux-only")
    queue._waker.dir.mkdir(parents=True)
    stale = queue._waker.dir / "0123456789abcdef"  # registered, but no socket bound
    stale.touch()
    queue.enqueue(msg("a"))
    assert not stale.exists()


def test_close_unregisters_the_waiters_socket(queue: SQLiteJobQueue) -> None:
    queue.wait_for_messages(0.01, queue._generation)  # registers this thread as a waiter
    registered = list(queue._waker.dir.iterdir()) if queue._waker.dir.exists() else []
    assert len(registered) == (1 if queue._waker.enabled else 0)
    queue.close()
    assert not any(p.exists() for p in registered)


def test_release_and_immediate_retry_wake_waiters(db_path: Path) -> None:
    q = SQLiteJobQueue(db_path)
    q.enqueue(msg("a"))
    [lease] = q.claim(1)
    got: list[str] = []
    ready = threading.Event()

    def wait() -> None:
        q.pop_batch(1, timeout=0.05)
        ready.set()
        lease = q.dequeue(timeout=10)
        got.append(lease.id if lease else "")

    thread = threading.Thread(target=wait)
    thread.start()
    assert ready.wait(5)
    assert q.retry(lease, delay_secs=0)
    thread.join(10)
    assert got == ["a"]
    q.close()


def test_from_settings_uses_context_and_validates(tmp_path: Path) -> None:
    ctx = BackendContext(data_dir=tmp_path / "state", visibility_timeout_secs=7)
    q = SQLiteJobQueue.from_settings({}, ctx)
    assert q.path == tmp_path / "state" / "nuvom.db"
    assert q.visibility_timeout_secs == 7
    assert q.settings.synchronous == "NORMAL"
    q.enqueue(msg("a"))
    assert q.path.exists()
    q.close()
    full = SQLiteJobQueue.from_settings({"path": str(tmp_path / "f.db"),
                                         "synchronous": "full"}, ctx)
    assert full.settings.synchronous == "FULL"
    assert full._db.conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert full._db.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    full.close()
    with pytest.raises(ConfigError) as info:
        SQLiteJobQueue.from_settings({"synchronous": "OFF"}, ctx)
    # the variable too: it may be where the value came from, not the file's table
    assert ("[plugins.sqlite] synchronous='OFF' (NUVOM_PLUGINS__SQLITE__SYNCHRONOUS) is "
            "invalid: it must be NORMAL (default) or FULL") in str(info.value)
    with pytest.raises(ConfigError, match=r"'pth' is not a setting of plugin 'sqlite'"):
        SQLiteJobQueue.from_settings({"pth": "x.db"}, ctx)
    with pytest.raises(ConfigError, match="busy_timeout_secs"):
        SQLiteJobQueue.from_settings({"busy_timeout_secs": "soon"}, ctx)


def test_full_sync_fsyncs_jobs_but_not_lease_bookkeeping(db_path: Path) -> None:
    """At FULL, push/retry commit with fsync; claim/ack/extend/release do not (losing them to
    a power cut only re-runs a job, which at-least-once delivery allows). Every write goes
    through the process's one write connection, switched to the caller's level."""
    q = SQLiteJobQueue(db_path, synchronous="FULL")

    def level() -> int:
        writer = q._db._writer
        assert writer is q._lease_db._writer and writer.conn is not None
        return int(writer.conn.execute("PRAGMA synchronous").fetchone()[0])

    q.enqueue(msg("a"))
    assert level() == 2  # FULL
    [lease] = q.claim(1)
    assert level() == 1  # NORMAL
    assert q.retry(lease, delay_secs=0)
    assert level() == 2
    [lease] = q.claim(1)
    assert q.ack(lease)
    assert level() == 1
    q.close()
    normal = SQLiteJobQueue(db_path)
    assert normal._lease_db is normal._db
    normal.close()


def test_capabilities_and_name() -> None:
    caps = SQLiteJobQueue.capabilities
    assert SQLiteJobQueue.name == "sqlite"
    assert caps.persistent and caps.multiprocess_safe and caps.priorities and caps.delayed
    assert caps.blocking_dequeue == sys.platform.startswith("linux")


def test_close_then_use_again_reopens(queue: SQLiteJobQueue) -> None:
    queue.enqueue(msg("a"))
    queue.close()
    assert queue.qsize() == 1


def _status_says_it_in_one_line(project: Path, path: Path) -> None:
    """``nuvom status`` on the database at ``path``: one ``Error:`` line, exit status 1."""
    import subprocess

    status = subprocess.run(
        [sys.executable, "-m", "nuvom_kernel", "status"], cwd=project, text=True,
        capture_output=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "NUVOM_QUEUE_BACKEND": "sqlite",
             "NUVOM_RESULT_BACKEND": "sqlite", "NUVOM_PLUGINS__SQLITE__PATH": str(path)})
    assert status.returncode == 1
    assert status.stderr.startswith("Error: the 'sqlite' backend's database"), status.stderr
    assert "Traceback" not in status.stderr


def test_a_file_that_cannot_be_created_names_itself_and_the_setting(tmp_path: Path) -> None:
    """A path under a regular file (refused even to root): the raw ``NotADirectoryError``
    named no setting, and came out of ``nuvom status`` as a traceback."""
    from nuvom_plugins_sqlite import SQLiteUnavailableError

    (tmp_path / "blocker").write_text("")
    path = tmp_path / "blocker" / "sub" / "q.db"
    queue = SQLiteJobQueue(path)
    with pytest.raises(SQLiteUnavailableError) as refused:
        queue.enqueue(msg("a"))
    text = str(refused.value)
    assert str(path) in text and "NUVOM_PLUGINS__SQLITE__PATH" in text, text
    _status_says_it_in_one_line(tmp_path, path)


@pytest.mark.parametrize("damage", ["random bytes", "a text file", "a truncated database"])
def test_a_damaged_database_is_named_kept_and_explained_not_a_traceback(
        tmp_path: Path, damage: str) -> None:
    """A file that is not an SQLite database (or no longer one) gave ``sqlite3.DatabaseError:
    file is not a database`` as a traceback from ``nuvom status``, ``runworker`` and
    ``.delay()``. Now: an error naming the file and what to do; the file itself is kept
    byte for byte (it may hold jobs)."""
    from nuvom_plugins_sqlite import SQLiteUnavailableError

    path = tmp_path / "q.db"
    if damage == "random bytes":
        path.write_bytes(os.urandom(20_000))
    elif damage == "a text file":
        path.write_text("jobs go here\n" * 500)
    else:
        whole = SQLiteJobQueue(path)
        whole.enqueue_many([msg(f"j{i}", queue="x" * 2_000) for i in range(50)])
        whole.close()
        path.write_bytes(path.read_bytes()[:50])  # the header's first bytes, then nothing
    before = path.read_bytes()
    queue = SQLiteJobQueue(path)
    with pytest.raises(SQLiteUnavailableError) as refused:
        queue.enqueue(msg("a"))
    text = str(refused.value)
    assert f"{path} is damaged or is not an SQLite database" in text, text
    assert "Nuvom does not replace it" in text and ".recover" in text, text
    _status_says_it_in_one_line(tmp_path, path)
    assert path.read_bytes() == before, "a damaged database must be left as it was"
