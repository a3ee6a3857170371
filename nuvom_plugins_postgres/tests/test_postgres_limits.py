"""Values PostgreSQL cannot hold are refused by the plugin, naming what and where, before
they reach the server: a lease length no interval holds (the worker then failed every
claim), and a message whose priority, delay, id, queue or task name no column stores (the
server's error named no job, and the kernel wrapped it as advice to check free space)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from pg_support import DSN

import nuvom_plugins_postgres
from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError, EnqueueError
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.testing.contracts import make_message
from nuvom_kernel.values import MAX_SECONDS
from nuvom_plugins_postgres import PostgresQueue, PostgresSettings
from nuvom_plugins_postgres.push import AVAILABLE_AT_MAX, PRIORITY_MAX, PRIORITY_MIN

YEAR = 366 * 86400.0  # the kernel's MAX_SECONDS


# --- visibility_timeout_secs ------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e13", "Infinity", str(YEAR + 1)])
def test_a_lease_no_interval_holds_is_refused_naming_the_variable(
        tmp_path: Path, schema: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:  # infinity: by the kernel, at load
        kernel = Kernel(root=tmp_path, environ={
            "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_PLUGINS__POSTGRES__DSN": DSN,
            "NUVOM_PLUGINS__POSTGRES__SCHEMA": schema,
            "NUVOM_PLUGINS__POSTGRES__VISIBILITY_TIMEOUT_SECS": value})
        try:
            _ = kernel.queue
        finally:
            kernel.close()
    text = str(refused.value)
    assert "NUVOM_PLUGINS__POSTGRES__VISIBILITY_TIMEOUT_SECS" in text
    assert "visibility_timeout_secs" in text
    assert "366 days" in text or "must be a finite number" in text, text


@pytest.mark.parametrize(("settings", "kernels", "named"), [
    # the kernel's value, which the key defaults to
    ({}, math.inf, "NUVOM_VISIBILITY_TIMEOUT_SECS"),
    ({"xmin_warn_secs": math.inf}, 30.0, "NUVOM_PLUGINS__POSTGRES__XMIN_WARN_SECS"),
])
def test_other_intervals_past_a_year_are_refused(settings: dict[str, object],
                                                 kernels: float, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PostgresSettings.parse(settings, BackendContext(visibility_timeout_secs=kernels))


def test_a_lease_of_the_longest_allowed_length_is_claimed(
        settings: dict[str, object], context: BackendContext, schema: str) -> None:
    assert MAX_SECONDS == YEAR
    queue = PostgresQueue.from_settings({**settings, "visibility_timeout_secs": str(YEAR)},
                                        context)
    try:
        queue.enqueue(make_message())
        [lease] = queue.claim(1)
        assert lease.expires_at == pytest.approx(time.time() + YEAR, abs=60)
        assert queue.extend(lease, YEAR)
    finally:
        queue.close()


# --- messages no column stores ------------------------------------------------------------

@pytest.fixture
def chunked(queue: PostgresQueue) -> PostgresQueue:
    """Chunks of three, so a bad message in the fourth chunk follows three sent ones."""
    queue.push_chunk = 3
    return queue


def _bad(field: str, job_id: str) -> tuple[object, str]:
    """A message PostgreSQL cannot store in ``field``, and what the refusal must say."""
    if field == "priority high":
        return make_message(job_id=job_id, priority=PRIORITY_MAX + 1), "2147483647"
    if field == "priority low":
        return make_message(job_id=job_id, priority=PRIORITY_MIN - 1), "-2147483648"
    if field == "delay":
        return make_message(job_id=job_id, available_at=time.time() + 1e13), "delay_secs"
    if field == "nan":
        return make_message(job_id=job_id, available_at=math.nan), "delay_secs"
    if field == "job id":
        return make_message(job_id=job_id + "\x00x"), "job id"
    if field == "queue name":
        return make_message(job_id=job_id, queue="q\x00"), "queue name"
    if field == "task name":
        return make_message(job_id=job_id, task="t\x00"), "task name"
    # a lone surrogate: psycopg's UnicodeEncodeError named no job either
    if field == "job id surrogate":
        return make_message(job_id=job_id + "\ud800"), "job id .* lone surrogate"
    if field == "queue surrogate":
        return make_message(job_id=job_id, queue="q\udfff"), "queue name .* lone surrogate"
    return make_message(job_id=job_id, task="é\ud800"), "task name .* lone surrogate"


FIELDS = ["priority high", "priority low", "delay", "nan", "job id", "queue name",
          "task name", "job id surrogate", "queue surrogate", "task surrogate"]


@pytest.mark.parametrize("field", FIELDS)
def test_an_unstorable_message_in_a_later_chunk_stores_nothing(
        chunked: PostgresQueue, field: str) -> None:
    good = [make_message() for _ in range(10)]
    bad, said = _bad(field, "the-bad-one")
    with pytest.raises(EnqueueError) as refused:
        chunked.push([*good, bad])  # type: ignore[list-item]
    text = str(refused.value)
    assert "'the-bad-one" in text and re.search(said, text) and "Nothing of this push" in text
    assert "free space" not in text
    assert chunked.qsize() == 0
    assert chunked.push(good) == [True] * 10  # the pool's connection is usable again


@pytest.mark.parametrize("field", FIELDS)
def test_an_unstorable_single_message_is_refused(queue: PostgresQueue, field: str) -> None:
    bad, said = _bad(field, "alone")
    with pytest.raises(EnqueueError, match=said):
        queue.push([bad])  # type: ignore[list-item]
    assert queue.qsize() == 0


def test_an_unstorable_message_leaves_the_callers_transaction_usable(
        queue: PostgresQueue) -> None:
    import psycopg

    bad, _ = _bad("priority high", "in-txn")
    with psycopg.connect(DSN) as conn:
        with nuvom_plugins_postgres.transaction(conn):
            with pytest.raises(EnqueueError, match="in-txn"):
                queue.push([bad, make_message()])  # type: ignore[list-item]
            assert queue.push([make_message()]) == [True]
        conn.commit()
    assert queue.qsize() == 1


def test_the_limits_themselves_are_stored(queue: PostgresQueue) -> None:
    edge = [make_message(priority=PRIORITY_MAX), make_message(priority=PRIORITY_MIN),
            make_message(available_at=AVAILABLE_AT_MAX)]
    assert queue.push(edge) == [True] * 3
    assert queue.push([make_message(available_at=AVAILABLE_AT_MAX)]) == [True]
    peeked = queue.peek(edge[2].id)
    assert peeked is not None and peeked.available_at == AVAILABLE_AT_MAX
    assert {le.message.priority for le in queue.claim(5)} == {PRIORITY_MAX, PRIORITY_MIN}
    assert queue.tick() == 0  # the far-off due time does not break the tick's arithmetic


# (A priority past 32 bits, a delay past 366 days, or a queue name holding a NUL or a lone
# surrogate never gets here: apply_async refuses them first, on every backend —
# tests/test_producer_input.py. The push's own checks are tested above with messages built
# by hand, as another producer could send them.)
