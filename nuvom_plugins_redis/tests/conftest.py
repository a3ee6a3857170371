"""Shared fixtures: the real Redis server (``NUVOM_TEST_REDIS_URL``, default the machine's
127.0.0.1:6379), a fresh namespace per test, and its keys deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_helpers import URL, forget, settings

from nuvom_kernel.backends import BackendContext
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A plain client of the test server, to look at (or damage) what the backends store."""
    c = redis.Redis.from_url(URL)
    yield c
    c.close()


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"t-{uuid.uuid4().hex[:12]}"
    yield ns
    forget(ns)


@pytest.fixture
def context(namespace: str) -> BackendContext:
    return BackendContext(visibility_timeout_secs=30.0, namespace=namespace)


@pytest.fixture
def queue(context: BackendContext) -> Iterator[RedisJobQueue]:
    q = RedisJobQueue.from_settings(settings(), context)
    yield q
    q.close()


@pytest.fixture
def results(context: BackendContext) -> Iterator[RedisResultBackend]:
    r = RedisResultBackend.from_settings(settings(), context)
    yield r
    r.close()
