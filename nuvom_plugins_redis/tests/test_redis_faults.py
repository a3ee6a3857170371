"""Faults against a real server: unreachable, wrong password, connections killed, writes
paused, and a restart without persistence. Each uses a throwaway ``redis-server``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import settings
from redis_server import RedisServer, free_port

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import EnqueueError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.testing.contracts import make_message, wait_until
from nuvom_plugins_redis import RedisJobQueue, RedisUnavailableError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


def _queue(url: str, **extra: object) -> RedisJobQueue:
    return RedisJobQueue.from_settings(settings(url=url, **extra),  # type: ignore[no-any-return]
                                       BackendContext(visibility_timeout_secs=30.0))


def test_unreachable_server_names_the_url_with_the_password_masked() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(EnqueueError) as info:
        _queue(url, socket_connect_timeout_secs=1)
    text = str(info.value)
    assert isinstance(info.value, RedisUnavailableError)
    assert "s3cret" not in text and ":***@127.0.0.1" in text
    assert "cannot reach Redis" in text and "redis-server runs there" in text


def test_wrong_password_says_so(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path, "127.0.0.1", "--requirepass", "right").start()
    try:
        with pytest.raises(RedisUnavailableError) as info:
            _queue(f"redis://:wrong@127.0.0.1:{srv.port}/0")
        assert "wrong" not in str(info.value).replace("WRONGPASS", "")
        assert "password" in str(info.value)
        with pytest.raises(RedisUnavailableError, match="needs a password"):
            _queue(srv.url)
        assert _queue(f"redis://:right@127.0.0.1:{srv.port}/0").qsize() == 0
    finally:
        srv.stop()


def _user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    return {**env, **extra}


def test_delay_and_runworker_report_an_unreachable_server(tmp_path: Path) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    (tmp_path / "tasks_mod.py").write_text(
        "from nuvom_kernel import task\n@task\ndef add(a, b):\n    return a + b\n")
    env = _user_env(NUVOM_QUEUE_BACKEND="redis", NUVOM_RESULT_BACKEND="redis",
                    NUVOM_PLUGINS__REDIS__URL=url,
                    NUVOM_PLUGINS__REDIS__SOCKET_CONNECT_TIMEOUT_SECS="1")
    code = ("import tasks_mod\nfrom nuvom_kernel.errors import EnqueueError\n"
            "try:\n    tasks_mod.add.delay(1, 2)\nexcept EnqueueError as exc:\n"
            "    print('ENQUEUE-ERROR', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=60)
    assert "ENQUEUE-ERROR" in out.stdout, out.stdout + out.stderr
    assert ":***@127.0.0.1" in out.stdout and "s3cret" not in out.stdout
    worker = subprocess.run([sys.executable, "-m", "nuvom_kernel", "runworker"], cwd=tmp_path,
                            env=env, text=True, capture_output=True, timeout=60)
    assert worker.returncode != 0
    lines = [line for line in (worker.stdout + worker.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], lines
    assert "Traceback" not in worker.stderr and "s3cret" not in worker.stderr


def _consume(queue: RedisJobQueue, total: int, seen: list[str], stop: threading.Event
             ) -> None:
    """Claim and ack until ``total`` distinct ids were seen, riding out errors as the
    worker's dispatcher does (log, back off, claim again)."""
    while len(set(seen)) < total and not stop.is_set():
        try:
            leases = queue.pop_batch(8, timeout=0.5)
            for lease in leases:
                seen.append(lease.id)
            queue.ack_many(leases)
        except RedisUnavailableError:
            stop.wait(0.05)


@pytest.mark.parametrize("fault", ["client-kill", "client-pause"])
def test_killed_or_paused_connections_lose_nothing(server: RedisServer, fault: str) -> None:
    queue = _queue(server.url, visibility_timeout_secs=2)
    sent = [make_message() for _ in range(300)]
    queue.enqueue_many(sent)
    seen: list[str] = []
    stop = threading.Event()
    consumers = [threading.Thread(target=_consume, args=(queue, len(sent), seen, stop))
                 for _ in range(3)]
    for thread in consumers:
        thread.start()
    try:
        wait_until(lambda: len(seen) >= 30, 10, "consumers never started")
        admin = server.client()
        if fault == "client-kill":
            for _ in range(3):
                admin.client_kill_filter(_type="normal", skipme=True)
        else:
            admin.client_pause(1000, all=False)  # WRITE: every script waits
        wait_until(lambda: len(set(seen)) == len(sent), 30,
                   f"jobs were lost after {fault}")
    finally:
        stop.set()
        for thread in consumers:
            thread.join(10)
    assert set(seen) == {m.id for m in sent}
    assert queue.qsize() == 0
    queue.close()


