"""Prometheus metrics of the backend (``GET /metrics``), through the maintained ``prometheus_client``.

Every app gets its own :class:`prometheus_client.CollectorRegistry` (several apps in one test process must not
share counters). Names start with ``alc_`` (active label cleaning):

* ``alc_request_seconds{route,method}`` histogram and ``alc_requests_total{route,method,status}``: per route
  template (``/predict``, ``/versions/{version}/activate``...), unknown paths as ``other``;
* ``alc_tasks_scored_total{outcome="ok|error"}``, ``alc_image_load_failures_total{cause}`` (causes of
  ``backend.images.ImageFailure``), ``alc_task_failures_total{cause}`` (every cause, ``task_input`` and
  ``inference`` included);
* read at scrape time from the objects that own them: ``alc_training_runs_total``,
  ``alc_training_failures_total``, ``alc_training_seconds_total`` (of the in-process trainer, or of every
  worker when jobs go through Redis), ``alc_queue_depth{queue}``, ``alc_writeback_failures_total``,
  ``alc_writeback_written_total``, ``alc_serving_version_info{version}`` (1 for the version this process
  serves) and ``alc_serving_version_number``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "TrainingCounts"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of the text exposition format."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_VERSION_NUMBER = re.compile(r"^v(\d+)-")


@dataclass(frozen=True)
class TrainingCounts:
    """Totals of training jobs since start (in-process) or since the Redis database was created.

    Attributes:
        runs: jobs finished (successes and failures).
        failures: jobs that failed.
        seconds: wall time summed over finished jobs.
    """

    runs: int = 0
    failures: int = 0
    seconds: float = 0.0


class _StateCollector(Collector):
    """Values owned by other objects, read when Prometheus scrapes."""

    def __init__(
        self,
        *,
        serving_version: Callable[[], str | None],
        training: Callable[[], TrainingCounts],
        queue_depth: Callable[[], Mapping[str, int]],
        writeback: Callable[[], tuple[int, int]],
    ) -> None:
        self._serving_version = serving_version
        self._training = training
        self._queue_depth = queue_depth
        self._writeback = writeback

    def collect(self) -> Iterator[Metric]:
        counts = self._training()
        yield CounterMetricFamily("alc_training_runs", "Training jobs finished.", value=counts.runs)
        yield CounterMetricFamily(
            "alc_training_failures", "Training jobs that failed.", value=counts.failures
        )
        yield CounterMetricFamily(
            "alc_training_seconds", "Wall time of finished training jobs.", value=counts.seconds
        )
        depth = GaugeMetricFamily("alc_queue_depth", "Jobs waiting or running, per queue.", labels=["queue"])
        for queue, n in sorted(self._queue_depth().items()):
            depth.add_metric([queue], float(n))
        yield depth
        written, failed = self._writeback()
        yield CounterMetricFamily(
            "alc_writeback_failures", "Task field updates Label Studio did not take.", value=failed
        )
        yield CounterMetricFamily("alc_writeback_written", "Task field updates written.", value=written)
        version = self._serving_version()
        info = GaugeMetricFamily(
            "alc_serving_version_info", "1 for the model version this process serves.", labels=["version"]
        )
        number = GaugeMetricFamily(
            "alc_serving_version_number", "Running number of the served version (0: none loaded)."
        )
        if version:
            info.add_metric([version], 1.0)
            match = _VERSION_NUMBER.match(version)
            number.add_metric([], float(match.group(1)) if match else 0.0)
        else:
            number.add_metric([], 0.0)
        yield info
        yield number


class Metrics:
    """The metrics of one app.

    Args:
        serving_version: the version this process serves now (None before a model is loaded).
        training: training totals.
        queue_depth: jobs waiting or running, per queue name.
        writeback: ``(written, failed)`` task field updates.
    """

    def __init__(
        self,
        *,
        serving_version: Callable[[], str | None],
        training: Callable[[], TrainingCounts],
        queue_depth: Callable[[], Mapping[str, int]],
        writeback: Callable[[], tuple[int, int]],
    ) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "alc_request_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "alc_requests", "HTTP requests by route and status.", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.tasks_scored = Counter(
            "alc_tasks_scored",
            "Tasks answered by /predict and re-scoring.",
            ["outcome"],
            registry=self.registry,
        )
        self.image_failures = Counter(
            "alc_image_load_failures", "Task images that could not be loaded, by cause.", ["cause"],
            registry=self.registry,
        )  # fmt: skip
        self.task_failures = Counter(
            "alc_task_failures",
            "Tasks that could not be scored, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.registry.register(
            _StateCollector(
                serving_version=serving_version,
                training=training,
                queue_depth=queue_depth,
                writeback=writeback,
            )
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one HTTP request."""
        self.request_seconds.labels(route, method).observe(seconds)
        self.requests.labels(route, method, str(status)).inc()

    def observe_tasks(self, causes: list[str | None]) -> None:
        """Record the outcome of scored tasks: ``None`` for a scored task, else its failure cause."""
        ok = sum(cause is None for cause in causes)
        if ok:
            self.tasks_scored.labels("ok").inc(ok)
        for cause in causes:
            if cause is None:
                continue
            self.tasks_scored.labels("error").inc()
            self.task_failures.labels(cause).inc()
            if cause.startswith("image_"):
                self.image_failures.labels(cause.removeprefix("image_")).inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
