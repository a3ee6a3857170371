"""Every metric the plugin exports, defined in one place (``docs/observability.md`` lists
the same names; a test keeps them equal).

Two kinds, for two sources. :class:`JobMetrics` are counters and histograms recorded from
each settled attempt (hook ``nuvom_after_settle``), in the process that settled it.
:class:`LiveCollector` reports state at scrape time from values already in memory: the
worker's slots and busy slots, and the last queue snapshot the exporter's timer took from
the queue backend's ``stats()`` — a scrape never queries the store, however often it comes.

Why the snapshot carries its own freshness: while the store is down the timer cannot
refresh it, and the last good values (the queue depth before the outage) would read as
current. ``nuvom_queue_stats_last_success_timestamp_seconds`` says when it was taken and
``nuvom_queue_stats_errors_total`` counts the reads that failed, so an alert can tell a
quiet queue from a frozen number (``time() - …_timestamp_seconds``, Prometheus's own
``*_last_success_timestamp_seconds`` convention).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nuvom_kernel.backends import QueueStats
from nuvom_kernel.outcome import Outcome

if TYPE_CHECKING:
    from nuvom_kernel.worker import Worker

__all__ = ["BUCKETS", "METRICS", "JobMetrics", "LiveCollector"]

#: Seconds; from a few milliseconds (a fast task, a warm queue) to an hour (a backlog).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 900.0, 3600.0)

#: Exposed name -> help text: what ``/metrics`` shows and the docs list.
METRICS: dict[str, str] = {
    "nuvom_jobs_total": "Attempts this worker settled, by task, queue and status "
                        "(succeeded, failed, retried, timed_out).",
    "nuvom_job_run_seconds": "How long each settled attempt ran, by task and queue.",
    "nuvom_job_wait_seconds": "How long each settled attempt waited in the queue after it "
                              "was due (enqueue, or the end of its delay), by task and queue.",
    "nuvom_queue_depth": "Messages per queue and state (ready, delayed, running), from the "
                         "queue backend's stats() on a timer.",
    "nuvom_oldest_job_age_seconds": "How long the oldest ready message per queue has "
                                    "waited since it became due (0: none ready), from the "
                                    "same timer.",
    "nuvom_queue_stats_last_success_timestamp_seconds":
        "When the queue snapshot behind nuvom_queue_depth and nuvom_oldest_job_age_seconds "
        "was last read from the queue backend (Unix time); older than a few refresh_secs: "
        "the store cannot be read and those values are stale.",
    "nuvom_queue_stats_errors_total": "Reads of the queue backend's stats() that failed "
                                      "(the last good snapshot is kept).",
    "nuvom_worker_slots": "Jobs the workers of this process can run at once.",
    "nuvom_worker_busy_slots": "Slots of this process running a job now.",
    "nuvom_leases_lost_total": "Attempts whose outcome this worker could not settle: it "
                               "lost the lease first (paused or stalled past the visibility "
                               "timeout) or the store failed; another delivery decides.",
}

QUEUE_STATES = ("ready", "delayed", "running")


class JobMetrics:
    """Counters and histograms of settled attempts, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # prometheus_client appends ``_total`` to a counter's name itself.
        self.jobs = Counter("nuvom_jobs", METRICS["nuvom_jobs_total"],
                            ["task", "queue", "status"], registry=registry)
        self.run = Histogram("nuvom_job_run_seconds", METRICS["nuvom_job_run_seconds"],
                             ["task", "queue"], buckets=BUCKETS, registry=registry)
        self.wait = Histogram("nuvom_job_wait_seconds", METRICS["nuvom_job_wait_seconds"],
                              ["task", "queue"], buckets=BUCKETS, registry=registry)
        self.leases_lost = Counter("nuvom_leases_lost", METRICS["nuvom_leases_lost_total"],
                                   registry=registry)

    def observe(self, outcome: Outcome) -> None:
        if outcome.lease_lost:  # not this worker's outcome: another delivery decides
            self.leases_lost.inc()
            return
        task, queue = outcome.task, outcome.queue
        self.jobs.labels(task, queue, outcome.status).inc()
        self.run.labels(task, queue).observe(outcome.run_secs)
        self.wait.labels(task, queue).observe(outcome.wait_secs)


class LiveCollector(Collector):
    """Slots of the workers in this process, and the last queue snapshot."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.snapshot: QueueStats | None = None
        self.snapshot_at = 0.0
        self.errors = 0  # failed reads of stats(), counted by the exporter's one timer

    def take(self, stats: QueueStats) -> None:
        self.snapshot, self.snapshot_at = stats, time.time()  # one swap: scrapes see either

    def failed(self) -> None:
        """A read of ``stats()`` failed: the snapshot stays, and ages."""
        self.errors += 1

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        workers = list(self.workers)
        yield GaugeMetricFamily("nuvom_worker_slots", METRICS["nuvom_worker_slots"],
                                value=sum(w.workers for w in workers))
        yield GaugeMetricFamily("nuvom_worker_busy_slots", METRICS["nuvom_worker_busy_slots"],
                                value=sum(w.busy_slots for w in workers))
        depth = GaugeMetricFamily("nuvom_queue_depth", METRICS["nuvom_queue_depth"],
                                  labels=["queue", "state"])
        oldest = GaugeMetricFamily("nuvom_oldest_job_age_seconds",
                                   METRICS["nuvom_oldest_job_age_seconds"], labels=["queue"])
        snapshot = self.snapshot
        for queue, counts in sorted((snapshot.queues if snapshot else {}).items()):
            for state in QUEUE_STATES:
                depth.add_metric([queue, state], getattr(counts, state))
            oldest.add_metric([queue], counts.oldest_ready_age_secs or 0.0)
        yield depth
        yield oldest
        taken = GaugeMetricFamily("nuvom_queue_stats_last_success_timestamp_seconds",
                                  METRICS["nuvom_queue_stats_last_success_timestamp_seconds"])
        if snapshot is not None:  # none yet: no sample (absent()), rather than 1970
            taken.add_metric([], self.snapshot_at)
        yield taken
        yield CounterMetricFamily("nuvom_queue_stats_errors",
                                  METRICS["nuvom_queue_stats_errors_total"], value=self.errors)
