"""Prometheus metrics for every service, and the ``/metrics`` endpoint of the Flask apps.

The metric objects live here so each is defined once. Gunicorn and Celery
run several processes per service: when ``PROMETHEUS_MULTIPROC_DIR`` is set
(the Procfile and the compose stack set it, one empty directory per
service), prometheus-client keeps per-process files there and ``/metrics``
aggregates them. It must be set before this module is first imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by app, endpoint and status.", ["app", "endpoint", "status"]
)
HTTP_SECONDS = Histogram("http_request_seconds", "HTTP request latency.", ["app", "endpoint"])
ACCEPTED = Counter("messages_accepted_total", "Messages accepted (202) by the ingestion API.", ["endpoint"])
REJECTED = Counter("messages_rejected_total", "Requests rejected with a 4xx, by error code.", ["error"])
LIVE_PUBLISH_FAILURES = Counter("live_publish_failures_total", "Accepted messages whose live publish failed.")
PERSISTED = Counter("persisted_messages_total", "Messages stored by the worker (new rows).")
PERSIST_BATCH = Histogram(
    "persist_batch_records", "Records per flushed worker batch.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
PERSIST_RETRIES = Counter("persist_retries_total", "Failed database writes that were retried.")
DEAD_LETTERS = Counter("dead_letters_total", "Messages moved to the dead-letter list.")
REQUEUED = Counter("requeued_lost_total", "Records re-queued by the reconciler after being lost in flight.")


def _service_registry() -> CollectorRegistry:
    """This process's metrics, or every process's of the service in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated)
    return aggregated


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """Render the service's metrics plus ``extra`` collectors (computed when scraped)."""
    scraped = CollectorRegistry()
    for collector in extra:
        scraped.register(collector)
    return generate_latest(_service_registry()) + generate_latest(scraped)


def start_metrics_server(port: int) -> None:
    """Serve ``/metrics`` on ``port`` from a background thread (for the Celery worker)."""
    start_http_server(port, registry=_service_registry())


class GaugeCollector(Collector):
    """A gauge computed when scraped (queue depth, connections), not stored per process."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        value = self.read()
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)


def init_metrics(app: Flask, name: str, gauges: Iterable[GaugeCollector] = ()) -> None:
    """Count requests of ``app`` and serve ``GET /metrics``."""
    gauges = list(gauges)

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        HTTP_REQUESTS.labels(name, endpoint, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            HTTP_SECONDS.labels(name, endpoint).observe(time.perf_counter() - started)
        return response

    def metrics_view() -> Response:
        return Response(exposition(gauges), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])
