"""Claiming ahead (``prefetch``): how many jobs a worker claims beyond its idle threads.

The pace rule is what keeps long jobs from being held back from other workers, so it is
checked at its edges; the drain it speeds up is measured by ``benchmarks/``, not here. When
the pace was wrong, jobs claimed ahead are given back for other workers. The settler's
linger, which lets a drain's outcomes settle in batches bigger than its claims, is checked
here by the same rule: when it waits, and that what arrives meanwhile joins the batch.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from nuvom_kernel import JobStatus, Worker, task
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobRecord, Lease, Message, Settlement, TaskOptions
from nuvom_kernel.task import Task
from nuvom_kernel.worker import settle as settle_module
from nuvom_kernel.worker.settle import LINGER_SECS, Running, Settler, outcomes_soon
from nuvom_kernel.worker.slots import Slots
from tests.helpers import wait_until


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


def test_claims_ahead_of_busy_executors_wait_for_half_the_window():
    """An idle executor is served at once; ahead of busy ones the dispatcher waits until
    half the window is free, so a drain claims in batches, not one job per job ended."""
    slots = slots_at(0.001, workers=2)
    slots.freed()
    slots.freed()
    assert slots.wait_for_room(threading.Event()) == 16
    slots.claimed([object()] * 16)  # type: ignore[list-item]
    for _ in range(6):  # six of them ran: 2 + 6 free of the 16 ahead, under half
        assert not slots._room()
        slots.freed(0.001)
    assert slots._room() and slots.wait_for_room(threading.Event()) == 8
    idle = slots_at(None, workers=2)  # no pace yet, nothing ahead: an idle executor only
    assert not idle._room()
    idle.freed()
    assert idle._room()


def lease(job_id: str) -> Lease:
    return Lease(message=Message(id=job_id, body=b"{}"), token=f"t-{job_id}", deliveries=1,
                 expires_at=time.time() + 30)


def test_overdue_leases_are_taken_once_and_executors_skip_them():
    slots = slots_at(0.001, workers=1)
    now = time.monotonic()
    slots.hand_over(lease("old"), now - 5.0)
    slots.hand_over(lease("new"), now)
    taken, next_due = slots.overdue(1.0)
    assert [x.id for x in taken] == ["old"]
    assert now + 0.9 < next_due <= now + 1.0 + 0.1
    assert slots.pace == 1.0 and slots.ahead() == 0, "the pace was wrong: stop claiming ahead"
    many = slots_at(0.001, workers=40)
    many.hand_over(lease("x"), now - 5.0)
    assert many.overdue(1.0)[0] and many.ahead() == 0, "whatever the number of threads"
    assert slots.overdue(1.0)[0] == [], "a lease is given back once"
    item = slots.take()
    assert item is not None and item[0].id == "new", "the given-back lease is skipped"
    slots.close(1)
    assert slots.take() is None


def long_and_short_tasks() -> tuple[threading.Event, list[int], Task[[], None],
                                    Task[[int], int]]:
    """A long task that runs until ``go_on`` is set, and a short one that notes its runs."""
    go_on = threading.Event()
    ran: list[int] = []

    @task
    def long_job() -> None:
        go_on.wait(60)

    @task
    def short_job(i: int) -> int:
        ran.append(i)
        return i

    return go_on, ran, long_job, short_job


def test_jobs_claimed_ahead_go_back_when_every_thread_is_stuck(kernel: Kernel):
    """A worker whose only thread is stuck in a long job gives back the short jobs it claimed
    ahead of it, so another worker runs them (each once) while the long one still runs."""
    go_on, ran, long_job, short_job = long_and_short_tasks()
    stuck = long_job.delay()
    shorts = short_job.map(range(10))
    first = Worker(kernel, workers=1, prefetch=16, scheduler=False, poll_timeout_secs=0.05)
    first.slots.pace = 0.001  # as after a run of 1 ms jobs: claim 16 ahead
    second = Worker(kernel, workers=1, prefetch=0, scheduler=False, poll_timeout_secs=0.05)
    first.start()
    try:
        wait_until(lambda: first.busy_slots == 1 and (len(first.slots.waiting) == 10
                                                      or (first.slots.pace or 0) >= 1.0),
                   timeout=20, what="the first worker to claim all ten ahead of the long job")
        second.start()
        wait_until(lambda: all(j.refresh().status is JobStatus.SUCCEEDED for j in shorts),
                   timeout=20, what="the second worker to run the given-back jobs")
        assert not go_on.is_set() and stuck.refresh().status is JobStatus.RUNNING
        go_on.set()
        wait_until(lambda: stuck.refresh().status is JobStatus.SUCCEEDED, timeout=20,
                   what="the long job")
    finally:
        go_on.set()
        for worker in (first, second):
            worker.stop()
            worker.join()
    assert sorted(ran) == list(range(10)), "each short job ran exactly once"
    assert all(j.attempts == 1 for j in shorts)


def test_a_job_given_back_is_not_claimed_again_by_the_claim_waiting_meanwhile(
        kernel: Kernel, caplog: pytest.LogCaptureFixture):
    """The dispatcher waits for work with the room it had (16 ahead at a short pace); the
    give-back left none ahead, but that waiting claim took the job at once, and it waited
    its second again before it was given back once more (a tick ran 2 s late)."""
    go_on, ran, long_job, short_job = long_and_short_tasks()
    stuck = long_job.delay()
    worker = Worker(kernel, workers=1, prefetch=16, scheduler=False, poll_timeout_secs=5.0)
    worker.slots.pace = 0.001  # as after a run of 1 ms jobs: claim 16 ahead
    gave_back = "gave back 1 claimed job(s) that waited over"
    with caplog.at_level(logging.INFO, logger="nuvom.worker"):
        worker.start()
        try:
            wait_until(lambda: stuck.refresh().status is JobStatus.RUNNING
                       and worker.busy_slots, timeout=20, what="the long job to start")
            short = short_job.delay(1)
            wait_until(lambda: gave_back in caplog.text, timeout=20,
                       what="the short job claimed ahead, then given back")
            # past the next give-back round: a job held again would wait in the hand-off
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                assert not worker.slots.waiting, "held again by the worker that gave it back"
                time.sleep(0.01)
            go_on.set()
            assert short.get(timeout=20) == 1
        finally:
            go_on.set()
            worker.stop()
            worker.join()
    assert caplog.text.count(gave_back) == 1, caplog.text
    assert ran == [1]


def test_a_claim_keeps_what_it_got_when_the_pace_only_slowed_meanwhile():
    """A job slower than the pace ending during a claim shrinks the window by a few; the
    claim's leases run within milliseconds, and releasing them cost a write and a claim
    each (7.8 % of a file-backend drain's claims, lognormal 10 ms jobs)."""
    slots = slots_at(0.010)  # 4 threads, 20 ahead: capped at 16
    wanted = slots.wait_for_room(threading.Event())
    slots.pace = 0.030  # a slow job's end moved the pace during the claim: 6 ahead now
    assert slots.claimed([object()] * wanted, wanted) == 0  # type: ignore[list-item]
    slots.pace = 10.0  # a give-back (overdue) leaves nothing ahead: the extra go back
    assert slots.claimed([object()] * 2, 2) == 2  # type: ignore[list-item]


def test_a_stop_releases_the_jobs_claimed_ahead_unrun(kernel: Kernel):
    go_on, ran, long_job, short_job = long_and_short_tasks()
    long_job.delay()
    shorts = short_job.map(range(5))
    worker = Worker(kernel, workers=1, prefetch=16, scheduler=False, poll_timeout_secs=0.05)
    worker.slots.pace = 0.001
    worker.start()
    try:
        wait_until(lambda: worker.busy_slots == 1 and len(worker.slots.waiting) == 5,
                   timeout=20, what="five jobs claimed ahead of the long one")
        worker.stop()
        go_on.set()
        assert worker.join() == 0
    finally:
        go_on.set()
    assert ran == [], "a job claimed ahead ran after the stop"
    assert [kernel.queue.peek_state(j.id) for j in shorts] == [JobStatus.QUEUED] * 5
    assert worker.slots.free == 1 and not worker.slots.waiting


# --- the settler's linger: outcomes of a drain settled in batches bigger than its claims ---


def settlements_of(kernel: Kernel, n: int) -> list[Settlement]:
    """``n`` real claimed leases of the memory queue, each with a SUCCEEDED record."""
    now = time.time()
    kernel.queue.push([Message(id=f"linger-{i}", body=b"{}", task="t", created_at=now + i)
                       for i in range(n)])
    leases = kernel.queue.claim(n)
    assert len(leases) == n
    return [Settlement(lease, JobRecord(job_id=lease.id, task="t",
                                        status=JobStatus.SUCCEEDED, attempts=1,
                                        token=lease.token)) for lease in leases]


class BatchSizes(Settler):
    """The real settler, recording the size of each batch it settles."""

    sizes: list[int]

    def settle(self, batch: Sequence[Settlement], patiently: bool = False) -> list[bool]:
        self.sizes.append(len(batch))
        return super().settle(batch, patiently)


def started_settler(kernel: Kernel, outcomes_soon: Callable[[], bool]) -> BatchSizes:
    settler = BatchSizes(kernel, kernel.queue, kernel.results, "test:1",
                         lambda settlement, landed: None, outcomes_soon)
    settler.sizes = []
    settler.start()
    return settler


def waits_of(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The settler's linger waits, recorded (and not slept)."""
    waits: list[float] = []
    monkeypatch.setattr(settle_module, "_linger", waits.append)
    return waits


def test_a_small_batch_waits_for_outcomes_due_soon(make_kernel: Callable[..., Kernel],
                                                    monkeypatch: pytest.MonkeyPatch):
    """While more outcomes are due, the settler waits once, then settles what arrived
    meanwhile (here: during its question) with the first, in one batch."""
    kernel = make_kernel("memory")
    first, *rest = settlements_of(kernel, 3)
    waits = waits_of(monkeypatch)

    def outcomes_soon() -> bool:
        if len(rest) == 2:  # the other executors' outcomes arrive during the wait
            settler.submit(rest.pop())
            settler.submit(rest.pop())
        return True

    settler = started_settler(kernel, outcomes_soon)
    settler.submit(first)
    wait_until(lambda: sum(settler.sizes) == 3, what="three outcomes settled")
    settler.stop(5)
    assert settler.sizes == [3] and waits == [LINGER_SECS]
    assert kernel.queue.qsize() == 0 and all(
        kernel.results.get(f"linger-{i}").status is JobStatus.SUCCEEDED for i in range(3))


def test_a_lone_outcome_is_settled_without_a_wait(make_kernel: Callable[..., Kernel],
                                                  monkeypatch: pytest.MonkeyPatch):
    kernel = make_kernel("memory")
    first, second = settlements_of(kernel, 2)
    waits = waits_of(monkeypatch)

    def broken() -> bool:
        raise RuntimeError("a bug in the worker's answer")

    settler = started_settler(kernel, lambda: False)
    settler.submit(first)
    wait_until(lambda: settler.sizes == [1], what="the first outcome settled on its own")
    settler.outcomes_soon = broken  # logged, taken as no: the thread and its batch survive
    settler.submit(second)
    wait_until(lambda: settler.sizes == [1, 1], what="the second outcome settled")
    settler.stop(5)
    assert waits == []


def late_settler(kernel: Kernel, inbox: stdqueue.SimpleQueue[Settlement | None]
                 ) -> BatchSizes:
    settler = BatchSizes(kernel, kernel.queue, kernel.results, "test:1",
                         lambda settlement, landed: None, lambda: False)
    settler.sizes = []
    settler._inbox = inbox
    settler.start()
    return settler


def test_an_outcome_submitted_as_the_settler_stops_is_settled(
        make_kernel: Callable[..., Kernel]):
    """An executor's ``submit`` that saw the thread running just before ``stop`` puts its
    outcome behind the end marker: the thread ends without it, so ``stop`` settles it (it
    used to stay in the inbox, its job run again once the lease expired). One submitted
    after the stop is settled by its caller."""
    kernel = make_kernel("memory")
    first, late, after = settlements_of(kernel, 3)

    class LateInbox(stdqueue.SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: Settlement | None, block: bool = True,
                timeout: float | None = None) -> None:
            super().put(item)
            if item is None:  # the race: the outcome lands just after the end marker
                super().put(late)

    settler = late_settler(kernel, LateInbox())
    settler.submit(first)
    wait_until(lambda: settler.sizes == [1], what="the first outcome settled")
    settler.stop(5)
    assert settler.sizes == [1, 1]
    settler.submit(after)
    assert settler.sizes == [1, 1, 1]
    assert all(kernel.results.get(f"linger-{i}").status is JobStatus.SUCCEEDED
               for i in range(3))
    assert kernel.queue.qsize() == 0


def test_an_outcome_put_after_the_whole_stop_is_settled_by_its_submitter(
        make_kernel: Callable[..., Kernel]):
    """``submit`` read "running", then ``stop`` ran to its end (the thread gone, the inbox
    drained) before the outcome was put: ``submit`` sees the stop and settles it."""
    kernel = make_kernel("memory")
    late, = settlements_of(kernel, 1)

    class StopFirst(stdqueue.SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: Settlement | None, block: bool = True,
                timeout: float | None = None) -> None:
            if item is late:  # the whole stop runs between submit's check and its put
                settler.stop(5)
            super().put(item)

    settler = late_settler(kernel, StopFirst())
    settler.submit(late)
    assert settler.sizes == [1]
    assert kernel.results.get("linger-0").status is JobStatus.SUCCEEDED
    assert kernel.queue.qsize() == 0


def running_since(started_mono: float, decided: bool = False) -> Running:
    envelope = Envelope.for_call("app.t", None, TaskOptions(), (), {})
    lease = Lease(Message(id=envelope.id, body=b"{}"), "token", 1, time.time() + 30)
    return Running(envelope.job(), lease, envelope, threading.current_thread(), time.time(),
                   started_mono, None, started_mono, decided=decided)


def test_outcomes_are_due_soon_only_in_a_drain_of_short_jobs():
    short, now = LINGER_SECS / 10, time.monotonic()
    assert not outcomes_soon(None, True, {}), "no job has run yet: no pace"
    assert not outcomes_soon(LINGER_SECS * 2, True, {}), "jobs slower than the wait"
    assert outcomes_soon(short, True, {}), "short jobs, and the last claim was full"
    assert not outcomes_soon(short, False, {}), "short jobs in a trickle, none running"
    old_and_done = {"old": running_since(now - 5.0), "done": running_since(now, decided=True)}
    assert not outcomes_soon(short, False, old_and_done), \
        "a job of seconds is not due soon, a done one is done"
    assert outcomes_soon(short, False, {**old_and_done, "new": running_since(now)}), \
        "a job that just started beside short ones"


def test_a_claim_that_got_all_it_asked_for_is_a_backlog():
    slots = slots_at(0.001)
    slots.claimed([object()] * 16, 16)  # type: ignore[list-item]
    assert slots.backlog
    slots.claimed([object()] * 3, 16)  # type: ignore[list-item]
    assert not slots.backlog, "fewer than asked: the queue ran dry"
    slots.claimed([object()], 1)  # type: ignore[list-item]
    assert not slots.backlog, "one for one idle thread says nothing of a backlog"


def failing_puts(kernel: Kernel, failures: float) -> list[float]:
    """Make the kernel's (real) result store fail its first ``failures`` writes, as a
    server does while it restarts; the times of every write asked for."""
    calls: list[float] = []
    put_many = kernel.results.put_many

    def flaky(records: Sequence[JobRecord]) -> list[bool]:
        calls.append(time.time())
        if len(calls) <= failures:
            raise ConnectionError("the store is restarting")
        return put_many(records)

    kernel.results.put_many = flaky  # type: ignore[method-assign]
    return calls


def test_a_store_away_for_a_moment_gets_the_same_outcomes_again(
        make_kernel: Callable[..., Kernel]):
    """Outcomes whose store failed were dropped, and their jobs ran again once their
    leases expired (a Redis restart mid-drain). The settler's thread tries the same batch
    again while the leases last; once the store answers, it lands and is acked."""
    kernel = make_kernel("memory", "sqlite")
    batch = settlements_of(kernel, 3)
    calls = failing_puts(kernel, 2)
    settler = BatchSizes(kernel, kernel.queue, kernel.results, "test:1",
                         lambda settlement, landed: None)
    settler.sizes = []
    assert settler.settle(batch, patiently=True) == [True, True, True]
    assert len(calls) == 3
    assert all(kernel.results.get(f"linger-{i}").status is JobStatus.SUCCEEDED
               for i in range(3))
    assert kernel.queue.qsize() == 0 and kernel.queue.stats().in_flight == 0


def test_a_store_still_failing_keeps_the_leases_until_they_are_lost(
        make_kernel: Callable[..., Kernel], caplog: pytest.LogCaptureFixture):
    """Tries go on past the first lease's expiry while the settler can extend the leases (a
    store that takes lease extensions but not records: a full disk), so no job runs again
    meanwhile; they end, the jobs left to run again, once the leases are lost (here another
    worker took the jobs over). A caller settling inline (not the settler's thread) does
    not wait. Before, tries stopped at the first lease's expiry whatever the queue said."""
    kernel = make_kernel("memory", "sqlite", NUVOM_VISIBILITY_TIMEOUT_SECS="1.5")
    batch = settlements_of(kernel, 2)
    expiry = min(item.lease.expires_at for item in batch)
    calls = failing_puts(kernel, float("inf"))
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    assert settler.settle(batch) == [False, False] and len(calls) == 1
    landed: list[list[bool]] = []
    patient = threading.Thread(target=lambda: landed.append(
        settler.settle(batch, patiently=True)), daemon=True)
    patient.start()
    wait_until(lambda: calls[-1] > expiry + 1.0, timeout=20, what="tries past the expiry")
    assert patient.is_alive() and not landed, "gave up while it still held the leases"
    assert kernel.queue.stats().in_flight == 2, "the leases were let go"
    assert not settler.storing.is_set(), "the dispatcher would go on claiming"
    # another worker takes the jobs over: their leases are lost, the tries end
    assert all(kernel.queue.extend_many([item.lease for item in batch], 0))
    assert len(kernel.queue.claim(2)) == 2
    patient.join(20)
    assert landed == [[False, False]]
    assert "trying again" in caplog.text and "could not be recorded" in caplog.text
    assert settler.storing.is_set(), "claims may go on once the batch is given up"


def test_a_stop_while_the_store_never_answers_names_the_jobs(
        make_kernel: Callable[..., Kernel], caplog: pytest.LogCaptureFixture):
    """A host cut off from its store: the settler's call did not return, and the worker
    stopped saying only "outcomes not recorded", naming no job (workers.md says each is
    named)."""
    kernel = make_kernel("memory", "sqlite")
    batch = settlements_of(kernel, 2)
    answer = threading.Event()
    put_many = kernel.results.put_many

    def unanswered(records: Sequence[JobRecord]) -> list[bool]:
        answer.wait(30)  # a store call that does not return (until the test ends it)
        return put_many(records)

    kernel.results.put_many = unanswered  # type: ignore[method-assign]
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    settler.start()
    try:
        settler.submit(batch[0])
        wait_until(lambda: batch[0].lease.id in settler.settling, timeout=10,
                   what="the settle to reach the store")
        settler.submit(batch[1])  # waits behind it
        with caplog.at_level(logging.ERROR, logger="nuvom.worker"):
            assert settler.stop(0.1) is False
        named = [r.getMessage() for r in caplog.records
                 if "could not be recorded before the worker stopped" in r.getMessage()]
        assert len(named) == 1, caplog.text
        assert f"job={batch[0].lease.id}" in named[0] and f"job={batch[1].lease.id}" in \
            named[0], named[0]
    finally:
        answer.set()


def test_an_outcome_of_a_job_cancelled_meanwhile_is_not_said_to_run_again(
        make_kernel: Callable[..., Kernel], caplog: pytest.LogCaptureFixture):
    """A worker cut off past its lease, the job cancelled meanwhile: its late outcome was
    refused with "it runs again where it is claimed next", though the cancel had removed
    its message and it never runs again."""
    from nuvom_kernel.job import Job

    kernel = make_kernel("memory", "memory")
    [item, other] = settlements_of(kernel, 2)
    for lease in (item.lease, other.lease):
        assert kernel.queue.extend(lease, 0)  # the leases lapsed
    assert kernel.cancel(kernel.refresh_job(Job(id=item.lease.id, task="", kernel=kernel)))
    assert kernel.queue.claim(2)[0].id == other.lease.id  # another worker took the other
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    with caplog.at_level(logging.WARNING, logger="nuvom.worker"):
        assert settler.settle([item, other]) == [False, False]
    said = {r.getMessage().split()[0]: r.getMessage() for r in caplog.records}
    assert "the queue no longer holds it (it was cancelled" in said[f"job={item.lease.id}"]
    assert "it runs again where it is claimed next" in said[f"job={other.lease.id}"]


def test_outcomes_are_kept_while_the_queue_cannot_extend_their_leases_either(
        make_kernel: Callable[..., Kernel]):
    """Both stores down past the leases' expiry (the records live apart from the queue):
    the batch was given up at the first expiry, its jobs left to run again and a false
    "lost its lease" logged, because a failed lease check read as a lost lease. The
    outcomes are kept and land once the stores are back (nobody claimed the jobs)."""
    kernel = make_kernel("memory", "sqlite", NUVOM_VISIBILITY_TIMEOUT_SECS="0.6")
    batch = settlements_of(kernel, 2)
    expiry = min(item.lease.expires_at for item in batch)
    down = threading.Event()
    down.set()
    put_many, extend_many = kernel.results.put_many, kernel.queue.extend_many

    def flaky_put(records: Sequence[JobRecord]) -> list[bool]:
        if down.is_set() and records:  # a store asked for nothing is not asked at all
            raise ConnectionError("the results store is down")
        return put_many(records)

    def flaky_extend(leases: Sequence[Lease], secs: float) -> list[bool]:
        if down.is_set():
            raise ConnectionError("the queue store is down")
        return extend_many(leases, secs)

    kernel.results.put_many = flaky_put  # type: ignore[method-assign]
    kernel.queue.extend_many = flaky_extend  # type: ignore[method-assign]
    settler = Settler(kernel, kernel.queue, kernel.results, "test:1",
                      lambda settlement, landed: None)
    landed: list[list[bool]] = []
    patient = threading.Thread(target=lambda: landed.append(
        settler.settle(batch, patiently=True)), daemon=True)
    patient.start()
    # the point is time passing: both stores stay down past the leases' expiry
    wait_until(lambda: time.time() > expiry + 3.0, timeout=20, what="the leases to expire")
    assert patient.is_alive() and not landed, "the outcomes were given up"
    down.clear()
    patient.join(20)
    assert landed == [[True, True]]
    assert all(kernel.results.get(item.lease.id) is not None for item in batch)
