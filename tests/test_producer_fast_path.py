"""The producer's fast paths give what the general code gave: the same envelope bytes, the
same hooks and headers, the same all-or-nothing batch, whether plugins observe enqueues or
not (benchmarks/producer.py measures what they save)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from nuvom_kernel import hookimpl
from nuvom_kernel.envelope import Envelope
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import Message, TaskOptions
from nuvom_kernel.serialization import JsonSerializer
from tests.helpers import SERVER_BACKENDS, write_module

SERIALIZER = JsonSerializer()

ARGUMENTS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1, 2), {}),
    ((), {}),
    (("é\"\\\n\u2028", None, True, False, -3, 10**30), {"k": [1, {"z": 2}], "ü": "x"}),
    ((1.5, float("1e300"), -0.0), {}),
    (([1, [2]], {"a": 1}, (1, 2), {3}), {}),
    ((dt.datetime(2030, 1, 1, tzinfo=dt.UTC), b"\x00"), {"when": dt.date(2030, 1, 2)}),
]


def generic_body(envelope: Envelope) -> bytes:
    """The body as the serializer writes the envelope's fields (the path before the fast one)."""
    return envelope._generic_body(SERIALIZER)


@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
@pytest.mark.parametrize("module", ["app.tasks", None, "modülé"])
def test_spliced_body_is_the_encoders_bytes(args: tuple[Any, ...], kwargs: dict[str, Any],
                                            module: str | None) -> None:
    options = TaskOptions(queue="quëue", tags=("a", "b"), priority=3, timeout_secs=1.5)
    envelope = Envelope.for_call("app.tasks.add", module, options, args, kwargs)
    body = envelope.to_body(SERIALIZER)
    assert body == generic_body(envelope)
    envelope.headers["traceparent"] = "00-ab-cd-01"
    envelope.headers["nested"] = {"x": [1, None]}
    assert envelope.to_body(SERIALIZER) == generic_body(envelope)
    decoded = Envelope.from_message(Message(id=envelope.id, body=body), SERIALIZER)
    assert (decoded.args, decoded.kwargs, decoded.options) == (
        envelope.args, envelope.kwargs, envelope.options)


def test_batch_envelopes_equal_one_by_one_envelopes() -> None:
    options = TaskOptions(retries=2)
    calls = [(args, kwargs, None) for args, kwargs in ARGUMENTS]
    calls.append(((7,), {}, 'mine"id'))
    batch = Envelope.for_calls("app.t", "app", options, calls, ["x", "y"])
    for envelope, (args, kwargs, job_id) in zip(batch, calls, strict=True):
        single = Envelope.for_call("app.t", "app", options, args, kwargs, ["x", "y"],
                                   job_id=job_id)
        assert (envelope.args, envelope.kwargs, envelope.options) == (
            single.args, single.kwargs, single.options)
        assert envelope.to_body(SERIALIZER) == generic_body(envelope)
    assert batch[-1].id == 'mine"id'
    assert all((e.run, e.history, e.headers, e.legacy_failures, e.enqueued_by)
               == (1, [], {}, 0, single.enqueued_by) and e._wire_options is not None
               and e._wire_options[0] is e.options for e in batch)
    ids = [e.id for e in batch[:-1]] + [e.trace_id for e in batch]
    assert len(set(ids)) == len(ids)
    assert all(len(e.id) == 32 for e in batch[:-1]) and all(len(e.trace_id) == 16
                                                              for e in batch)


