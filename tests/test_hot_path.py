"""What the worker's hot path caches or skips changes nothing a user can see: observers
follow plugins that come and go, any callable runs as a task, the frozen heap is undone."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from nuvom_kernel import events, hookimpl
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.worker.heap import frozen_heap
from nuvom_kernel.worker.run import JobRunner


class Recorder:
    def __init__(self) -> None:
        self.jobs: list[Any] = []

    @hookimpl
    def nuvom_before_execute(self, job: Any) -> None:
        self.jobs.append(job)


def test_observers_follow_plugins_registered_and_unregistered() -> None:
    pm = NuvomPluginManager()
    recorder = Recorder()
    events.emit(pm, "nuvom_before_execute", job=1)  # looked up (and kept) with none
    pm.register(recorder)
    events.emit(pm, "nuvom_before_execute", job=2)
    pm.unregister(recorder)
    events.emit(pm, "nuvom_before_execute", job=3)
    assert recorder.jobs == [2]


def test_a_lookup_that_raced_a_registration_is_not_kept(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Another thread registers a plugin while a lookup is under way: the lookup's (old)
    answer must not be kept, or the new plugin would never be called for that hook."""
    pm = NuvomPluginManager()
    real = pm.hook.nuvom_before_execute

    class Racing:
        def get_hookimpls(self) -> list[Any]:
            impls = real.get_hookimpls()
            monkeypatch.setattr(pm.hook, "nuvom_before_execute", real)
            pm.register(Recorder())  # "another thread", between the lookup and its keeping
            return impls

    monkeypatch.setattr(pm.hook, "nuvom_before_execute", Racing())
    assert events.observers(pm, "nuvom_before_execute") == []
    assert len(events.observers(pm, "nuvom_before_execute")) == 1


class Adder:
    """A callable that is not hashable (``__eq__`` without ``__hash__``)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Adder)

    def __call__(self, x: int, y: int) -> int:
        return x + y


async def coroutine_task() -> None:
    """An ``async def`` task."""


def test_the_coroutine_check_takes_any_callable() -> None:
    runner = JobRunner.__new__(JobRunner)  # only its cache of the check is used here
    runner._coroutine = {}
    with pytest.raises(TypeError):
        hash(Adder())
    for _ in range(2):  # the second time from the cache where there is one
        assert runner._is_coroutine(Adder()) is False
        assert runner._is_coroutine(coroutine_task) is True
        assert runner._is_coroutine(print) is False


def test_frozen_heap_is_undone_and_leaves_an_outer_freeze_alone() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the app's own
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_the_memory_store_claims_nothing_for_a_count_under_one() -> None:
    from nuvom_kernel.testing.contracts._support import make_message
    from nuvom_kernel.testing.memory import MemoryJobQueue

    queue = MemoryJobQueue()
    queue.push([make_message()])
    assert queue.claim(-1) == [] and queue.claim(0) == []
    assert len(queue.claim(1)) == 1


def test_a_step_whose_dependents_records_cannot_be_stored_advances_nothing() -> None:
    """The cancelled dependents' records are stored inside the graph's transaction: when
    that fails, the graph stays as it was and the step's lease is not settled (it runs
    again), instead of a workflow ended FAILED around steps without records."""
    from nuvom_kernel.models import JobRecord, JobStatus, Settlement
    from nuvom_kernel.testing.contracts.queue_workflows import _graph
    from nuvom_kernel.testing.memory import MemoryJobQueue, MemoryResultBackend
    from nuvom_kernel.workflow.graph import create
    from nuvom_kernel.workflow.settle import advance_steps

    class Refusing(MemoryResultBackend):
        def put_many(self, records: Any) -> list[bool]:
            raise OSError("disk full")

    queue = MemoryJobQueue()
    flow, nodes, messages = _graph({"a": ["b"], "b": []})
    queue.workflow_transaction(
        lambda txn: create(txn, flow, [n.id for n in nodes], nodes, messages))
    lease = queue.claim(1)[0]
    failed = JobRecord(job_id=lease.id, task="tasks.a", status=JobStatus.FAILED)
    assert not advance_steps(queue, Refusing(), [Settlement(lease, failed, workflow=flow.id)])
    graph = queue.read_workflow(flow.id)
    assert graph is not None and graph.flow.status == "RUNNING"
    assert [n.state for n in graph.nodes] == ["RELEASED", "WAITING"]
