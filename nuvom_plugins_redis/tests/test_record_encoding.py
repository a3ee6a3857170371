"""The stored record JSON (orjson, with the standard library as fallback) reads back as the
standard library's would, and refuses what it refuses."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_plugins_redis import RedisResultBackend
from nuvom_plugins_redis.results import _encode, record_json


def _record(**fields: object) -> JobRecord:
    now = time.time()
    values: dict[str, object] = dict(
        job_id="enc-1", task="tasks.add", status=JobStatus.SUCCEEDED, args=[1, 2.5],
        kwargs={"k": "é\u2028\x00"}, module="tasks", options={"retries": 0, "tags": []},
        result={"n": [None, True, 1e16, -0.0]}, attempts=1, created_at=now,
        started_at=now, finished_at=now, updated_at=now, worker="h:1", trace_id="t",
        token="tok")
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("result", [3, None, 10**30, "\ud800", {"deep": [[[1]]]}])
def test_the_json_decodes_as_the_standard_librarys(result: object) -> None:
    data = _record(result=result).to_dict()
    assert json.loads(record_json(data)) == json.loads(_encode(data))


def test_a_big_integer_round_trips_through_the_backend(results: RedisResultBackend) -> None:
    record = _record(result=10**30)  # past orjson's 64 bits: the standard library encodes it
    assert results.put(record)
    stored = results.get(record.job_id)
    assert stored is not None and stored.to_dict() == record.to_dict()


@pytest.mark.parametrize("value", [dt.datetime(2030, 1, 1), {1, 2}])
def test_a_value_json_cannot_carry_is_refused(results: RedisResultBackend,
                                               value: object) -> None:
    with pytest.raises(SerializationError, match="not JSON-native"):
        results.put(_record(result=value))
    assert results.get("enc-1") is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.5, float("-inf")],
                                   {"k": [None, float("nan")]}])
def test_nan_and_infinity_are_refused_as_the_sqlite_backend_does(
        results: RedisResultBackend, value: object) -> None:
    """orjson writes them as ``null``: stored, they would read back as ``None``."""
    with pytest.raises(SerializationError, match="not JSON-native"):
        results.set_result("enc-1", value, task="t")
    assert results.get("enc-1") is None
    with pytest.raises(SerializationError):
        results.put(_record(updated_at=float("nan")))


@pytest.mark.parametrize("value", [b"raw", bytearray(b"raw"), [memoryview(b"raw")]])
def test_bytes_are_refused_with_the_kernels_error(results: RedisResultBackend,
                                                  value: object) -> None:
    with pytest.raises(SerializationError, match="not JSON-native"):
        results.set_result("enc-1", value, task="t")
    assert results.get("enc-1") is None


@pytest.mark.parametrize("result", [None, {"k": None, "n": [None, 1.5]}, "null", 0.5])
def test_none_where_json_has_null_still_round_trips(results: RedisResultBackend,
                                                     result: object) -> None:
    assert results.set_result("enc-1", result, task="t")
    assert results.get_result("enc-1") == result


def test_counts_since_reads_each_records_own_queue(results: RedisResultBackend) -> None:
    """Redis counted by decoding every record of the window (``query``'s pages): 2-3 s per
    refresh of the dashboard's overview with 50,000 records. It cuts the queue out of the
    stored JSON now: the top-level key, never a ``queue`` among the arguments, escapes
    decoded."""
    import time

    from nuvom_kernel.models import JobRecord, JobStatus

    now = time.time()
    results.put_many([
        JobRecord(job_id="a", task="t", status=JobStatus.SUCCEEDED, queue='say "hi"\\',
                  args=[{"queue": "not-this-one"}], updated_at=now),
        JobRecord(job_id="b", task='t "queue":"x"', status=JobStatus.FAILED,
                  queue="émails", updated_at=now),
        JobRecord(job_id="c", task="t", status=JobStatus.FAILED, queue="émails",
                  updated_at=now - 3600),
    ])
    assert results.counts_since(now - 60) == {'say "hi"\\': {"SUCCEEDED": 1},
                                              "émails": {"FAILED": 1}}
    assert results.counts_since(now - 7200) == {'say "hi"\\': {"SUCCEEDED": 1},
                                                "émails": {"FAILED": 2}}