def test_new_job_ids_begin_with_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later batch's ids sort after an earlier one's (a backend's id index is appended
    to), and each id still carries 80 random bits."""
    now_ms = [1_764_000_000_123]
    monkeypatch.setattr(time, "time_ns", lambda: now_ms[0] * 1_000_000 + 999_999)
    first = Envelope.for_wire_calls("app.t", None, TaskOptions(), [([1], {}, None)] * 50)
    now_ms[0] += 1
    second = Envelope.for_wire_calls("app.t", None, TaskOptions(), [([1], {}, None)] * 50)
    assert {e.id[:12] for e in first} == {f"{1_764_000_000_123:012x}"}
    assert max(e.id for e in first) < min(e.id for e in second)
    assert len({e.id[12:] for e in first + second}) == 100
    assert all(len(e.id) == 32 and int(e.id, 16) >= 0 for e in first + second)


def test_a_changed_envelope_is_encoded_from_its_fields() -> None:
    """What the splice caches (the options' JSON) is not used once the fields changed."""
    envelope = Envelope.for_call("app.t", "app", TaskOptions(), (1,), {})
    envelope.options = {**envelope.options, "queue": "other"}
    assert json.loads(envelope.to_body(SERIALIZER))["opts"]["queue"] == "other"
    envelope = Envelope.for_call("app.t", "app", TaskOptions(), (1,), {})
    envelope.run, envelope.history = 2, [{"attempt": 1}]
    data = json.loads(envelope.to_body(SERIALIZER))
    assert (data["run"], data["history"]) == (2, [{"attempt": 1}])
    assert envelope.to_body(SERIALIZER) == generic_body(envelope)
    envelope = Envelope.for_call("app.t", "app", TaskOptions(), (1,), {})
    envelope.created_at = 5  # an int is written as the encoder writes ints
    assert envelope.to_body(SERIALIZER) == generic_body(envelope)


class HeaderPlugin:
    """A before_enqueue observer that adds a header (a trace context does)."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    @hookimpl
    def nuvom_before_enqueue(self, job: Any) -> None:
        job.headers["seen"] = job.id
        self.before.append(job.id)

    @hookimpl
    def nuvom_after_enqueue(self, job: Any) -> None:
        self.after.append(job.id)


def _kernel(project: Path, observed: bool) -> tuple[Kernel, HeaderPlugin | None]:
    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "sqlite"})
    for _name, plugin in list(kernel.pm.list_name_plugin()):
        impls = {impl.function.__name__ for impl in
                 kernel.pm.hook.nuvom_before_enqueue.get_hookimpls()
                 + kernel.pm.hook.nuvom_after_enqueue.get_hookimpls()
                 if impl.plugin is plugin}
        if impls:  # e.g. the otel plugin: this test owns every enqueue observer
            kernel.pm.unregister(plugin)
    if not observed:
        assert not kernel.pm.hook.nuvom_before_enqueue.get_hookimpls()
        return kernel, None
    plugin = HeaderPlugin()
    kernel.pm.register(plugin, name="headers")
    return kernel, plugin


def _queued(kernel: Kernel) -> dict[str, dict[str, Any]]:
    leases = kernel.queue.claim(1000)
    return {lease.message.id: json.loads(lease.message.body) for lease in leases}


_VARIABLE = ("id", "created_at", "trace_id", "headers")


@pytest.mark.parametrize("observed", [False, True])
def test_delay_and_map_store_the_same_envelopes_with_and_without_observers(
        project: Path, observed: bool) -> None:
    write_module(project, "fp_tasks", "from nuvom_kernel import task\n"
                                      "@task(queue='q1', priority=2)\n"
                                      "def add(x, y=0):\n    return x + y\n")
    kernel, plugin = _kernel(project, observed)
    with use_kernel(kernel):
        from fp_tasks import add

        one = add.delay(1, y=2)
        many = add.map([(1, 2), {"x": 3}, 4])
        mine = add.map([(5, 6)], job_ids=["fixed-1"])
    jobs = [one, *many, *mine]
    stored = _queued(kernel)
    assert set(stored) == {job.id for job in jobs}
    expected = [([1], {"y": 2}), ([1, 2], {}), ([], {"x": 3}), ([4], {}), ([5, 6], {})]
    for job, (args, kwargs) in zip(jobs, expected, strict=True):
        data = stored[job.id]
        assert (data["args"], data["kwargs"], data["task"], data["module"]) == (
            args, kwargs, "add", "fp_tasks")
        assert data["opts"]["queue"] == "q1" and data["opts"]["priority"] == 2
        assert (data["created_at"], data["trace_id"]) == (job.created_at, job.trace_id)
        assert job._kernel is kernel
        if plugin is None:
            assert "headers" not in data and job.headers == {}
        else:
            assert data["headers"] == {"seen": job.id} == job.headers
    # Everything but the per-job values is the same whichever path wrote it.
    shapes = {json.dumps({k: v for k, v in d.items() if k not in (*_VARIABLE, "args",
                                                                    "kwargs")},
                         sort_keys=True) for d in stored.values()}
    assert len(shapes) == 1
    if plugin is not None:
        assert plugin.before == plugin.after == [job.id for job in jobs]
    kernel.close()


def test_a_pushed_id_already_queued_stores_nothing_and_fires_no_after_hook(
        project: Path) -> None:
    write_module(project, "fp_ids", "from nuvom_kernel import task\n"
                                    "@task\ndef echo(x):\n    return x\n")
    kernel, plugin = _kernel(project, True)
    assert plugin is not None
    with use_kernel(kernel):
        from fp_ids import echo

        first = echo.apply_async((1,), job_id="same")
        again = echo.apply_async((2,), job_id="same")
        batch = echo.map([(3,), (4,), (5,)], job_ids=["same", "b", "b"])
    assert first.id == again.id == "same"
    # "same" was queued already: one after hook (its first enqueue), none for the map item.
    # (An id repeated inside one batch gets the hook per handle, as before the fast paths.)
    assert plugin.after.count("same") == 1 and "b" in plugin.after
    stored = _queued(kernel)
    assert {k: v["args"] for k, v in stored.items()} == {"same": [1], "b": [4]}
    assert [job.id for job in batch] == ["same", "b", "b"]
    kernel.close()


@pytest.mark.parametrize("observed", [False, True])
def test_a_bad_argument_enqueues_nothing(project: Path, observed: bool) -> None:
    write_module(project, "fp_bad", "from nuvom_kernel import task\n"
                                    "@task\ndef take(first, second=None):\n    return 1\n")
    kernel, plugin = _kernel(project, observed)
    with use_kernel(kernel):
        from fp_bad import take

        with pytest.raises(SerializationError, match="argument 'second'"):
            take.delay(1, object())
        with pytest.raises(SerializationError, match="argument 'second'"):
            take.map([(1, 2), (3, object()), (4, 5)])
        with pytest.raises(SerializationError, match="argument 'first'"):
            take.map([{"first": 1}, {"first": object()}])
    assert kernel.queue.claim(10) == []
    if plugin is not None:
        assert plugin.before == plugin.after == []
    kernel.close()


def test_sqlite_batch_insert_reports_each_row_across_statement_chunks(tmp_path: Path) -> None:
    """A batch longer than one multi-row statement, with ids already queued and ids repeated
    inside it (across a chunk boundary too): exactly the first of each new id is stored."""
    from nuvom_plugins_sqlite import SQLiteJobQueue
    from nuvom_plugins_sqlite.insert import INSERT_CHUNK as _INSERT_CHUNK

    queue = SQLiteJobQueue(tmp_path / "q.db")
    try:
        assert queue.push([Message(id="old-1", body=b"{}"), Message(id="old-2", body=b"{}")]) \
            == [True, True]
        ids = [f"n{i}" for i in range(2 * _INSERT_CHUNK + 7)]
        ids[5] = "old-1"
        ids[_INSERT_CHUNK + 1] = ids[_INSERT_CHUNK - 1]  # a repeat in the next statement
        ids[-1] = "old-2"
        ids[-2] = ids[-3]
        stored = queue.push([Message(id=i, body=b"{}") for i in ids])
        seen: set[str] = {"old-1", "old-2"}
        expected = []
        for i in ids:
            expected.append(i not in seen)
            seen.add(i)
        assert stored == expected
        assert queue.qsize() == len(seen)
    finally:
        queue.close()


def test_sqlite_batch_insert_stores_every_field_of_shared_and_mixed_chunks(
        tmp_path: Path) -> None:
    """A chunk whose rows share queue, priority, times and task is inserted from three
    values per row (the rest bound once), a mixed chunk from eight: each message comes back
    whole either way, and of an id repeated in a chunk the first one is stored."""
    from nuvom_plugins_sqlite import SQLiteJobQueue
    from nuvom_plugins_sqlite.insert import INSERT_CHUNK as _INSERT_CHUNK

    queue = SQLiteJobQueue(tmp_path / "q.db")
    try:
        shared = [Message(id=f"s{i}", body=f'{{"n":{i}}}'.encode(), queue="q1", priority=3,
                          created_at=1000.0 + i, task="app.shared")
                  for i in range(_INSERT_CHUNK + 5)]
        repeat = attrs.evolve(shared[7], body=b'"second"', created_at=5.0)
        mixed = [Message(id=f"m{i}", body=f'{{"m":{i}}}'.encode(), queue=f"q{i % 2}",
                         priority=i % 3, created_at=2000.0 + i, task=f"app.t{i % 2}")
                 for i in range(7)]
        assert queue.push([*shared[:10], repeat, *shared[10:]]) == [True] * 10 + [False] + \
            [True] * (len(shared) - 10)
        assert queue.push(mixed) == [True] * len(mixed)
        claimed = {lease.id: lease.message for lease in queue.claim(1000)}
        assert len(claimed) == len(shared) + len(mixed)
        for sent in [*shared, *mixed]:
            got = claimed[sent.id]
            assert (got.body, got.queue, got.priority, got.created_at, got.task) == \
                (sent.body, sent.queue, sent.priority, sent.created_at, sent.task), sent.id
    finally:
        queue.close()


def test_a_batchs_messages_are_each_envelopes_own() -> None:
    """``Envelope.to_messages`` looks up the JSON a run of jobs shares once per run: every
    message equals the envelope's own ``to_message``, across runs of two tasks, headers, a
    job run again and fields set by hand."""
    ping = TaskOptions(queue="pings", priority=2)
    batch = [*Envelope.for_calls("app.a", "app", TaskOptions(), [((i,), {}, None)
                                                                  for i in range(3)]),
             *Envelope.for_calls("app.b", None, ping, [((), {"x": i}, None) for i in range(3)]),
             *Envelope.for_calls("app.a", "app", TaskOptions(), [(("z",), {}, None)])]
    batch[1].headers["traceparent"] = "00-abc-01"
    batch[4].run = 2
    batch[5].task = "app.renamed"
    messages = Envelope.to_messages(batch, SERIALIZER, 7.5)
    assert messages == [env.to_message(SERIALIZER, 7.5) for env in batch]
    assert [json.loads(m.body)["task"] for m in messages] == \
        ["app.a"] * 3 + ["app.b"] * 2 + ["app.renamed", "app.a"]
    assert [m.queue for m in messages] == ["default"] * 3 + ["pings"] * 3 + ["default"]
    assert json.loads(messages[1].body)["headers"] == {"traceparent": "00-abc-01"}


class _FullDisk:
    """A queue backend whose storage refuses every write, as a full disk does (a fault this
    machine cannot produce for real: root writes past permissions and quotas)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    def enqueue_many(self, messages: Any) -> list[bool]:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("how", ["delay", "map"])
def test_a_storage_failure_names_the_backend_the_task_and_what_to_check(project: Path,
                                                                        how: str):
    from nuvom_kernel import task
    from nuvom_kernel.errors import EnqueueError

    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "sqlite",
                                           "NUVOM_RESULT_BACKEND": "sqlite"})
    real = kernel.queue
    kernel._queue = _FullDisk(real)  # type: ignore[assignment]

    @task
    def resize(n: int) -> int:
        return n

    try:
        with use_kernel(kernel), pytest.raises(EnqueueError) as info:
            resize.delay(1) if how == "delay" else resize.map([1, 2])
        message = str(info.value)
        assert "queue backend 'sqlite'" in message and "'resize'" in message
        assert "No space left on device" in message and "free space" in message
        assert real.qsize() == 0
    finally:
        kernel._queue = real
        kernel.close()


