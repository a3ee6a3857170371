"""Helpers shared by the Redis plugin's tests (a module of its own, not ``conftest``, so the
kernel's and other plugins' test folders can run in the same session)."""

from __future__ import annotations

import os

import redis

URL = os.environ.get("NUVOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "nuvom-test"


def settings(**extra: object) -> dict[str, object]:
    return {"url": URL, "key_prefix": PREFIX, **extra}


def forget(namespace: str) -> None:
    """Delete a test namespace's keys (SCAN is fine here: tests only, never a hot path)."""
    client = redis.Redis.from_url(URL)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}:{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()
