"""What the worker's hot path caches or skips changes nothing a user can see: observers
follow plugins that come and go, any callable runs as a task, the frozen heap is undone."""

from __future__ import annotations

import copy
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


def _envelope_with_everything() -> Any:
    from nuvom_kernel.envelope import Envelope
    from nuvom_kernel.models import TaskOptions

    envelope = Envelope.for_call("app.tasks.add", "app.tasks",
                                 TaskOptions(queue="mail", retries=3, priority=2),
                                 [1, {"nested": [2, (3, 4)]}], {"k": {"x": [5]}})
    envelope.options = dict(envelope.options)  # a copy: the tests change it, and the
    # dict for these options is cached for every envelope of the process
    envelope.history.append({"attempt": 1, "run": 2, "kind": "error"})
    envelope.headers["trace"] = {"span": "s1"}
    envelope.run = 2
    return envelope


def test_a_success_record_built_positionally_equals_one_built_by_name() -> None:
    """``Envelope.succeeded`` passes JobRecord's fields in order: a reordered field would
    put a value in the wrong place without an error, so compare with ``record``."""
    from nuvom_kernel.models import JobStatus

    envelope = _envelope_with_everything()
    fast = envelope.succeeded({"r": [1]}, 2, "token-1", 10.0, 12.5, "host:1")
    slow = envelope.record(JobStatus.SUCCEEDED, result={"r": [1]}, attempts=2,
                           token="token-1", started_at=10.0, finished_at=12.5,
                           updated_at=12.5, worker="host:1")
    assert fast == slow
    assert fast.queue == "mail" and fast.max_retries == 3 and fast.attempts == 2
    assert fast.run == 2
    assert fast.history == envelope.history and fast.history is not envelope.history


def test_a_decoded_job_has_every_field_and_shares_no_container_with_its_envelope() -> None:
    from nuvom_kernel.models import JobStatus

    envelope = _envelope_with_everything()
    job = envelope.job(JobStatus.RUNNING)
    assert (job.id, job.task, job.module, job.run, job.status) == (
        envelope.id, "app.tasks.add", "app.tasks", 2, JobStatus.RUNNING)
    assert job.args == (1, {"nested": [2, (3, 4)]}) and job.kwargs == {"k": {"x": [5]}}
    assert (job.options.queue, job.options.retries, job.options.priority) == ("mail", 3, 2)
    assert job.history == envelope.history and job.headers == envelope.headers
    assert (job.failures, job.attempts, job.created_at, job.enqueued_by, job.trace_id) == (
        0, 0, envelope.created_at, envelope.enqueued_by, envelope.trace_id)
    job.args[1]["nested"].append(9)  # a task that changes its arguments
    job.kwargs["k"]["x"].append(9)
    job.history.append({})
    job.headers.clear()
    assert envelope.args[1] == {"nested": [2, {"__nuvom__": ["tuple", [3, 4]]}]}
    assert envelope.kwargs == {"k": {"x": [5]}}
    assert len(envelope.history) == 1 and envelope.headers == {"trace": {"span": "s1"}}


def test_the_memory_store_keeps_its_own_copy_of_every_container() -> None:
    from nuvom_kernel.models import JobStatus
    from nuvom_kernel.testing.memory import MemoryResultBackend

    envelope = _envelope_with_everything()
    record = envelope.succeeded({"r": [1]}, 1, None, 1.0, 2.0, "host:1")
    store = MemoryResultBackend()
    assert store.put(record)
    kept = copy.deepcopy(record)
    assert store.get(envelope.id) == kept
    record.args[1]["nested"].append(9)
    record.kwargs["k"]["x"].append(9)
    record.options["queue"] = "other"
    record.result["r"].append(9)
    record.history[0]["kind"] = "changed"
    again = store.get(envelope.id)
    assert again == kept and again.status is JobStatus.SUCCEEDED
    again.result["r"].append(7)  # nor with a reader
    assert store.get(envelope.id) == kept