def test_built_on_read_builds_each_run_once_in_order_and_reads_like_a_list() -> None:
    from nuvom_kernel.dispatcher import BuiltOnRead

    runs: list[tuple[int, int]] = []

    def build(start: int, stop: int) -> list[int]:
        runs.append((start, stop))
        return [i * 10 for i in range(start, stop)]

    lazy, eager = BuiltOnRead(250, build), [i * 10 for i in range(250)]
    assert len(lazy) == 250 and runs == []
    assert lazy[0:100] == eager[0:100] and runs == [(0, 100)]  # the rest not built yet
    assert lazy[-1] == eager[-1] and lazy[-250] == eager[0] and lazy[120] == eager[120]
    assert lazy[240:500] == eager[240:] and lazy[::-7] == eager[::-7] and lazy[9:3] == []
    assert list(lazy) == eager and lazy[:] == eager
    assert runs == [(0, 100), (100, 250)]  # each item built once, runs in order
    for bad in (250, -251):
        with pytest.raises(IndexError):
            lazy[bad]
    one_by_one = BuiltOnRead(250, build)
    runs.clear()
    assert [one_by_one[i] for i in range(250)] == eager and runs == [(0, 100), (100, 200),
                                                                     (200, 250)]


def test_a_batchs_messages_are_the_envelopes_messages() -> None:
    from nuvom_kernel.dispatcher import _messages

    envelopes = Envelope.for_calls("app.t", "app", TaskOptions(queue="q", priority=4),
                                   [((i,), {}, None) for i in range(250)])
    lazy = _messages([(env, None) for env in envelopes], SERIALIZER, 7.5, [])  # type: ignore[misc]
    eager = [env.to_message(SERIALIZER, 7.5) for env in envelopes]
    assert list(lazy) == eager and all(a is b for a, b in zip(lazy, lazy[:], strict=True))
    assert eager[0].available_at == 7.5 and (eager[0].queue, eager[0].priority) == ("q", 4)


