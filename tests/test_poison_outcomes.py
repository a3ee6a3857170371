"""An outcome that cannot be stored fails its own job once, and no other.

Before: a backend stores a batch of outcomes all or nothing, so one record its encoder
refused (a return value of 10**5000, past the 4,300 digits Python turns into text) refused
the whole batch; every job in it ran again with the bad one, at every delivery, until the
delivery limit failed the bad one as a "crash". Values that ``to_wire`` could not even take
(a dict holding itself, ``inf``) and error texts no UTF-8 encoder takes (lone surrogates)
looped the same way. Real SQLite files and a started worker pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nuvom_kernel import JobStatus
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.kernel import Kernel, use_kernel
from tests.helpers import run_worker_until, write_module

TASKS = '''\
import pathlib

from nuvom_kernel import task

RUNS = pathlib.Path(__file__).with_name("runs.log")


def _ran(name):
    with RUNS.open("a") as f:
        f.write(name + "\\n")


@task
def plain(i):
    _ran(f"plain {i}")
    return i


@task
def huge():
    _ran("huge")
    return 10 ** 5000


@task
def holds_itself():
    _ran("holds_itself")
    d = {}
    d["me"] = d
    return d


@task
def sized(n):
    _ran(f"sized {n}")
    return "x" * n


@task
def infinite():
    _ran("infinite")
    return float("inf")


@task
def an_object():
    _ran("an_object")
    return object()


@task
def measure(text):
    _ran("measure")
    return len(text)


@task
def undecodable_error():
    _ran("undecodable_error")
    raise ValueError("cannot read \\udcff.txt")
'''


@pytest.fixture
def sqlite_kernel(make_kernel: Callable[..., Kernel], project: Path) -> Iterator[Kernel]:
    write_module(project, "t_poison", TASKS)
    kernel = make_kernel("sqlite", NUVOM_VISIBILITY_TIMEOUT_SECS="1",
                         NUVOM_MAX_DELIVERIES="3")
    with use_kernel(kernel):
        yield kernel


def _runs(project: Path) -> list[str]:
    log = project / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def _drained(kernel: Kernel, ids: list[str]) -> bool:
    return all((r := kernel.results.get(i)) is not None
               and r.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) for i in ids)


def test_an_unstorable_result_fails_alone_and_its_batch_runs_once(sqlite_kernel: Kernel,
                                                                  project: Path) -> None:
    from t_poison import huge, plain  # type: ignore[import-not-found]

    before = plain.map([(i,) for i in range(150)])
    poison = huge.delay()
    after = plain.map([(i,) for i in range(150, 300)])
    ids = [j.id for j in (*before, poison, *after)]
    run_worker_until(sqlite_kernel, lambda: _drained(sqlite_kernel, ids), "every job to finish",
                     workers=2, timeout=60)
    record = sqlite_kernel.results.get(poison.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error_type == "nuvom_kernel.errors.SerializationError" and record.result is None
    assert "cannot be stored by the 'sqlite' result backend" in (record.error_message or "")
    assert record.history[-1]["kind"] == "unstorable"
    runs = _runs(project)
    assert runs.count("huge") == 1, "the job whose result cannot be stored ran again"
    assert sorted(r for r in runs if r.startswith("plain")) == sorted(
        f"plain {i}" for i in range(300)), "a job batched with it ran again (or never)"
    assert all(sqlite_kernel.results.get(j.id).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
               for j in (*before, *after))


def test_a_result_past_sqlites_length_limit_fails_alone_and_runs_once(
        sqlite_kernel: Kernel, project: Path) -> None:
    """SQLite refuses a value over its length limit (1e9 bytes by default; lowered here to
    200 KB on the process's real write connection, ``setlimit``) with a ``DataError``,
    which the settler took for a store that is down: the batch was tried again until the
    leases ran out, the job (and its batch) ran again at each one, and the delivery limit
    finally recorded it as crashed. Now it is that job's unstorable outcome; and an
    argument past the limit is refused at ``.delay()`` saying what, not to check free
    space."""
    import sqlite3

    from t_poison import plain, sized  # type: ignore[import-not-found]

    jobs = [plain.delay(1), sized.delay(300_000), plain.delay(2), sized.delay(1_000)]
    sqlite_kernel.queue._db.write(  # type: ignore[attr-defined]
        lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200_000))
    ids = [j.id for j in jobs]
    run_worker_until(sqlite_kernel, lambda: _drained(sqlite_kernel, ids), "every job to finish",
                     workers=2, timeout=60)
    [ok1, big, ok2, small] = [sqlite_kernel.results.get(i) for i in ids]
    assert big is not None and big.status is JobStatus.FAILED, big
    assert "a value is larger than SQLite stores in one field" in (big.error_message or "")
    assert "pass a reference" in (big.error_message or "")
    assert [r.status for r in (ok1, ok2, small)] == [JobStatus.SUCCEEDED] * 3  # type: ignore[union-attr]
    assert sorted(_runs(project)) == ["plain 1", "plain 2", "sized 1000", "sized 300000"]
    with pytest.raises(SerializationError, match="larger than SQLite stores in one field"):
        plain.delay("y" * 300_000)


@pytest.mark.parametrize(("name", "error"), [
    ("holds_itself", "nested too deeply to encode"),
    ("infinite", "is inf, which JSON cannot carry"),
    # said to "Pass plain data", as of an argument
    ("an_object", "an_object() return value has type builtins.object, which Nuvom cannot "
                  "encode as job data. Return plain data"),
])
def test_a_result_to_wire_refuses_fails_its_job_once(sqlite_kernel: Kernel, project: Path,
                                                     name: str, error: str) -> None:
    import t_poison  # type: ignore[import-not-found]

    job = getattr(t_poison, name).delay()
    run_worker_until(sqlite_kernel, lambda: _drained(sqlite_kernel, [job.id]),
                     "the job to finish", timeout=30)
    record = sqlite_kernel.results.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error_type == "nuvom_kernel.errors.SerializationError"
    assert error in (record.error_message or "")
    assert _runs(project) == [name], "it ran again"


def test_an_error_text_utf8_cannot_hold_is_stored_escaped(sqlite_kernel: Kernel,
                                                          project: Path) -> None:
    from t_poison import undecodable_error  # type: ignore[import-not-found]

    job = undecodable_error.delay()
    run_worker_until(sqlite_kernel, lambda: _drained(sqlite_kernel, [job.id]),
                     "the job to finish", timeout=30)
    record = sqlite_kernel.results.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert (record.error_type, record.error_message) == ("ValueError",
                                                         "cannot read \\udcff.txt")
    assert "\\udcff" in (record.traceback or "")
    assert _runs(project) == ["undecodable_error"], "it ran again"


def test_infinity_in_arguments_is_refused_naming_it(sqlite_kernel: Kernel) -> None:
    from t_poison import plain  # type: ignore[import-not-found]

    with pytest.raises(SerializationError, match="argument 'i' is -inf, which JSON cannot"):
        plain.delay(float("-inf"))
    assert sqlite_kernel.queue.qsize() == 0


def test_a_job_whose_arguments_the_store_cannot_hold_fails_once_without_them(
        make_kernel: Callable[..., Kernel], project: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that holds only UTF-8 (PostgreSQL's text) refused every record of a job
    whose argument held a lone surrogate, the FAILED one that said why included (it
    carried the same arguments): the job ran again at every visibility timeout, for ever.
    Its last record keeps only the job's identity and the error. (Results apart from the
    queue, so that the records go through ``put_many``.)"""
    import json

    write_module(project, "t_poison", TASKS)
    kernel = make_kernel("sqlite", "file", NUVOM_VISIBILITY_TIMEOUT_SECS="1")
    put_many = kernel.results.put_many

    def utf8_only(records: list) -> list[bool]:  # type: ignore[type-arg]
        for record in records:  # what a UTF-8 store's encoder raises
            json.dumps(record.to_dict(), ensure_ascii=False).encode("utf-8")
        return put_many(records)

    monkeypatch.setattr(kernel.results, "put_many", utf8_only)
    with use_kernel(kernel):
        from t_poison import measure  # type: ignore[import-not-found]

        job = measure.delay("a\ud800b")
        fine = measure.delay("fine")
        run_worker_until(kernel, lambda: _drained(kernel, [job.id, fine.id]),
                         "both jobs to finish", timeout=30)
    record = kernel.results.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert "nor can its arguments, options or earlier errors" in (record.error_message or "")
    assert record.args == [] and record.task == "measure"
    assert _runs(project) == ["measure", "measure"], "it ran again"
    assert kernel.results.get(fine.id).result == 4  # type: ignore[union-attr]
