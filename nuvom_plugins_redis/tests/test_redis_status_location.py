"""``nuvom status`` names the Redis server and the key prefix it read (the namespace is part
of it), and never the password: a mistyped URL or namespace showed an empty deployment that
looked healthy. The shared server for the first; a throwaway one with a password for the
second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import PREFIX, URL
from redis_server import RedisServer

from nuvom_kernel.config import mask_secret

NUVOM = Path(sys.executable).parent / "nuvom"
PASSWORD = "st4tus-s3cret"


def _status(cwd: Path, url: str, namespace: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update({"NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
                "NUVOM_NAMESPACE": namespace, "NUVOM_PLUGINS__REDIS__URL": url,
                "NUVOM_PLUGINS__REDIS__KEY_PREFIX": PREFIX})
    return subprocess.run([str(NUVOM), "status", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_status_names_the_server_and_the_key_prefix(tmp_path: Path, namespace: str) -> None:
    expected = f"{mask_secret('url', URL)} keys {PREFIX}:{namespace}:*"
    done = _status(tmp_path, URL, namespace, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["queue_location"], data["result_location"]) == (expected, expected)
    text = _status(tmp_path, URL, namespace)
    assert text.returncode == 0, text.stderr
    assert f"\nstore (queue and results): {expected}\n" in text.stdout, text.stdout


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path, "127.0.0.1", "--requirepass", PASSWORD).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(("form", "masked"), [
    ("redis://:{pw}@127.0.0.1:{port}/0", "redis://:***@127.0.0.1:{port}/0"),
    ("redis://default:{pw}@127.0.0.1:{port}/0", "redis://default:***@127.0.0.1:{port}/0"),
    ("redis://127.0.0.1:{port}/0?password={pw}", "redis://127.0.0.1:{port}/0?password=***"),
])
def test_status_never_prints_the_password(locked_server: RedisServer, tmp_path: Path,
                                          form: str, masked: str) -> None:
    url = form.format(pw=PASSWORD, port=locked_server.port)
    where = f"{masked.format(port=locked_server.port)} keys {PREFIX}:located:*"
    text = _status(tmp_path, url, "located")
    assert text.returncode == 0, text.stderr  # it did reach the server with the password
    assert f"\nstore (queue and results): {where}\n" in text.stdout, text.stdout
    as_json = _status(tmp_path, url, "located", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["queue_location"] == where
    for done in (text, as_json):
        assert PASSWORD not in done.stdout + done.stderr
