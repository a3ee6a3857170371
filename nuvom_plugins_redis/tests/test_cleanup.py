"""Test namespaces (``nuvom-test-…``) are deleted when the process that created them exits;
other namespaces, and test namespaces another process created, are left alone."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis
from redis_helpers import PREFIX, URL, forget

#: A child process: build a queue and a result backend in namespace argv[1], store a job and
#: a record (keys under ``<prefix>:<namespace>:``), then exit normally.
_CHILD = """
import sys
from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import make_message
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend
context = BackendContext(visibility_timeout_secs=30.0, namespace=sys.argv[1])
settings = {"url": sys.argv[2], "key_prefix": sys.argv[3]}
queue = RedisJobQueue.from_settings(settings, context)
results = RedisResultBackend.from_settings(settings, context)
assert queue.push([make_message()]) == [True]
assert queue.qsize() == 1
queue.close()
results.close()
"""


def _run_child(namespace: str) -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD, namespace, URL, PREFIX],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _keys(namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(URL)
    try:
        return list(client.scan_iter(match=f"{PREFIX}:{namespace}:*", count=1000))
    finally:
        client.close()


@pytest.fixture
def namespace_name() -> str:
    return uuid.uuid4().hex[:12]


def test_a_test_namespace_is_deleted_when_its_creator_exits(namespace_name: str) -> None:
    namespace = f"nuvom-test-{namespace_name}"
    try:
        _run_child(namespace)
        assert _keys(namespace) == [], "the creator's exit leaves none of its keys behind"
    finally:
        forget(namespace)


def test_a_test_namespace_another_process_created_is_kept(namespace_name: str) -> None:
    namespace = f"nuvom-test-{namespace_name}"
    client = redis.Redis.from_url(URL)
    try:
        client.set(f"{PREFIX}:{namespace}:epoch", "made-by-the-test")  # the creator
        _run_child(namespace)
        keys = _keys(namespace)
        assert len(keys) > 1, f"a process that only used the namespace deleted it: {keys}"
    finally:
        client.close()
        forget(namespace)


def test_other_namespaces_are_never_deleted(namespace_name: str) -> None:
    namespace = f"app-{namespace_name}"
    try:
        _run_child(namespace)
        assert any(k.endswith(b":epoch") for k in _keys(namespace)) and \
            len(_keys(namespace)) > 1, "an app's keys must outlive its processes"
    finally:
        forget(namespace)
