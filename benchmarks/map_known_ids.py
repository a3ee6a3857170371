"""``.map(job_ids=...)``: the lookup of ids already recorded, batched or one ``get`` each.

Before it pushes a batch whose ids the caller chose, the producer asks the result backend
which of them have records (a finished job keeps its id, so it is not pushed again). Asked
with one :meth:`~nuvom_kernel.backends.ResultBackend.known` call, a backend answers in one
query per chunk; the default, kept for third-party backends, is a ``get`` per id: a round
trip each on a server. Run from the repository root, Redis and PostgreSQL on 127.0.0.1::

    python -m benchmarks.map_known_ids --backends sqlite redis postgres --rounds 3

Each round measures both ways on fresh namespaces (``nuvom-test-…``, which the plugins
delete when the process exits), interleaved; the medians are printed (wall clock, jobs/s).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from nuvom_kernel import task
from nuvom_kernel.backends import ResultBackend
from nuvom_kernel.kernel import Kernel, use_kernel


@task(name="bench_known.add")
def add(x: int, y: int) -> int:
    return x + y


def measure(backend: str, per_id: bool, jobs: int, root: Path) -> float:
    """jobs/s of one ``.map()`` of ``jobs`` items with new ids the caller chose."""
    namespace = f"nuvom-test-known-{uuid.uuid4().hex[:10]}"
    kernel = Kernel(root=root, environ={
        "NUVOM_QUEUE_BACKEND": backend, "NUVOM_RESULT_BACKEND": backend,
        "NUVOM_NAMESPACE": namespace, "NUVOM_DATA_DIR": str(root / namespace)})
    try:
        with use_kernel(kernel):
            if per_id:  # the base class's default: a get per id
                kernel.results.known = functools.partial(  # type: ignore[method-assign]
                    ResultBackend.known, kernel.results)
            add.map([(1, 2)] * 200, job_ids=[f"warm-{i}" for i in range(200)])
            ids = [f"{namespace}-{i}" for i in range(jobs)]
            start = time.perf_counter()
            add.map([(i, i) for i in range(jobs)], job_ids=ids)
            return jobs / (time.perf_counter() - start)
    finally:
        kernel.queue.clear()
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "redis", "postgres"])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nuvom-known-") as folder:
        root = Path(folder)
        for backend in args.backends:
            runs: dict[str, list[float]] = {"a get per id": [], "known()": []}
            for _ in range(args.rounds):
                for label, rates in runs.items():
                    rates.append(measure(backend, label == "a get per id", args.jobs, root))
            print(f"{backend:10}" + "".join(
                f"  {label}: {statistics.median(rates):>9,.0f} jobs/s"
                for label, rates in runs.items()))


if __name__ == "__main__":
    main()
