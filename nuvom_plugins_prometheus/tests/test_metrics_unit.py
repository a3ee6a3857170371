"""The recording side on its own: each outcome lands in exactly one series, a lost lease
only in ``nuvom_leases_lost_total``; the plugin is idle without a port; queue snapshots
come from a real backend's ``stats()`` and say how old they are; a bind failure names the
setting to change."""

from __future__ import annotations

import errno
import sqlite3
import time
from pathlib import Path

import pytest
from prom_helpers import project as project  # the fixture
from prom_helpers import sample, scrape, wait_until
from prometheus_client import CollectorRegistry

from nuvom_kernel import Worker, hookimpl
from nuvom_kernel.errors import PluginConfigError, WorkerPrepareError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import JobRecord, JobStatus, Lease, Message, Settlement
from nuvom_kernel.outcome import Outcome
from nuvom_kernel.values import MAX_SECONDS
from nuvom_plugins_prometheus import plugin
from nuvom_plugins_prometheus.exporter import Exporter
from nuvom_plugins_prometheus.metrics import JobMetrics
from nuvom_plugins_prometheus.settings import PrometheusSettings


def _outcome(status: JobStatus, landed: bool = True, kind: str = "error",
             retry_in: float | None = None) -> Outcome:
    now = time.time()
    message = Message(id="j1", body=b"", created_at=now - 10, available_at=now - 4,
                      failures=0)
    record = JobRecord(job_id="j1", task="tasks.add", status=status, queue="q",
                       attempts=1, created_at=now - 10, started_at=now - 3,
                       finished_at=now - 1, updated_at=now - 1,
                       history=[{"attempt": 1, "kind": kind}])
    return Outcome(Settlement(Lease(message, "t", 2, now + 30), record, retry_in=retry_in),
                   landed)


def test_each_outcome_is_counted_once_with_its_times() -> None:
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    outcome = _outcome(JobStatus.SUCCEEDED)
    assert (outcome.status, round(outcome.wait_secs), round(outcome.run_secs)) == \
        ("succeeded", 1, 2), "waits from when it was due, runs from start to finish"
    assert outcome.deliveries_without_outcome == 1
    metrics.observe(outcome)
    metrics.observe(_outcome(JobStatus.RETRYING, retry_in=1.0))
    metrics.observe(_outcome(JobStatus.FAILED, kind="timeout"))
    metrics.observe(_outcome(JobStatus.FAILED))
    metrics.observe(_outcome(JobStatus.SUCCEEDED, landed=False))
    labels = {"task": "tasks.add", "queue": "q"}
    for status in ("succeeded", "retried", "timed_out", "failed"):
        assert registry.get_sample_value("nuvom_jobs_total", {**labels, "status": status}) \
            == 1, status
    assert registry.get_sample_value("nuvom_leases_lost_total") == 1
    assert registry.get_sample_value("nuvom_job_run_seconds_count", labels) == 4
    assert registry.get_sample_value("nuvom_job_wait_seconds_sum", labels) == \
        sum(_outcome(JobStatus.SUCCEEDED).wait_secs for _ in range(4))


def test_idle_without_a_port(project: Path) -> None:
    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory"})
    with use_kernel(kernel):
        worker = Worker(kernel, workers=1)
        worker.start()
        try:
            assert plugin.current_exporter() is None
            # idle: no per-job hook at all, so the settler builds nothing for metrics
            assert not kernel.pm.hook.nuvom_after_settle.get_hookimpls()
        finally:
            worker.stop()
            worker.join()


def test_an_in_process_worker_serves_and_stops_serving(project: Path) -> None:
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
           "NUVOM_PLUGINS__PROMETHEUS__PORT": "0",
           "NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS": "0.05"}
    (project / "u_tasks.py").write_text("from nuvom_kernel import task\n"
                                        "@task\ndef u_add(x, y):\n    return x + y\n")
    kernel = Kernel(root=project, environ=env)
    with use_kernel(kernel):
        import u_tasks

        u_tasks.u_add.apply_async((1, 2), queue="idle")  # a queue the worker does not serve
        worker = Worker(kernel, workers=3, queues=["default"])
        worker.start()
        try:
            exporter = plugin.current_exporter()
            assert exporter is not None and exporter.port
            registry = exporter.registry
            wait_until(lambda: registry.get_sample_value(
                "nuvom_queue_depth", {"queue": "idle", "state": "ready"}) == 1, 10,
                "a queue snapshot")
            assert registry.get_sample_value("nuvom_worker_slots") == 3
            assert [impl.plugin_name for impl in
                    kernel.pm.hook.nuvom_after_settle.get_hookimpls()] == [plugin.RECORDER]
        finally:
            worker.stop()
            worker.join()
        assert plugin.current_exporter() is None, "the last worker's stop closes it"
        assert kernel.pm.get_plugin(plugin.RECORDER) is None, "and unregisters its recorder"
    kernel.close()


class _Refuses:
    """A plugin whose prepare fails after Prometheus's has served (``trylast``)."""

    @hookimpl(trylast=True)
    def nuvom_worker_prepare(self, worker: Worker) -> None:
        raise RuntimeError("no licence for this worker")


