"""Bad input and faults, each against a real server: unreachable, missing database, bad
password, terminated connections (pooled and LISTEN), and a restarted cluster (``-m fast``
and ``-m immediate``) under load. Restarts use a throwaway cluster this module owns."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_cluster import Cluster, unavailable_reason
from pg_support import DSN

from nuvom_kernel import task
from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.testing.contracts import make_message, wait_until
from nuvom_plugins_postgres import PostgresQueue, PostgresUnavailableError, transaction


@task
def noop() -> None:
    return None


def _delay_with(tmp_path: Path, dsn: str) -> EnqueueError:
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "memory",
        "NUVOM_PLUGINS__POSTGRES__DSN": dsn})
    with use_kernel(kernel), pytest.raises(EnqueueError) as caught:
        noop.delay()
    kernel.close()
    return caught.value


def test_unreachable_server_names_dsn_and_what_to_check(tmp_path: Path) -> None:
    err = _delay_with(tmp_path, "host=127.0.0.1 port=1 user=postgres password=hunter2")
    text = str(err)
    assert "port=1" in text and "hunter2" not in text and "password=***" in text
    assert "server is running" in text and "\n" not in text


def test_missing_database_says_create_it(tmp_path: Path) -> None:
    err = _delay_with(tmp_path, f"{DSN} dbname=nuvom_missing_{uuid.uuid4().hex[:8]}")
    assert "does not exist" in str(err) and "createdb" in str(err)


def test_runworker_exits_nonzero_with_one_clear_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "NUVOM_QUEUE_BACKEND": "postgres",
           "NUVOM_RESULT_BACKEND": "postgres",
           "NUVOM_PLUGINS__POSTGRES__DSN": "postgresql://postgres:s3cret@127.0.0.1:1/x"}
    proc = subprocess.run([str(Path(sys.executable).parent / "nuvom"), "runworker"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cannot use PostgreSQL at dsn=postgresql://postgres:***@127.0.0.1:1/x" in lines[0]
    assert "s3cret" not in proc.stderr + proc.stdout


def _terminate(application_name: str) -> int:
    with psycopg.connect(DSN, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name[:63],)).fetchall())


def test_terminated_pooled_connections_lose_nothing(settings: dict[str, object],
                                                    schema: str, context: BackendContext
                                                    ) -> None:
    queue = PostgresQueue.from_settings(settings, BackendContext(
        visibility_timeout_secs=1.0, namespace=context.namespace))
    sent = [make_message() for _ in range(300)]
    queue.enqueue_many(sent)
    acked: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            try:
                for lease in queue.pop_batch(5, timeout=0.2):
                    if queue.ack(lease):
                        acked.append(lease.id)
            except (psycopg.Error, PostgresUnavailableError) as exc:  # the retry-once may
                errors.append(exc)  # meet a second kill: the connection lost twice

    threads = [threading.Thread(target=consume, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for killed in range(5):  # kill the pool's sessions while claims and acks are in flight
        wait_until(lambda k=killed: len(acked) > k * 40 or len(acked) == len(sent), 20,
                   "consumers stopped making progress after a terminated connection")
        _terminate(f"nuvom {schema}")
    wait_until(lambda: len(set(acked)) == len(sent), 30,
               "a message was lost after its connection was terminated")
    done.set()
    for t in threads:
        t.join(5)
    queue.close()
    assert sorted(set(acked)) == sorted(m.id for m in sent)
    assert len(acked) == len(sent), "no message was acked twice"


def test_terminated_listen_connection_reconnects(settings: dict[str, object], schema: str,
                                                 queue: PostgresQueue,
                                                 context: BackendContext) -> None:
    listener = queue._listener
    wait_until(listener.listening.is_set, 10, "the listener never started")
    first_pid = listener.backend_pid
    assert _terminate(f"nuvom-listen {schema}") == 1
    wait_until(lambda: listener.listening.is_set() and listener.backend_pid != first_pid, 10,
               "the LISTEN connection was not re-established")
    # Another process pushes: only the re-established LISTEN can wake us within 1 s.
    queue.poll_interval_min = queue.poll_interval_max = 30.0  # type: ignore[misc]
    queue._tick_at = time.monotonic() + 60  # no maintenance tick ends the wait either
    got: dict[str, float] = {}
    waiter = threading.Thread(target=lambda: got.update(
        lease=queue.dequeue(timeout=20) is not None, at=time.monotonic()), daemon=True)
    waiter.start()
    code = ("from nuvom_kernel.backends import BackendContext\n"
            "from nuvom_kernel.testing.contracts import make_message\n"
            "from nuvom_plugins_postgres import PostgresQueue\n"
            f"q = PostgresQueue.from_settings({settings!r}, "
            f"BackendContext(namespace={context.namespace!r}))\n"
            "q.enqueue(make_message()); q.close()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    pushed = time.monotonic()
    waiter.join(20)
    assert got.get("lease"), "the other process's job was never picked up"
    assert got["at"] - pushed < 1.0, "pickup after reconnect must come from NOTIFY"


# --- a throwaway cluster: bad password, restarts ----------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = Cluster(password="right-pass")
    yield c
    c.destroy()


def test_bad_password_says_check_the_password(cluster: Cluster) -> None:
    dsn = cluster.dsn.replace("right-pass", "wrong-pass")
    with pytest.raises(PostgresUnavailableError) as caught:
        PostgresQueue.from_settings({"dsn": dsn}, BackendContext(namespace="badpw"))
    text = str(caught.value)
    assert "password" in text and "wrong-pass" not in text and "***" in text


def test_a_caller_transaction_after_a_restart_still_enqueues(cluster: Cluster) -> None:
    """``transaction(conn)`` checks that conn reaches the queue's database; a first version
    compared the server's start time, read once by the store, so after any restart (an
    upgrade, a failover) every caller's push was refused as "another server"."""
    queue = PostgresQueue.from_settings({"dsn": cluster.dsn},
                                        BackendContext(namespace="txn-restart"))
    try:
        for _ in range(2):
            with psycopg.connect(cluster.dsn) as conn, transaction(conn):
                queue.enqueue(make_message())
            cluster.restart()
        assert queue.qsize() == 2
    finally:
        queue.clear()
        queue.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_under_load_loses_no_committed_enqueue(cluster: Cluster, mode: str) -> None:
    context = BackendContext(visibility_timeout_secs=2.0, namespace=f"restart-{mode}")
    producer = PostgresQueue.from_settings({"dsn": cluster.dsn}, context)
    consumer = PostgresQueue.from_settings({"dsn": cluster.dsn}, context)
    producer.clear()
    committed: list[str] = []
    consumed: set[str] = set()
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set() and len(committed) < 400:
            message = make_message()
            try:
                producer.enqueue(message)
            except (EnqueueError, psycopg.Error):
                continue  # not committed (or unknown): the caller would try again
            committed.append(message.id)

    def consume() -> None:
        while not stop.is_set():
            try:
                for lease in consumer.pop_batch(8, timeout=0.1):
                    consumed.add(lease.id)
                    consumer.ack(lease)
            except Exception:  # the server is down for a moment
                stop.wait(0.05)  # back off while it restarts

    threads = [threading.Thread(target=f, daemon=True) for f in (produce, consume)]
    for t in threads:
        t.start()
    wait_until(lambda: len(committed) >= 100, 30, "no load before the restart")
    cluster.restart(mode)
    wait_until(lambda: len(committed) >= 400, 60, "producers never recovered after restart")
    wait_until(lambda: set(committed) <= consumed, 60,
               "a committed enqueue was lost across the restart")
    stop.set()
    for t in threads:
        t.join(10)
    producer.close()
    consumer.close()