def test_restart_without_persistence_is_logged_and_leases_report_lost(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    queue = _queue(server.url, reap_interval_secs=0.1)
    queue.enqueue(make_message())
    lease = queue.claim(1)[0]
    server.restart()
    with caplog.at_level(logging.CRITICAL, logger="nuvom.redis"):
        wait_until(lambda: "lost its data" in caplog.text, 10,
                   "the wiped server was never noticed")
    assert queue.extend(lease, 30) is False, "a lease the wipe took must report lost"
    assert queue.ack(lease) is False
    fresh = make_message()
    assert queue.push([fresh]) == [True], "the worker's client reconnected by itself"
    assert queue.claim(1)[0].id == fresh.id
    queue.close()


RUN_TASKS = """
import os, time
from nuvom_kernel import task

@task
def mark(i):
    fd = os.open('runs.log', os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f'{i}\\n'.encode())
    os.close(fd)
    time.sleep(0.02)
    return i
"""


def test_outcomes_finished_while_the_server_restarts_land_after_it_and_run_once(
        tmp_path: Path) -> None:
    """A server away for a moment (restarted with its data kept) fails the settles of the
    jobs that finish meanwhile; the worker tries them again while their leases last, so
    no job runs a second time (they used to, once their leases expired)."""
    server = RedisServer(tmp_path, "127.0.0.1", "--appendonly", "yes", "--appendfsync",
                         "always").start()
    project = tmp_path / "project"
    project.mkdir()
    (project / "run_tasks.py").write_text(RUN_TASKS)
    env = _user_env(NUVOM_QUEUE_BACKEND="redis", NUVOM_RESULT_BACKEND="redis",
                    NUVOM_VISIBILITY_TIMEOUT_SECS="10",
                    NUVOM_PLUGINS__REDIS__URL=server.url,
                    NUVOM_PLUGINS__REDIS__KEY_PREFIX=f"nuvom-restart-{os.getpid()}",
                    NUVOM_PLUGINS__REDIS__SOCKET_TIMEOUT_SECS="1",
                    NUVOM_PLUGINS__REDIS__SOCKET_CONNECT_TIMEOUT_SECS="1",
                    NUVOM_PLUGINS__REDIS__BLOCK_SECS="1")
    total = 300
    enqueue = f"import run_tasks\nrun_tasks.mark.map([(i,) for i in range({total})])\n"
    subprocess.run([sys.executable, "-c", enqueue], cwd=project, env=env, check=True,
                   timeout=60)
    worker = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker",
                               "--workers", "2"], cwd=project, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(worker.stdout.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    runs = project / "runs.log"

    def ran() -> list[str]:
        return runs.read_text().split() if runs.exists() else []

    kernel = Kernel(root=project, environ=env)
    try:
        wait_until(lambda: len(ran()) >= 40, 30, "the worker never started on the jobs")
        server.stop()
        wait_until(lambda: any("outcome(s)" in line and ("trying again" in line
                                                         or "could not be recorded" in line)
                               for line in output), 30,
                   "no settle failed while the server was down")
        server.start()
        wait_until(lambda: kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0,
                   60, "the queue never emptied after the restart")
        worker.send_signal(signal.SIGINT)
        worker.wait(60)
        reader.join(10)
        counts = Counter(ran())
        assert len(counts) == total
        twice = sorted(job for job, n in counts.items() if n > 1)
        assert not twice, (f"{len(twice)} job(s) ran twice: {twice[:10]}\n"
                           + "".join(output)[-3000:])
        assert worker.returncode == 0, "".join(output)[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        kernel.close()
        server.stop()


def test_a_server_that_loses_jobs_is_warned_about_by_workers_not_producers(
        server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server without persistence: the warning belongs in the worker's log. A producer
    and every CLI command printed it too, at every call (found walking through the docs)."""
    from nuvom_kernel import Worker

    caplog.set_level(logging.WARNING, logger="nuvom")
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
        "NUVOM_PLUGINS__REDIS__URL": server.url,
        "NUVOM_PLUGINS__REDIS__KEY_PREFIX": f"nuvom-warn-{os.getpid()}"})
    try:
        assert kernel.queue.qsize() == 0 and kernel.results.get("nothing") is None
        assert "no persistence" not in caplog.text, "a producer is told nothing"
        worker = Worker(kernel, workers=1, scheduler=False)
        worker.start()
        worker.stop()
        assert worker.join() == 0
    finally:
        kernel.close()
    assert caplog.text.count(f"Redis at {server.url} has no persistence") == 1, caplog.text


def test_a_server_that_stops_answering_costs_one_socket_timeout(server: RedisServer) -> None:
    """A frozen server (SIGSTOP: connections are accepted, nothing answers) held a push
    ~30 socket timeouts: redis-py retried a reply that did not come 4 times, inside a
    health-check PING retried the same way. A dropped connection is still retried."""
    import time

    queue = _queue(server.url, socket_timeout_secs=0.5, socket_connect_timeout_secs=0.5,
                   health_check_interval_secs=0)
    queue.enqueue(make_message("before"))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="Timeout reading"):
            queue.enqueue(make_message("frozen"))
        took = time.monotonic() - started
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert took < 2.0, f"a push to a frozen server took {took:.1f} s at a 0.5 s timeout"
    server.client().client_kill_filter(_type="normal", skipme=True)  # every connection cut
    queue.enqueue(make_message("after"))  # reconnected and retried, not raised
    # ("frozen" may be held too: sent before the timeout, run once the server woke)
    assert queue.peek("before") is not None and queue.peek("after") is not None
