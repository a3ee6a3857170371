"""Helpers shared by the Redis plugin's tests (a module of its own, not ``conftest``, so the
kernel's and other plugins' test folders can run in the same session)."""

from __future__ import annotations

import os

from nuvom_plugins_redis.connection import delete_prefix

URL = os.environ.get("NUVOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "nuvom-test"


def settings(**extra: object) -> dict[str, object]:
    return {"url": URL, "key_prefix": PREFIX, **extra}


def forget(namespace: str) -> None:
    """Delete a test namespace's keys."""
    delete_prefix(URL, f"{PREFIX}:{namespace}:")