def test_a_tick_whose_client_went_silent_frees_the_cluster_within_seconds() -> None:
    """The tick holds its advisory lock across round trips. A host cut off between them
    left its session idle in that transaction, and no worker of the cluster could promote a
    due job or recover an expired lease until the server's 60 s idle timeout ended it: the
    tick's transaction ends itself after IDLE_IN_TICK_MS of silence now."""
    from nuvom_plugins_postgres.queries import IDLE_IN_TICK_MS, Queries
    from nuvom_plugins_postgres.schema import ADVISORY_CLASS

    schema = f"nuvom_ticktest_{uuid.uuid4().hex[:8]}"
    key = (ADVISORY_CLASS, f"{schema}:tick")
    lock = "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))"
    silent = psycopg.connect(DSN)  # not autocommit: the tick's statements share a transaction
    try:
        with psycopg.connect(DSN, autocommit=True) as other:
            won = silent.execute(Queries(schema).tick_lock, key).fetchone()
            assert won is not None and won[0]
            assert other.execute(lock, key).fetchone() == (False,)  # held: nobody ticks
            # ... and the client says nothing more (a host cut off mid-tick):
            started = time.monotonic()
            wait_until(lambda: other.execute(lock, key).fetchone() == (True,),
                       IDLE_IN_TICK_MS / 1000 + 8,
                       "the server to end the silent tick's transaction")
            assert time.monotonic() - started >= IDLE_IN_TICK_MS / 1000 - 0.5
        with pytest.raises(psycopg.Error):
            silent.execute("SELECT 1")  # its session was ended, not just its lock
    finally:
        silent.close()
