"""What a user is told when the server is out of memory or the URL is wrong: one error that
says what happened, where (the setting, the URL with its password masked) and what to do,
from ``.map()``/``.delay()`` and as one line from ``nuvom runworker``. Each server whose
config matters (maxmemory, databases, a password) is a throwaway ``redis-server``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import URL, settings
from redis_server import RedisServer

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue, RedisUnavailableError

NAMESPACE = "errors"
#: ~1 MB used at start; each 1,000-job chunk of 2 kB bodies adds ~2.5 MB, so the server
#: stores a chunk or two of a 4,000-job ``.map()`` and then refuses with OOM.
MAXMEMORY = ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path, "127.0.0.1", *MAXMEMORY).start()
    yield srv
    srv.stop()


def _queue(url: str, namespace: str = NAMESPACE) -> RedisJobQueue:
    return RedisJobQueue.from_settings(  # type: ignore[no-any-return]
        settings(url=url), BackendContext(visibility_timeout_secs=30.0, namespace=namespace))


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    return {**env, "NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
            "NUVOM_NAMESPACE": NAMESPACE, "NUVOM_PLUGINS__REDIS__URL": url,
            "NUVOM_PLUGINS__REDIS__KEY_PREFIX": settings()["key_prefix"]}  # type: ignore[dict-item]


def _enqueued(message: str) -> int:
    found = re.search(r"(\d+) job\(s\) of this batch were enqueued before the failure",
                      message)
    assert found, f"the error does not say how many jobs were stored: {message}"
    return int(found.group(1))


def test_push_out_of_memory_says_so_and_how_many_were_stored(
        small_server: RedisServer) -> None:
    queue = _queue(small_server.url)
    batch = [make_message(body=b"x" * 2000) for _ in range(4000)]
    with pytest.raises(RedisUnavailableError) as info:
        queue.push(batch)
    text = str(info.value)
    assert "out of memory" in text and "maxmemory" in text, text
    stored = _enqueued(text)
    assert stored > 0 and stored % 1000 == 0, text  # whole chunks: the test's premise
    assert queue.qsize() == stored, "the count named is what the server holds"
    with pytest.raises(RedisUnavailableError, match="out of memory"):
        queue.push([make_message()])  # one job (.delay()): said the same way
    queue.close()


def test_map_and_delay_out_of_memory_reach_the_user_as_the_plugins_error(
        small_server: RedisServer, tmp_path: Path) -> None:
    """Through the kernel's dispatcher, which wraps a raw backend error in its generic
    'check its storage' text: the plugin's own message must be what the user sees."""
    (tmp_path / "tasks_mod.py").write_text(
        "from nuvom_kernel import task\n@task\ndef echo(x):\n    return x\n")
    code = ("import tasks_mod\n"
            "for call in (lambda: tasks_mod.echo.map([('x' * 2000,)] * 4000),\n"
            "             lambda: tasks_mod.echo.delay('x')):\n"
            "    try:\n        call()\n"
            "    except Exception as exc:\n"
            "        print('ERROR', type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                         env=_env(small_server.url), text=True, capture_output=True,
                         timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 2, out.stdout + out.stderr
    mapped, delayed = lines
    assert mapped.startswith("ERROR RedisUnavailableError") and "out of memory" in mapped, \
        mapped
    assert "Check its storage" not in mapped, mapped
    full = _queue(small_server.url)  # a store starts on a full server (a worker must)
    assert _enqueued(mapped) == full.qsize() > 0, mapped
    full.close()
    assert delayed.startswith("ERROR RedisUnavailableError"), delayed
    assert "out of memory" in delayed and "maxmemory" in delayed, delayed


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://:s3cret@127.0.0.1:notaport/0", "notaport"),
    ("redis://:s3cret@127.0.0.1:6379/abc", "/abc is not a non-negative integer"),
    ("redis://:s3cret@127.0.0.1:6379/0/1", "/0/1 is not a non-negative integer"),
    ("redis://:s3cret@127.0.0.1:6379/0?db=-1", "-1 is not a non-negative integer"),
    ("redis://:s3cret@127.0.0.1:6379/0?colour=red", "colour"),
    ("redis://:s3cret@[::1/0", "Invalid IPv6 URL"),
    ("http://127.0.0.1:6379/0", "redis://, rediss:// or unix://"),
])
def test_a_url_redis_cannot_use_is_a_config_error_naming_the_setting(
        url: str, problem: str, namespace: str) -> None:
    """``namespace`` (deleted afterwards): without the checks some of these connect."""
    with pytest.raises(ConfigError) as info:
        _queue(url, namespace)
    text = str(info.value)
    assert "[plugins.redis] url" in text and "NUVOM_PLUGINS__REDIS__URL" in text, text
    assert problem in text, text
    assert "such as redis://127.0.0.1:6379/0" in text, text
    assert "s3cret" not in text, text