def test_the_memory_stores_copy_of_flat_containers_is_its_own_and_json_shaped() -> None:
    """Containers of plain values take the short way (copied in C, then checked): still a
    copy of its own, and still what JSON would keep (a tuple becomes a list, an int key a
    string, a container inside one the long way)."""
    from nuvom_kernel.models import JobRecord, JobStatus
    from nuvom_kernel.testing.memory import MemoryResultBackend

    record = JobRecord(job_id="flat", task="t", status=JobStatus.SUCCEEDED, args=[1, "a"],
                       kwargs={"k": 1}, options={"queue": "q"}, result=(1, 2.5, None))
    store = MemoryResultBackend()
    assert store.put(record)
    record.args.append(9)
    record.kwargs["k"] = 2
    record.options["queue"] = "other"
    kept = store.get("flat")
    assert kept is not None
    assert (kept.args, kept.kwargs, kept.options, kept.result) == (
        [1, "a"], {"k": 1}, {"queue": "q"}, [1, 2.5, None])
    assert type(kept.result) is list
    record.result = {1: "a", "b": (3,), "c": True}
    assert store.put(record)
    again = store.get("flat")
    assert again is not None and again.result == {"1": "a", "b": [3], "c": True}


def test_the_memory_stores_copy_writes_object_keys_as_json_does() -> None:
    """A ``StrEnum`` key is its text (not its quoted JSON), an ``IntEnum`` or a float its
    number, ``True`` and ``None`` their JSON names; a key json refuses is refused."""
    import enum
    import json

    from nuvom_kernel.testing.memory_results import _clone

    class Color(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    value = {Color.RED: 1, Level.HIGH: 2, 1.5: 3, True: 4, None: 5, "plain": [6]}
    assert _clone(value) == json.loads(json.dumps(value)) == {
        "red": 1, "3": 2, "1.5": 3, "true": 4, "null": 5, "plain": [6]}
    assert all(type(k) is str for k in _clone(value))
    for bad in ({(1, 2): "tuple key"}, {b"x": "bytes key"}):
        with pytest.raises(TypeError, match="keys must be"):
            json.dumps(bad)
        with pytest.raises(TypeError, match="keys must be"):
            _clone(bad)


@pytest.mark.parametrize("body", [b'{"a":1}x', b'{"a":1} {}', b"", b"nope", b'{"a":', b"[1]"])
def test_a_body_that_is_not_one_json_object_is_refused(body: bytes) -> None:
    """The JSON decoder's fast path (the C scanner, called directly) still refuses what
    ``json.loads`` refuses, trailing data included."""
    from nuvom_kernel.errors import SerializationError
    from nuvom_kernel.serialization import JsonSerializer

    with pytest.raises(SerializationError):
        JsonSerializer().loads(body)


def test_a_body_with_whitespace_around_it_still_decodes() -> None:
    from nuvom_kernel.serialization import JsonSerializer

    assert JsonSerializer().loads(b' \n{"a": [1, {"b": null}]}\t ') == {"a": [1, {"b": None}]}
    assert JsonSerializer().loads('{"a":1}') == {"a": 1}
    assert JsonSerializer().loads(bytearray(b'{"a":1}')) == {"a": 1}  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [b'{"args":[NaN]}', b'{"a":{"b":Infinity}}',
                                  b' {"a":-Infinity}', b'{"args":[1e999]}',
                                  b'{"args":[-2.5E+400]}'])
def test_a_body_holding_nan_or_infinity_is_refused_as_the_encoder_refuses_it(
        body: bytes) -> None:
    """No producer can send NaN (the encoder refuses it), so a body holding one was written
    by hand or by another tool's ``json.dumps``: its job is failed as undecodable (and its
    message copied to quarantine), not run with an argument no producer could send."""
    from nuvom_kernel.errors import SerializationError
    from nuvom_kernel.serialization import JsonSerializer

    with pytest.raises(SerializationError, match=r"is not JSON|out of range for a float"):
        JsonSerializer().loads(body)
    assert JsonSerializer().loads(b'{"a":[2.5,-0.0,1e308]}') == {"a": [2.5, -0.0, 1e308]}
    with pytest.raises(ValueError, match="not JSON compliant"):
        JsonSerializer().dumps({"args": [float("nan")]})
