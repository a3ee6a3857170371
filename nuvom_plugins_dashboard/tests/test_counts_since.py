"""``ResultBackend.counts_since`` (the overview's "last 5 / 60 minutes") on every installed
result backend agrees with the base class's paging default, which it replaces with one
query where the store can."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dash_fixtures import project as project  # a fixture
from dash_helpers import record

from nuvom_kernel.backends import ResultBackend
from nuvom_kernel.config import load_config
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobStatus
from nuvom_kernel.plugins import NuvomPluginManager


def _installed() -> list[str]:
    pm = NuvomPluginManager()
    pm.load(load_config(Path(__file__).parent, {}), environ={})
    found = set(pm.collect("nuvom_register_result_backends"))
    return [b for b in ("memory", "file", "sqlite", "redis", "postgres") if b in found]


@pytest.fixture(params=_installed())
def results(request: pytest.FixtureRequest, project: Path) -> Iterator[ResultBackend]:
    # A test namespace (``nuvom-test-``): the server plugins remove it when this process,
    # which creates it, exits; ``dash-…`` left a schema and a key behind every run.
    environ = {"NUVOM_QUEUE_BACKEND": "memory", "NUVOM_RESULT_BACKEND": request.param,
               "NUVOM_NAMESPACE": f"nuvom-test-dash-{uuid.uuid4().hex[:10]}"}
    kernel = Kernel(root=project, environ=environ)
    yield kernel.results
    kernel.results.purge(time.time() + 3600)  # every record here is finished
    kernel.close()


def test_counts_since_agrees_with_the_paging_default(results: ResultBackend) -> None:
    now = time.time()
    records = [record(f"j{i}", JobStatus.SUCCEEDED if i % 3 else JobStatus.FAILED,
                      queue=f"q{i % 2}", updated_at=now - i * 100) for i in range(1100)]
    results.put_many(records)
    since = now - 100_000  # 1001 of them: across the default's 1000-record pages
    expected: dict[str, dict[str, int]] = {}
    for r in records:
        if r.updated_at >= since:
            per_queue = expected.setdefault(r.queue, {})
            per_queue[r.status.value] = per_queue.get(r.status.value, 0) + 1
    assert sum(n for q in expected.values() for n in q.values()) == 1001
    assert results.counts_since(since) == expected
    assert ResultBackend.counts_since(results, since) == expected
    assert results.counts_since(now + 1) == {}