def test_a_worker_that_fails_to_start_gives_back_the_port_and_the_recorder(
        project: Path) -> None:
    kernel = Kernel(root=project, environ={"NUVOM_QUEUE_BACKEND": "memory",
                                           "NUVOM_RESULT_BACKEND": "memory",
                                           "NUVOM_PLUGINS__PROMETHEUS__PORT": "0"})
    kernel.pm.register(_Refuses(), name="refuses")
    with use_kernel(kernel):
        worker = Worker(kernel, workers=1)
        with pytest.raises(WorkerPrepareError, match=r"plugin 'refuses'.*no licence"):
            worker.start()
    assert plugin.current_exporter() is None, "the exporter it opened is closed"
    assert kernel.pm.get_plugin(plugin.RECORDER) is None, "and its recorder unregistered"
    kernel.close()


def test_while_the_store_cannot_be_read_the_snapshot_says_how_old_it_is(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last good snapshot is kept while ``stats()`` fails (a dropped series would read
    as an empty queue); its timestamp stops advancing and the failures are counted, so an
    alert can tell a frozen number from a quiet queue."""
    env = {"NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite",
           "NUVOM_PLUGINS__PROMETHEUS__PORT": "0",
           # the timer reads once, at start; the test drives every later read (poll())
           "NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS": "3600"}
    kernel = Kernel(root=project, environ=env)
    kernel.queue.enqueue(Message(id="later", body=b"{}", queue="reports",
                                 available_at=time.time() + 3600))
    stamp = "nuvom_queue_stats_last_success_timestamp_seconds"
    with use_kernel(kernel):
        worker = Worker(kernel, workers=1, queues=["default"])
        worker.start()
        try:
            exporter = plugin.current_exporter()
            assert exporter is not None and exporter.port
            port = exporter.port
            first = wait_until(lambda: sample(scrape(port), stamp), 10, "the first snapshot")
            assert isinstance(first, float) and abs(first - time.time()) < 60
            assert sample(scrape(port), "nuvom_queue_stats_errors_total") == 0

            stats = kernel.queue.stats

            def down() -> None:
                raise sqlite3.OperationalError("unable to open database file")

            monkeypatch.setattr(kernel.queue, "stats", down)
            assert exporter.poll() is False and exporter.poll() is False
            s = scrape(port)
            assert sample(s, "nuvom_queue_stats_errors_total") == 2
            assert sample(s, stamp) == first, "a failed read does not refresh it"
            assert sample(s, "nuvom_queue_depth", queue="reports", state="delayed") == 1

            monkeypatch.setattr(kernel.queue, "stats", stats)  # the store is back
            assert exporter.poll() is True
            s = scrape(port)
            assert (sample(s, stamp) or 0) > first
            assert sample(s, "nuvom_queue_stats_errors_total") == 2
        finally:
            worker.stop()
            worker.join()
    kernel.close()


@pytest.mark.parametrize(("host", "says"), [
    ("192.0.2.1", "it is not an address of this machine"),  # TEST-NET-1: never assigned
    ("metrics.invalid", "the name does not resolve"),  # .invalid never resolves (RFC 6761)
    ("a" * 64 + ".example", "the name does not resolve"),  # a label IDNA cannot encode
])
def test_a_wrong_host_is_reported_as_the_host_setting(host: str, says: str) -> None:
    exporter = Exporter(PrometheusSettings(port=0, host=host))
    with pytest.raises(PluginConfigError) as refused:
        exporter.serve()
    message = str(refused.value)
    assert f"[plugins.prometheus] host={host!r} (NUVOM_PLUGINS__PROMETHEUS__HOST)" in message
    assert says in message
    assert "holds that port" not in message and "port=" not in message


def test_a_refused_bind_is_reported_as_a_permission() -> None:
    from nuvom_plugins_prometheus.exporter import bind_error

    message = bind_error("0.0.0.0", 80, PermissionError(errno.EACCES, "Permission denied"))
    assert "permission denied (Permission denied)" in message
    assert "[plugins.prometheus] port=80 (NUVOM_PLUGINS__PROMETHEUS__PORT)" in message
    assert "holds that port" not in message
    in_use = bind_error("127.0.0.1", 9464, OSError(errno.EADDRINUSE, "Address already in use"))
    assert "Another process (another worker?) holds that port" in in_use


@pytest.mark.parametrize("value", [float("inf"), 1e10, MAX_SECONDS + 1.0, float("nan"), 0.0])
def test_a_refresh_interval_python_cannot_wait_is_refused_by_name(value: float) -> None:
    """``inf`` and ``1e10`` passed ``> 0``, then the refresh thread died on its first wait
    (``OverflowError``) and the queue gauges were never refreshed; 366 days still passes."""
    with pytest.raises(PluginConfigError) as refused:
        PrometheusSettings.parse({"port": 0, "refresh_secs": value})
    message = str(refused.value)
    assert f"[plugins.prometheus] refresh_secs={value!r} " \
           "(NUVOM_PLUGINS__PROMETHEUS__REFRESH_SECS) is invalid" in message
    assert f"at most {MAX_SECONDS} seconds (366 days)" in message
    longest = PrometheusSettings.parse({"port": 0, "refresh_secs": float(MAX_SECONDS)})
    assert longest.refresh_secs == MAX_SECONDS
