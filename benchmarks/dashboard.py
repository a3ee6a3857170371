"""The dashboard's pages with 1,000,000 job records on SQLite: latency per page, p50 / p95.

Run from the repository root (the store is built once, ~1-2 min, and reused)::

    python -m benchmarks.dashboard                 # --records 1000000 --requests 60
    python -m benchmarks.dashboard --json          # rows to benchmarks/results/

One SQLite store under ``benchmarks/results/dashboard-<records>/`` gets ``--records`` job
records through the result backend's ``put_many`` (what workers write): 85 % SUCCEEDED, 10 %
FAILED (with a traceback), 5 % RETRYING, 20 tasks, 4 queues, ``updated_at`` spread over the
last 7 days (so "last 60 minutes" holds ~6,000). A real ``nuvom dashboard`` process serves
it; one keep-alive HTTP connection over loopback times each page, after warm-up requests:

* ``/jobs``, ``/jobs?status=failed``, ``/jobs?task=…``, ``/jobs?status=failed&task=…``:
  the first page (50 rows, newest first);
* ``/jobs … page 200``: the 200th page of ``/jobs``, through its ``after`` cursor (keyset:
  it should cost what page 1 costs);
* ``/jobs?queue=…``: the queue filter (applied to pages of records, a bounded scan);
* ``/`` the overview (queue stats and the 5 / 60 minute counts); ``/jobs/<id>`` one job.

The time is the client's: request sent to the last byte read (HTML rendering included).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nuvom_kernel.config import load_config
from nuvom_kernel.envelope import options_to_wire
from nuvom_kernel.kernel import Kernel
from nuvom_kernel.models import JobRecord, JobStatus, TaskOptions

ROOT = Path(__file__).resolve().parent / "results"
ENV = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
       "NUVOM_LOG_LEVEL": "WARNING"}
TRACEBACK = ("Traceback (most recent call last):\n"
             + '  File "/srv/app/tasks.py", line 42, in charge\n    gateway.charge(order)\n' * 8
             + "RuntimeError: payment gateway refused the order\n")


def _record(i: int, now: float, rng: random.Random) -> JobRecord:
    roll = rng.random()
    status = (JobStatus.SUCCEEDED if roll < 0.85 else JobStatus.FAILED if roll < 0.95
              else JobStatus.RETRYING)
    updated = now - rng.random() * 7 * 86400
    queue = f"q{i % 4}"
    failed = status is not JobStatus.SUCCEEDED
    return JobRecord(
        job_id=f"{i:08d}-{rng.getrandbits(64):016x}", task=f"tasks.t{i % 20}",
        status=status, queue=queue, args=[i, f"order-{i}"], kwargs={"retry": True},
        module="tasks", options=options_to_wire(TaskOptions(queue=queue, retries=2)),
        result=None if failed else {"ok": i}, attempts=1,
        error_type="RuntimeError" if failed else None,
        error_message="payment gateway refused the order" if failed else None,
        traceback=TRACEBACK if failed else None, created_at=updated - 2,
        started_at=updated - 0.05, finished_at=updated, updated_at=updated,
        worker="host:1234")


def build(project: Path, records: int) -> None:
    """Fill the store once; a store with the right count is reused."""
    kernel = Kernel(load_config(project, ENV), environ=ENV)
    try:
        have = sum(kernel.results.counts().values())
        if have == records:
            return
        if have:
            raise SystemExit(f"{project} holds {have} records, not {records}: delete it")
        rng, now, started = random.Random(19), time.time(), time.perf_counter()
        for start in range(0, records, 5000):
            kernel.results.put_many([_record(i, now, rng)
                                     for i in range(start, min(records, start + 5000))])
        print(f"stored {records:,} records in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    finally:
        kernel.close()


def serve(project: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "dashboard", "--port", "0"],
                            cwd=project, env={**_clean_env(), **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+/) ", line)
    if not match:
        proc.kill()
        raise SystemExit(f"nuvom dashboard did not start: {line}{proc.stdout.read()}")
    return proc, match.group(1)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}


def timed(conn: http.client.HTTPConnection, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status}\n{body[:500]}")
    return elapsed, body


def deep_page(conn: http.client.HTTPConnection, pages: int) -> str:
    """The path of page ``pages`` of ``/jobs``, following each page's ``older`` link."""
    path = "/jobs"
    for _ in range(pages - 1):
        _, body = timed(conn, path)
        path = re.search(r'<a rel="next" href="([^"]+)"', body).group(1)  # type: ignore
        path = path.replace("&amp;", "&")
    return path


def measure(url: str, requests: int, warmup: int) -> list[dict[str, Any]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.connect()  # no Nagle delay on small requests (as browsers and curl do)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _, first = timed(conn, "/jobs?status=failed")
    some_id = re.search(r'<a href="/jobs/([^"]+)"><code>', first).group(1)  # type: ignore
    pages = {
        "/jobs": "/jobs",
        "/jobs?status=failed": "/jobs?status=failed",
        "/jobs?task=tasks.t7": "/jobs?task=tasks.t7",
        "/jobs?status=failed&task=tasks.t7": "/jobs?status=failed&task=tasks.t7",
        "/jobs page 200 (after=cursor)": deep_page(conn, 200),
        "/jobs?queue=q3": "/jobs?queue=q3",
        "/jobs?status=failed&queue=q3": "/jobs?status=failed&queue=q3",
        "/ (overview)": "/",
        "/jobs/<id>": f"/jobs/{some_id}",
    }
    rows = []
    for name, path in pages.items():
        for _ in range(warmup):
            timed(conn, path)
        times = sorted(timed(conn, path)[0] for _ in range(requests))
        rows.append({"page": name, "p50_ms": statistics.median(times),
                     "p95_ms": times[max(0, round(0.95 * len(times)) - 1)],
                     "max_ms": times[-1], "requests": requests})
    conn.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    project = ROOT / f"dashboard-{args.records}"
    project.mkdir(parents=True, exist_ok=True)
    build(project, args.records)
    proc, url = serve(project)
    try:
        rows = measure(url, args.requests, args.warmup)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(f"\n{args.records:,} job records on SQLite, {args.requests} requests per page\n")
    print("| page | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| `{row['page']}` | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
              f"{row['max_ms']:.1f} |")
    if args.json:
        out = ROOT / f"dashboard-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"records": args.records, "rows": rows}, indent=2))
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
