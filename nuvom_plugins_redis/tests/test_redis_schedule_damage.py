"""A damaged schedule state in Redis (a hand edit, a partial restore) stops nothing: see
:mod:`nuvom_kernel.testing.contracts.schedule_damage`. Before, one bad value made
``schedule_states()`` raise, so no schedule fired on any worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from redis_helpers import settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import check_damaged_entry
from nuvom_plugins_redis import RedisResultBackend

Damage = Callable[[redis.Redis, str], None]

DAMAGE: list[tuple[Damage, str, str]] = [
    # (how entry 'other' is damaged, what the log says is wrong, the text it quotes)
    (lambda c, p: c.hset(p + "sched", "other", "{not json"), "not JSON", "{not json"),
    (lambda c, p: c.hset(p + "sched", "other", '"text"'),
     "a JSON object was expected, found a string", '"text"'),
    (lambda c, p: c.hset(p + "sched", "other", b"\xff"), "not JSON", "b'\\xff'"),
    (lambda c, p: c.hset(p + "sched", "other", '{"name": "other", "missed": 1.5, '
                                                '"updated_at": 100.0}'),
     "its missed is a number (1.5), not an integer", '"missed": 1.5'),
    (lambda c, p: c.hset(p + "sched:v", "other", "soon"),
     "its version (updated_at, kept beside the state) is a string", '"name": "other"'),
    (lambda c, p: c.hdel(p + "sched:v", "other"),
     "its version (updated_at, kept beside the state) is missing", '"name": "other"'),
    (lambda c, p: c.hdel(p + "sched", "other"), "empty: no state is stored", "''"),
]


@pytest.mark.parametrize(("damage", "problem", "quoted"), DAMAGE)
def test_a_damaged_entry_is_a_placeholder_the_next_write_replaces_once(
        context: BackendContext, client: redis.Redis, damage: Damage, problem: str,
        quoted: str, caplog: pytest.LogCaptureFixture) -> None:
    first = RedisResultBackend.from_settings(settings(), context)
    second = RedisResultBackend.from_settings(settings(), context)
    try:
        check_damaged_entry(first, second, lambda: damage(client, first.store.prefix),
                            problem=problem, quoted=quoted,
                            where=first.store.prefix + "sched", caplog=caplog)
    finally:
        first.close()
        second.close()
