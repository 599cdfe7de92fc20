"""Prometheus metrics: the dashboard's ``/metrics`` and the worker's ``--metrics-port``.

Dashboard (the database's view, any number of workers):

- ``taskdb_jobs{queue,status}`` and ``taskdb_queue_lag_seconds{queue}``, read at
  each scrape (:meth:`taskdb.Admin.stats`);
- ``taskdb_jobs_completed_total{queue}``, ``taskdb_jobs_failed_total{queue}`` and
  ``taskdb_job_run_seconds{queue}`` (histogram, from a job's ``claimed`` change
  to its end), counted from the change feed since the first scrape.

Worker (one process): ``taskdb_worker_slots{queue}``, ``..._slots_busy``,
``..._jobs_total{queue,outcome}`` and ``..._handler_seconds_total`` from
:meth:`taskdb.JobQueueServer.stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from taskdb.admin import Admin
from taskdb.core.jobs import ChangeKind, JobChange
from taskdb.errors import ConfigurationError
from taskdb.queue import ServerStats
from taskdb.store import DatabaseStats

if TYPE_CHECKING:
    from prometheus_client import Metric

    from taskdb.web.broadcast import Broadcaster

log = logging.getLogger("taskdb.web")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
_CLAIMS_KEPT = 100_000
_ENDED = (ChangeKind.COMPLETED, ChangeKind.FAILED, ChangeKind.RETRIED, ChangeKind.ABORTED)


class _Snapshot(Collector):
    """Yields the gauges of one :class:`DatabaseStats`."""

    def __init__(self, stats: DatabaseStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "taskdb_jobs", "Jobs by queue and status", labels=["queue", "status"]
        )
        lag = GaugeMetricFamily(
            "taskdb_queue_lag_seconds",
            "How long the oldest job ready to run has waited (0: none waiting)",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "taskdb_queue_paused", "1 when the queue is paused", labels=["queue"]
        )
        for q in self.stats.queues:
            for status, n in sorted(q.counts.items()):
                jobs.add_metric([q.queue, status], n)
            lag.add_metric([q.queue], q.oldest_pending_seconds or 0.0)
            paused.add_metric([q.queue], 1.0 if q.paused else 0.0)
        blobs = GaugeMetricFamily("taskdb_blob_bytes", "Bytes held by committed blobs")
        blobs.add_metric([], self.stats.blobs.bytes)
        yield from (jobs, lag, paused, blobs)


class DashboardMetrics:
    """The dashboard's metrics (see the module docstring)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.registry = CollectorRegistry(auto_describe=True)
        self.completed = Counter(
            "taskdb_jobs_completed", "Jobs completed", ["queue"], registry=self.registry
        )
        self.failed = Counter(
            "taskdb_jobs_failed", "Jobs failed for good", ["queue"], registry=self.registry
        )
        self.run_seconds = Histogram(
            "taskdb_job_run_seconds",
            "Seconds from a job's claim to the end of that attempt",
            ["queue"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self._claimed: OrderedDict[int, datetime] = OrderedDict()
        self._following: asyncio.Task[None] | None = None

    def count(self, change: JobChange) -> None:
        """Account for one change of the feed."""
        if change.kind is ChangeKind.CLAIMED:
            self._claimed[change.job_id] = change.at
            if len(self._claimed) > _CLAIMS_KEPT:
                self._claimed.popitem(last=False)
            return
        if change.kind not in _ENDED:
            return
        if change.kind is ChangeKind.COMPLETED:
            self.completed.labels(change.queue).inc()
        elif change.kind is not ChangeKind.RETRIED:
            self.failed.labels(change.queue).inc()
        started = self._claimed.pop(change.job_id, None)
        if started is not None:
            seconds = max(0.0, (change.at - started).total_seconds())
            self.run_seconds.labels(change.queue).observe(seconds)

    def follow(self, broadcaster: Broadcaster) -> None:
        """Start counting the feed's changes (once; on the first scrape)."""
        if self._following is not None and not self._following.done():
            return

        async def run() -> None:
            while True:
                with contextlib.suppress(Exception):
                    async for change in broadcaster.changes():
                        self.count(change)
                await asyncio.sleep(1.0)  # dropped or the feed failed: follow again

        self._following = asyncio.ensure_future(run())

    async def aclose(self) -> None:
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
            self._following = None

    async def render(self) -> bytes:
        """The Prometheus text of a scrape."""
        stats = await self.admin.stats()
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Snapshot(stats))
        return generate_latest(scrape) + generate_latest(self.registry)


class WorkerCollector(Collector):
    """The counters of a worker process's queue servers (``taskdb worker --metrics-port``)."""

    def __init__(self, stats: Callable[[], Iterable[ServerStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily("taskdb_worker_slots", "Concurrent slots", labels=["queue"])
        busy = GaugeMetricFamily(
            "taskdb_worker_slots_busy", "Slots running a handler now", labels=["queue"]
        )
        jobs = CounterMetricFamily(
            "taskdb_worker_jobs",
            "Attempts this worker ran, by outcome",
            labels=["queue", "outcome"],
        )
        seconds = CounterMetricFamily(
            "taskdb_worker_handler_seconds", "Seconds spent in handlers", labels=["queue"]
        )
        for s in self._stats():
            slots.add_metric([s.queue], s.workers)
            busy.add_metric([s.queue], s.running)
            for outcome in ("completed", "failed", "retried", "lost", "released"):
                jobs.add_metric([s.queue, outcome], getattr(s, outcome))
            seconds.add_metric([s.queue], s.handler_seconds)
        yield from (slots, busy, jobs, seconds)


def serve_worker_metrics(port: int, stats: Callable[[], Iterable[ServerStats]]) -> None:
    """Serve the worker's counters on ``port`` (``/metrics``, a daemon thread);
    :class:`~taskdb.ConfigurationError` when the port cannot be bound."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(stats))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port}: {exc.strerror}") from None