def test_valid_urls_still_pass(namespace: str) -> None:
    """The checks refuse only what redis-py cannot use or would misread (the shared
    server; ``namespace`` is the fixture's, whose keys it deletes)."""
    urls = [URL, URL + "?health_check_interval=3"]
    if re.search(r"/[0-9]+$", URL):
        urls.append(URL + "/")  # redis-py reads /0/ as database 0 too
    for url in urls:
        queue = _queue(url, namespace)
        assert queue.qsize() == 0, url
        queue.close()


def test_a_unix_socket_url_serves_jobs(tmp_path: Path) -> None:
    """``unix:///path?db=N`` is a documented ``url``, and every one failed to build: the
    plugin passed ``socket_keepalive``, which redis-py's unix connection refuses, and the
    error blamed the user's settings."""
    sock = tmp_path / "r.sock"
    srv = RedisServer(tmp_path, "127.0.0.1", "--unixsocket", str(sock)).start()
    try:
        queue = _queue(f"unix://{sock}?db=3")
        message = make_message()
        assert queue.push([message]) == [True]
        [lease] = queue.claim(1)
        assert lease.message.id == message.id
        queue.ack(lease)
        assert queue.qsize() == 0
        assert srv.client(db=3).dbsize() > 0, "the jobs went over the socket, to db 3"
        queue.close()
    finally:
        srv.stop()


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A password (to check it stays masked) and 2 databases (to ask for one past them)."""
    srv = RedisServer(tmp_path, "127.0.0.1", "--requirepass", "s3cret", "--databases",
                      "2").start()
    yield srv
    srv.stop()


def test_database_out_of_range_names_the_url_setting(locked_server: RedisServer) -> None:
    with pytest.raises(RedisUnavailableError) as info:
        _queue(f"redis://:s3cret@127.0.0.1:{locked_server.port}/5")
    text = str(info.value)
    assert "has no database 5" in text and "[plugins.redis] url" in text, text
    assert "databases" in text and "s3cret" not in text, text


@pytest.mark.parametrize(("db", "expected", "status"), [
    ("notaport/0", "is invalid", 2),  # a configuration error: status 2, as a usage error
    ("PORT/5", "has no database 5", 1),  # the server refused: a runtime error
])
def test_runworker_prints_one_line_for_a_bad_url(
        locked_server: RedisServer, tmp_path: Path, db: str, expected: str,
        status: int) -> None:
    url = f"redis://:s3cret@127.0.0.1:{db.replace('PORT', str(locked_server.port))}"
    worker = subprocess.run([sys.executable, "-m", "nuvom_kernel", "runworker"],
                            cwd=tmp_path, env=_env(url), text=True, capture_output=True,
                            timeout=60)
    output = worker.stdout + worker.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert worker.returncode == status, output
    assert len(lines) == 1 and expected in lines[0], lines
    assert "NUVOM_PLUGINS__REDIS__URL" in lines[0] and "s3cret" not in output, lines
