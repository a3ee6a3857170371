"""Claiming ahead (``prefetch``): how many jobs a worker claims beyond its idle threads.

The pace rule is what keeps long jobs from being held back from other workers, so it is
checked at its edges; the drain it speeds up is measured by ``benchmarks/``, not here.
"""

from __future__ import annotations

import threading

from nuvom_kernel.worker.slots import Slots


def slots_at(pace: float | None, *, workers: int = 4, prefetch: int = 16,
             ahead_ok: bool = True) -> Slots:
    slots = Slots(workers, batch_size=16, prefetch=prefetch, ahead_ok=ahead_ok)
    slots.pace = pace
    return slots


def test_claims_ahead_only_while_jobs_are_short():
    assert slots_at(None).ahead() == 0, "nothing ahead before a job has run"
    assert slots_at(0.010).ahead() == 16  # 20 by the pace, capped by prefetch
    assert slots_at(0.010, prefetch=5).ahead() == 5
    assert slots_at(0.100).ahead() == 2  # 4 threads x 50 ms of work
    assert slots_at(0.200).ahead() == 1
    assert slots_at(0.250).ahead() == 0
    assert slots_at(30.0).ahead() == 0


def test_prefetch_zero_and_the_asyncio_pool_claim_only_for_idle_slots():
    assert slots_at(0.001, prefetch=0).ahead() == 0
    assert slots_at(0.001, ahead_ok=False).ahead() == 0


def test_room_counts_idle_slots_plus_ahead_and_the_pace_follows_recent_jobs():
    slots = slots_at(None, workers=2)
    stopping = threading.Event()
    slots.freed()
    slots.freed()  # two idle executors
    assert slots.wait_for_room(stopping) == 2
    slots.claimed([object()] * 2)  # type: ignore[list-item]
    slots.freed(0.001)  # a 1 ms job: 2 threads x 50 ms allows 16 (the cap) ahead
    assert slots.wait_for_room(stopping) == 16
    for _ in range(40):  # jobs got long: the moving average follows, claiming ahead stops
        slots.freed(1.0)
    slots.claimed([object()] * (slots.free - 1))  # type: ignore[list-item]
    assert slots.ahead() == 0 and slots.wait_for_room(stopping) == 1
