"""The Redis chaos profile: a key prefix of its own per project folder on the test server
(``NUVOM_TEST_REDIS_URL``, default the machine's 127.0.0.1:6379), so no scenario sees
another's jobs or records (every prefix used is deleted when the run exits), and the
corruptor of the ``corrupt`` scenario."""

from __future__ import annotations

import atexit
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import Corruption
    from .project import Project

__all__ = ["corrupt_redis", "redis_settings"]

URL = os.environ.get("NUVOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_prefixes: set[str] = set()


def redis_settings(root: Path) -> dict[str, Any]:
    """``[plugins.redis]`` for the chaos project in ``root``."""
    prefix = "nuvom-chaos-" + hashlib.sha1(str(root).encode()).hexdigest()[:16]
    if not _prefixes:
        atexit.register(_delete_prefixes, os.getpid())
    _prefixes.add(prefix)
    return {"url": URL, "key_prefix": prefix}


def _delete_prefixes(owner: int) -> None:
    """Delete every key of the prefixes this run used (the run's process only: a forked
    child inherits the handler but not the projects)."""
    if os.getpid() != owner:
        return
    from nuvom_plugins_redis.connection import delete_prefix

    for prefix in sorted(_prefixes):
        delete_prefix(URL, f"{prefix}:")


def corrupt_redis(project: Project, victim: str) -> Corruption:
    """What a hand edit or an eviction can do to the keys: a real job's body cut in half
    (it must end FAILED), and a ready entry whose job hash is gone (the claim drops it:
    nothing to run, nothing to quarantine)."""
    import redis

    from .backends import Corruption

    queue = project.kernel().queue
    prefix: str = queue.store.prefix  # type: ignore[attr-defined]
    done = Corruption()
    client = redis.Redis.from_url(URL)
    try:
        key = f"{prefix}j:{victim}"
        body = client.hget(key, "b")
        if body is not None and client.hget(key, "s") == b"r":
            client.hset(key, "b", body[: len(body) // 2])
            done.failed.append(victim)
        client.zadd(f"{prefix}q:default:ready", {"0" * 29 + "corrupt-gone-hash": 0})
    finally:
        client.close()
    done.notes.append("1 truncated payload, 1 ready entry without its job hash")
    return done