class RaisingPlugin:
    """An enqueue observer that fails on one job: the batch's other jobs and the other
    observers still see every job."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    @hookimpl
    def nuvom_before_enqueue(self, job: Any) -> None:
        self.log.append(("raising", job.id))
        if job.args == (2,):
            raise RuntimeError("observer bug")


def test_batch_hooks_isolate_a_raising_observer(project: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    write_module(project, "fp_raise", "from nuvom_kernel import task\n"
                                      "@task\ndef echo(x):\n    return x\n")
    kernel, plugin = _kernel(project, True)
    assert plugin is not None
    calls: list[tuple[str, str]] = []
    kernel.pm.register(RaisingPlugin(calls), name="raising")
    with use_kernel(kernel):
        from fp_raise import echo

        jobs = echo.map([(1,), (2,), (3,)])
    ids = [job.id for job in jobs]
    assert calls == [("raising", i) for i in ids]
    assert plugin.before == plugin.after == ids
    assert {lease.message.id for lease in kernel.queue.claim(10)} == set(ids)
    assert "plugin 'raising' raised in nuvom_before_enqueue" in caplog.text
    kernel.close()


class ReadLog(Sequence[Message]):
    """A batch that logs, in ``events``, each read of its messages (``("read", start,
    stop)``); a test logs the backend's sends in the same list."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.events: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self.messages))
        else:
            start = index % len(self.messages)
            stop = start + 1
        self.events.append(("read", start, stop))
        return self.messages[index]


