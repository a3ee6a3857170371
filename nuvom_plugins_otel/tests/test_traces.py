"""Traces across real processes: a producer process enqueues, a ``nuvom runworker``
process runs the jobs; each configures the OpenTelemetry SDK with an exporter writing its
spans to a file (an in-memory exporter cannot see another process), and the test reads
both files: one producer span per job, one consumer span per attempt (a retry is a second
one), linked to the producer — or its child, with ``consumer_parent``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_plugins_otel import plugin

TASKS = """
from nuvom_kernel import current_job, task

@task
def ping(i):
    return i

@task(retries=1, retry_delay_secs=0)
def flaky():
    if current_job().attempts == 1:
        raise ValueError("first attempt fails")
    return "ok"
"""

#: A local plugin both processes load (``[plugins] hooks``): the SDK, exporting to a file.
SETUP = """
import os
from nuvom_kernel import hookimpl

@hookimpl
def nuvom_configure(config):
    spans = os.environ.get("SPANS_DIR")
    if not spans:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(os.path.join(spans, f"{os.getpid()}.jsonl"), "a", encoding="utf-8")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
        out=out, formatter=lambda span: span.to_json(indent=None) + "\\n")))
    trace.set_tracer_provider(provider)
"""

PRODUCER = """
import json, o_tasks
jobs = [o_tasks.ping.delay(i) for i in range(3)] + [o_tasks.flaky.delay()]
print(json.dumps([j.id for j in jobs]))
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as cwd, importable, no ``NUVOM_*`` from the caller."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in os.environ if k.startswith("NUVOM_")]:
        monkeypatch.delenv(key)
    return tmp_path


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update({"SPANS_DIR": str(project / "spans"), "NUVOM_QUEUE_BACKEND": "sqlite",
                "NUVOM_RESULT_BACKEND": "sqlite", "NUVOM_RETRY_DELAY_SECS": "0", **extra})
    return env


def _spans(project: Path) -> list[dict[str, Any]]:
    found = []
    for path in (project / "spans").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                span = json.loads(line)
                span["pid"] = int(path.stem)
                found.append(span)
    return found


def _of(spans: list[dict[str, Any]], kind: str, job_id: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["kind"] == f"SpanKind.{kind}"
                   and s["attributes"].get("messaging.message.id") == job_id),
                  key=lambda s: s["attributes"].get("nuvom.attempt", 0))


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["thread", "process"])
@pytest.mark.parametrize("consumer_parent", [False, True], ids=["link", "parent"])
def test_producer_and_consumer_spans_across_processes(project: Path, consumer_parent: bool,
                                                      pool: str) -> None:
    (project / "spans").mkdir()
    (project / "o_tasks.py").write_text(TASKS)
    (project / "otel_setup.py").write_text(SETUP)
    (project / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["otel_setup"]\n')
    produced = subprocess.run([sys.executable, "-c", PRODUCER], cwd=project,
                              env=_env(project), capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    job_ids = json.loads(produced.stdout)
    flaky = job_ids[-1]

    worker_env = _env(project, NUVOM_PLUGINS__OTEL__CONSUMER_PARENT=str(consumer_parent))
    worker = subprocess.Popen([sys.executable, "-m", "nuvom_kernel", "runworker", "-w", "2",
                               "--pool", pool],
                              cwd=project, env=worker_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while sum(s["kind"] == "SpanKind.CONSUMER" for s in _spans(project)) < 5:
            assert time.monotonic() < deadline, "5 consumer spans (4 jobs, one retried)"
            assert worker.poll() is None, worker.communicate()[0]
            time.sleep(0.05)
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out

    spans = _spans(project)
    for job_id in job_ids:
        (producer,) = _of(spans, "PRODUCER", job_id)
        consumers = _of(spans, "CONSUMER", job_id)
        assert len(consumers) == (2 if job_id == flaky else 1)
        assert producer["name"] == "send default"
        assert producer["attributes"]["messaging.system"] == "nuvom"
        assert producer["attributes"]["messaging.destination.name"] == "default"
        for attempt, consumer in enumerate(consumers, start=1):
            assert consumer["pid"] == worker.pid != producer["pid"]  # the pool's parent
            assert consumer["name"] == "process default"
            attributes = consumer["attributes"]
            assert (attributes["messaging.system"], attributes["messaging.operation.type"],
                    attributes["messaging.destination.name"], attributes["nuvom.attempt"]) \
                == ("nuvom", "process", "default", attempt)
            linked = [link["context"] for link in consumer["links"]]
            if consumer_parent:
                assert consumer["parent_id"] == producer["context"]["span_id"]
                assert consumer["context"]["trace_id"] == producer["context"]["trace_id"]
                assert linked == []
            else:
                assert consumer["parent_id"] is None, "a trace of its own"
                assert [(c["trace_id"], c["span_id"]) for c in linked] == \
                    [(producer["context"]["trace_id"], producer["context"]["span_id"])]
    first, retry = _of(spans, "CONSUMER", flaky)
    assert first["status"]["status_code"] == "ERROR"
    assert first["attributes"]["error.type"] == "ValueError"
    assert any(e["name"] == "exception" for e in first["events"])
    assert retry["status"]["status_code"] == "UNSET"


def test_idle_without_an_sdk(project: Path) -> None:
    """No tracer provider configured in this process: no span, no header, no cost."""
    (project / "i_tasks.py").write_text("from nuvom_kernel import task\n"
                                        "@task\ndef idle_ping():\n    return 1\n")
    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory"})
    with use_kernel(kernel):
        import i_tasks

        assert not plugin.tracing.active()
        job = i_tasks.idle_ping.delay()
        assert job.headers == {}
    kernel.close()
