"""A damaged schedule state in Redis (a hand edit, a partial restore) stops nothing: the other
schedules read as stored, the damaged one reads as a placeholder (no last tick: it goes on
as a new schedule) logged once with its text, and the next compare-and-set from it replaces
the entry — once, however many schedulers read it. Before, one bad value made
``schedule_states()`` raise, so no schedule fired on any worker."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis
from redis_helpers import settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.models import ScheduleState
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
        good = ScheduleState("good", last_tick=100.0, last_run=100.0, fired=3,
                             updated_at=100.0)
        assert first.advance_schedule(None, good)
        assert first.advance_schedule(None, ScheduleState("other", last_tick=100.0,
                                                          updated_at=100.0))
        damage(client, first.store.prefix)

        with caplog.at_level(logging.ERROR, logger="nuvom.scheduler"):
            states = first.schedule_states()
            again = second.schedule_states()  # another worker's scheduler reads it too
        assert states["good"] == good, "the healthy entry reads as stored"
        placeholder = states["other"]
        assert placeholder.last_tick is None and placeholder.unreadable is not None
        assert problem in placeholder.unreadable.problem
        assert again["other"] == placeholder
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "each damaged entry is logged once per process"
        assert "'other'" in errors[0] and first.store.prefix + "sched" in errors[0]
        assert problem in errors[0] and quoted in errors[0]

        new = ScheduleState("other", last_tick=200.0, fired=1, updated_at=200.0)
        assert first.advance_schedule(placeholder, new), "the damaged entry is replaced"
        assert not second.advance_schedule(
            again["other"], ScheduleState("other", last_tick=200.0, updated_at=201.0)), \
            "a second scheduler's write from the same read is refused (one tick, once)"
        assert second.schedule_states() == {"good": good, "other": new}
        assert first.advance_schedule(new, ScheduleState("other", last_tick=300.0,
                                                         updated_at=300.0))
    finally:
        first.close()
        second.close()