@pytest.mark.skipif(not SERVER_BACKENDS, reason="no server backend installed")
@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_a_server_backend_reads_each_chunk_after_sending_the_one_before(
        backend: str, make_kernel: Callable[..., Kernel],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis and PostgreSQL stream their push (``streams_push``): a chunk is read only after
    the one before went out, so the kernel's building of each chunk (done as it is read)
    overlaps the server's insert of the one before."""
    queue = make_kernel(backend).queue
    assert queue.streams_push
    sent = [Message(id=f"read-{i}", body=b"{}") for i in range(2_507)]
    batch = ReadLog(sent)
    if backend == "redis":
        write = queue.store._write
        monkeypatch.setattr(queue.store, "_write", lambda conn, command: (
            batch.events.append(("send",)), write(conn, command))[1])
    else:
        import psycopg

        execute = psycopg.Connection.execute

        def logged(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            batch.events.append(("send",))
            return execute(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", logged)
    assert queue.push(batch) == [True] * len(sent)
    monkeypatch.undo()
    assert queue.qsize() == len(sent)
    reads = [e for e in batch.events if e[0] == "read"]
    assert len(reads) >= 3 and reads[0][1] == 0 and max(e[2] for e in reads) == len(sent)
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(reads)), "in order"
    kinds = "".join(e[0][0] for e in batch.events)  # r(ead) and s(end), in order
    assert "rr" not in kinds and kinds.count("rs") == len(reads), kinds


class QueueUsingObserver:
    """An enqueue observer that reads the queue backend (as a metrics plugin might), and on
    the batch's first job enqueues a job of its own (an audit trail might)."""

    def __init__(self, kernel: Kernel, audit: Any) -> None:
        self.kernel = kernel
        self.audit = audit
        self.sizes: list[int] = []

    @hookimpl
    def nuvom_before_enqueue(self, job: Any) -> None:
        self.sizes.append(self.kernel.queue.qsize())
        if job.task == "echo" and job.args == (0,):
            self.audit.delay("first of the batch")


@pytest.mark.parametrize("backend", ["memory", "sqlite", "file", *SERVER_BACKENDS])
def test_enqueue_observers_see_the_whole_batch_before_the_backend_is_called(
        backend: str, project: Path, make_kernel: Callable[..., Kernel]) -> None:
    """Memory, SQLite and file hold their locks while they store a batch (SQLite reads it
    as it stores it): the observers see every job of a ``.map()`` before the backend call,
    so one that uses the queue, or enqueues, does not deadlock. Redis and PostgreSQL hold
    no lock while they read: they are observed run by run as read, and such an observer
    does not deadlock either. A batch that cannot be encoded stores nothing."""
    write_module(project, "fp_eager", "from nuvom_kernel import task\n"
                                      "@task\ndef echo(x=0):\n    return x\n"
                                      "@task\ndef audit(note):\n    return note\n")
    kernel = make_kernel(backend)
    with use_kernel(kernel):
        from fp_eager import audit, echo

        observer = QueueUsingObserver(kernel, audit)
        kernel.pm.register(observer, name="reader")
        mapped: list[Any] = []
        thread = threading.Thread(target=lambda: mapped.append(
            echo.map([(i,) for i in range(2_100)])), daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "the .map() deadlocked with its enqueue observer"
        assert len(mapped[0]) == 2_100
        # every job observed before any of the batch was stored; the audit job (observed
        # second) was stored when the third was observed
        if kernel.queue.observed_as_read:  # (what a run sees of the runs before it is
            # the backend's business: Redis shows them, PostgreSQL commits at the end)
            assert observer.sizes[:3] == [0, 0, 1]
            assert observer.sizes == sorted(observer.sizes)
        else:
            assert observer.sizes == [0, 0] + [1] * 2_099
        with pytest.raises(SerializationError, match="keyword argument names must be strings"):
            echo.map([(1,), {(1, 2): 3}])
    assert kernel.queue.qsize() == 2_101


class BadHeaderObserver:
    def __init__(self) -> None:
        self.broken: list[str] = []  # the ids of the jobs it made unencodable

    @hookimpl
    def nuvom_before_enqueue(self, job: Any) -> None:
        if job.args == (3,):
            job.headers["when"] = object()  # not JSON: the job cannot be encoded
            self.broken.append(job.id)


def test_a_job_an_observer_made_unencodable_fails_the_batch_naming_it(
        project: Path, make_kernel: Callable[..., Kernel]) -> None:
    write_module(project, "fp_header", "from nuvom_kernel import task\n"
                                       "@task\ndef echo(x):\n    return x\n")
    kernel = make_kernel("memory")
    observer = BadHeaderObserver()
    kernel.pm.register(observer, name="bad-header")
    with use_kernel(kernel):
        from fp_header import echo

        with pytest.raises(SerializationError, match=r"\(echo\) cannot be encoded by the "
                                                     r"'json' serializer: TypeError") as bad:
            echo.map([(1,), (2,), (3,), (4,)])
        assert str(bad.value).startswith(f"job {observer.broken[-1]} (echo)"), \
            "the batch's error names the job that cannot be encoded, not the first"
        with pytest.raises(SerializationError, match=r"\(echo\) cannot be encoded by the "
                                                     r"'json' serializer: TypeError") as bad:
            echo.delay(3)  # .delay() takes the same path
        assert str(bad.value).startswith(f"job {observer.broken[-1]} (echo)")
        # an argument the checks at .delay() pass (an int) but the encoder refuses is named
        with pytest.raises(SerializationError, match=r"\(echo\) cannot be encoded by the "
                                                     r"'json' serializer in argument #0: "
                                                     r"ValueError: Exceeds the limit"):
            echo.delay(10**5000)
        with pytest.raises(SerializationError, match=r"serializer in argument 'x': "):
            echo.delay(x=10**5000)
    assert kernel.queue.qsize() == 0


def test_a_job_carries_its_queue_and_only_the_options_that_differ() -> None:
    """Defaults stay off the wire (the worker reads a missing option as its default) and the
    description never travels: it describes the task, not the job."""
    from nuvom_kernel.envelope import options_from_wire
    from nuvom_kernel.models import Backoff

    plain = TaskOptions(description="Add two numbers.")
    data = json.loads(Envelope.for_call("app.t", "app", plain, (1,), {}).to_body(SERIALIZER))
    assert data["opts"] == {"queue": "default"}
    assert options_from_wire(data["opts"]) == TaskOptions()
    tuned = TaskOptions(retries=3, backoff=Backoff.EXPONENTIAL, timeout_secs=2.5, queue="q",
                        store_result=False, tags=("a",), concurrency=2, description="x")
    data = json.loads(Envelope.for_call("app.t", "app", tuned, (1,), {}).to_body(SERIALIZER))
    assert data["opts"] == {"retries": 3, "backoff": "exponential", "timeout_secs": 2.5,
                            "store_result": False, "queue": "q", "tags": ["a"],
                            "concurrency": 2}
    assert options_from_wire(data["opts"]) == attrs.evolve(tuned, description=None)
