"""``ResultBackendContract``: what every result backend must do, as pytest tests.

Subclass it and override one fixture::

    class TestMyResults(ResultBackendContract):
        @pytest.fixture
        def make_result_backend(self):
            return BackendFactory(MyResults, {"path": "..."})

The factory must return an *empty* backend for the context it is given (the context's
``data_dir`` is a fresh temporary directory per test). Result backends have no ``clear``
primitive, so isolation is the factory's job — for a server-backed store, use a unique
namespace per call.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from nuvom_kernel.backends import BackendContext, ResultBackend, page_cursor
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.testing.contracts._support import make_record, requires, skip_unless_capable
from nuvom_kernel.testing.contracts.heartbeats import HeartbeatContract

__all__ = ["ResultBackendContract"]

ResultFactory = Callable[[BackendContext], ResultBackend]


class ResultBackendContract(HeartbeatContract):
    """Contract tests for :class:`~nuvom_kernel.backends.ResultBackend` implementations
    (with the heartbeat tests of :class:`HeartbeatContract`)."""

    concurrent_writers: ClassVar[int] = 4
    records_per_writer: ClassVar[int] = 50

    @pytest.fixture
    def make_result_backend(self) -> ResultFactory:
        """Override: return ``(BackendContext) -> ResultBackend``, usually a BackendFactory."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the make_result_backend fixture: return "
            "BackendFactory(YourResults, settings) (see docs/writing_plugins.md)")

    @pytest.fixture
    def backend_context(self, tmp_path: Path) -> BackendContext:
        return BackendContext(data_dir=tmp_path / "nuvom-data", visibility_timeout_secs=30.0,
                              namespace=f"nuvom-test-{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def build_results(
        self, make_result_backend: ResultFactory, backend_context: BackendContext
    ) -> Iterator[Callable[..., ResultBackend]]:
        built: list[ResultBackend] = []

        def build(**context_changes: Any) -> ResultBackend:
            backend = make_result_backend(attrs.evolve(backend_context, **context_changes))
            built.append(backend)
            return backend

        yield build
        if built:
            try:
                built[-1].purge(float("inf"))
            finally:
                for backend in reversed(built):
                    backend.close()

    @pytest.fixture
    def result_backend(self, build_results: Callable[..., ResultBackend]) -> ResultBackend:
        backend = build_results()
        backend.purge(float("inf"))
        return backend

    @pytest.fixture(autouse=True)
    def _capability_gate(self, request: pytest.FixtureRequest,
                         result_backend: ResultBackend) -> None:
        skip_unless_capable(request, result_backend)

    # --- records --------------------------------------------------------------------------

    def test_unknown_ids(self, result_backend: ResultBackend) -> None:
        job_id = "never-seen-" + uuid.uuid4().hex
        assert result_backend.get(job_id) is None, "an unknown id is None, not a pending job"

    def test_known_names_exactly_the_ids_with_records(self, result_backend: ResultBackend
                                                      ) -> None:
        stored = [make_record(status=s) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                   JobStatus.RETRYING)]
        result_backend.put_many(stored)
        ids = [r.job_id for r in stored]
        never = ["never-seen-" + uuid.uuid4().hex for _ in range(2)]
        asked = [never[0], ids[0], ids[1], never[1], ids[0], ids[2]]
        assert result_backend.known(asked) == set(ids), (
            "known(ids) returns the ids that have a record, each once, and no other "
            "(the producer skips those on .map(job_ids=...))")
        assert result_backend.known(never) == set() and result_backend.known([]) == set()
        many = [make_record() for _ in range(1_203)]  # past any chunk of a batched lookup
        result_backend.put_many(many)
        assert result_backend.known([r.job_id for r in many] + never) == \
            {r.job_id for r in many}

    @pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED,
                                        JobStatus.RETRYING, JobStatus.QUEUED])
    def test_put_get_round_trip(self, result_backend: ResultBackend, status: JobStatus
                                ) -> None:
        record = make_record(status=status)
        result_backend.put(record)
        got = result_backend.get(record.job_id)
        assert got is not None
        assert got.to_dict() == record.to_dict(), "every field must round-trip unchanged"
        assert got.status is status

    def test_put_many_stores_every_record(self, result_backend: ResultBackend) -> None:
        records = [make_record(status=JobStatus.SUCCEEDED) for _ in range(5)]
        assert result_backend.put_many(records) == [True] * 5
        for record in records:
            got = result_backend.get(record.job_id)
            assert got is not None and got.to_dict() == record.to_dict()

    def test_put_replaces(self, result_backend: ResultBackend) -> None:
        record = make_record(status=JobStatus.RETRYING, task="tasks.flaky")
        assert result_backend.put(record) is True
        assert result_backend.put(attrs.evolve(record, status=JobStatus.SUCCEEDED, attempts=2,
                                               updated_at=record.updated_at + 1)) is True
        got = result_backend.get(record.job_id)
        assert got is not None and (got.status, got.attempts) == (JobStatus.SUCCEEDED, 2)
        assert len(result_backend.query(task="tasks.flaky")) == 1

    def test_put_is_fenced_by_run_and_attempt(self, result_backend: ResultBackend) -> None:
        taken_over = make_record(status=JobStatus.SUCCEEDED, attempts=2, token="b")
        assert result_backend.put(taken_over) is True

        def refused(record: JobRecord, why: str) -> None:
            assert result_backend.put(record) is False, why
            got = result_backend.get(taken_over.job_id)
            assert got is not None and got.to_dict() == taken_over.to_dict(), \
                f"a refused write must change nothing ({why})"

        refused(attrs.evolve(taken_over, status=JobStatus.RETRYING, attempts=1, token="a",
                             updated_at=taken_over.updated_at + 5),
                "a write from an earlier attempt must not replace a later one")
        refused(attrs.evolve(taken_over, status=JobStatus.FAILED, attempts=1, token="a"),
                "not even a terminal one")
        refused(attrs.evolve(taken_over, status=JobStatus.RETRYING, token="b2"),
                "a non-terminal record must not replace a terminal one of the same attempt")
        refused(attrs.evolve(taken_over, run=0, attempts=9),
                "a write from an earlier run must not replace a later run's")
        rerun = attrs.evolve(taken_over, status=JobStatus.QUEUED, run=2, attempts=0,
                             token=None, result=None)
        assert result_backend.put(rerun) is True, "a new run replaces the finished one"
        late = attrs.evolve(taken_over, status=JobStatus.FAILED, attempts=3, run=1)
        assert result_backend.put_many([late, attrs.evolve(rerun, status=JobStatus.SUCCEEDED,
                                                           attempts=1)]) == [False, True], \
            "put_many fences each record like put"
        got = result_backend.get(taken_over.job_id)
        assert got is not None and (got.run, got.attempts, got.status) == \
            (2, 1, JobStatus.SUCCEEDED)

    def test_a_cancel_is_final_for_its_run(self, result_backend: ResultBackend) -> None:
        # A worker cut off past its lease finishes its attempt late; an operator may have
        # cancelled the job meanwhile, while it was waiting in its queue again.
        cancelled = make_record(status=JobStatus.CANCELLED, attempts=1, result=None)
        assert result_backend.put(cancelled) is True
        for late in (attrs.evolve(cancelled, status=JobStatus.SUCCEEDED, attempts=2),
                     attrs.evolve(cancelled, status=JobStatus.FAILED),
                     attrs.evolve(cancelled, status=JobStatus.RETRYING, attempts=2)):
            other = make_record(status=JobStatus.SUCCEEDED)  # a batch, not a lone record
            assert result_backend.put_many([late, other]) == [False, True], \
                f"a late {late.status.value} (attempt {late.attempts}) must not replace " \
                "the CANCELLED record of its run"
            got = result_backend.get(cancelled.job_id)
            assert got is not None and got.status is JobStatus.CANCELLED
        assert result_backend.put(attrs.evolve(cancelled, updated_at=cancelled.updated_at + 1)), \
            "cancelling again is not refused"
        rerun = attrs.evolve(cancelled, status=JobStatus.QUEUED, run=cancelled.run + 1,
                             attempts=0)
        assert result_backend.put(rerun) is True, "a new run (`nuvom retry job`) replaces it"
        got = result_backend.get(cancelled.job_id)
        assert got is not None and (got.run, got.status) == (rerun.run, JobStatus.QUEUED)

    def test_records_are_copies(self, result_backend: ResultBackend) -> None:
        record = make_record()
        result_backend.put(record)
        record.history.append({"attempt": 99})
        record.kwargs["added"] = 1
        got = result_backend.get(record.job_id)
        assert got is not None and len(got.history) == 1 and "added" not in got.kwargs, \
            "changing a record after put() must not change what is stored"
        got.result["total"] = -1
        again = result_backend.get(record.job_id)
        assert again is not None and again.result["total"] == 3, \
            "changing a returned record must not change what is stored"

    # --- queries --------------------------------------------------------------------------

    def _populate(self, backend: ResultBackend) -> list[JobRecord]:
        base = time.time() - 1000
        shapes = [(JobStatus.SUCCEEDED, "tasks.add")] * 4 + [(JobStatus.FAILED, "tasks.add")] \
            + [(JobStatus.SUCCEEDED, "tasks.mul")] * 2 + [(JobStatus.RETRYING, "tasks.mul")]
        records = [make_record(status=s, task=f, updated_at=base + i)
                   for i, (s, f) in enumerate(shapes)]
        for record in reversed(records):  # insertion order must not decide the order
            backend.put(record)
        return records

    def test_query_filters(self, result_backend: ResultBackend) -> None:
        records = self._populate(result_backend)

        def ids(rows: list[JobRecord]) -> set[str]:
            return {r.job_id for r in rows}

        def expected(**match: Any) -> set[str]:
            return {r.job_id for r in records
                    if all(getattr(r, k) == v for k, v in match.items())}

        assert ids(result_backend.query(limit=100)) == expected()
        assert ids(result_backend.query(status=JobStatus.SUCCEEDED, limit=100)) == \
            expected(status=JobStatus.SUCCEEDED)
        assert ids(result_backend.query(task="tasks.mul", limit=100)) == \
            expected(task="tasks.mul")
        assert ids(result_backend.query(status=JobStatus.SUCCEEDED, task="tasks.add",
                                        limit=100)) == \
            expected(status=JobStatus.SUCCEEDED, task="tasks.add")
        assert result_backend.query(status=JobStatus.CANCELLED) == []
        assert result_backend.query(task="tasks.nope") == []

    def test_query_newest_updated_first_and_keyset_paging(self, result_backend: ResultBackend
                                                          ) -> None:
        base = time.time() - 1000
        records = [make_record(updated_at=base + i) for i in range(25)]
        twins = [make_record(job_id=f"twin-{c}", updated_at=base + 30) for c in "bca"]
        for record in records[::2] + twins + records[1::2]:
            result_backend.put(record)
        newest_first = [f"twin-{c}" for c in "cba"] + [r.job_id for r in reversed(records)]
        pages: list[list[JobRecord]] = []
        after = None
        for _ in range(5):
            page = result_backend.query(limit=10, after=after)
            pages.append(page)
            if not page:
                break
            after = page_cursor(page[-1])
        assert [len(p) for p in pages] == [10, 10, 8, 0], \
            "query(after=cursor) pages through every record once"
        assert [r.job_id for p in pages for r in p] == newest_first, \
            "query() orders newest updated_at first, then job_id descending, across pages"

    def test_counts(self, result_backend: ResultBackend) -> None:
        self._populate(result_backend)
        counts = {k: v for k, v in result_backend.counts().items() if v}
        assert counts == {"SUCCEEDED": 6, "FAILED": 1, "RETRYING": 1}

    def test_purge_removes_only_old_terminal_records(self, result_backend: ResultBackend
                                                     ) -> None:
        now = time.time()
        old_done = [make_record(status=s, updated_at=now - 500)
                    for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)]
        old_live = [make_record(status=s, updated_at=now - 500)
                    for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING)]
        new_done = make_record(status=JobStatus.SUCCEEDED, updated_at=now)
        for record in [*old_done, *old_live, new_done]:
            result_backend.put(record)
        assert result_backend.purge(now - 100) == 3
        assert all(result_backend.get(r.job_id) is None for r in old_done)
        assert all(result_backend.get(r.job_id) is not None for r in old_live), \
            "purge never deletes a job that has not finished"
        assert result_backend.get(new_done.job_id) is not None

    # --- concurrency and durability -------------------------------------------------------

    def test_concurrent_writers_lose_nothing(self, result_backend: ResultBackend) -> None:
        batches = [[make_record() for _ in range(self.records_per_writer)]
                   for _ in range(self.concurrent_writers)]
        barrier = threading.Barrier(len(batches))

        def write(batch: list[JobRecord]) -> None:
            barrier.wait()
            for record in batch:
                result_backend.put(record)

        threads = [threading.Thread(target=write, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        missing = [r.job_id for b in batches for r in b if result_backend.get(r.job_id) is None]
        assert not missing, f"{len(missing)} records written concurrently were lost"

    @requires("persistent")
    def test_records_survive_reopen(self, build_results: Callable[..., ResultBackend]) -> None:
        first = build_results()
        record = make_record(status=JobStatus.FAILED)
        first.put(record)
        first.close()
        got = build_results().get(record.job_id)
        assert got is not None and got.to_dict() == record.to_dict()
