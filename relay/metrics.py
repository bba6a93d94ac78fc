"""Prometheus exposition for every service, and the ``/metrics`` endpoint of the Flask apps.

Each service defines its own families where it uses them (the ingestion
API's in ``relay/ingestion``, the worker's in ``relay/worker/metrics.py``,
the websocket server's in ``relay/live``); only the HTTP families of the two APIs live
here, created by :func:`init_metrics`. So a service exports its families and
no other's: in multiprocess mode prometheus-client writes every family a
process creates to its files, even one never incremented.

Gunicorn and Celery run several processes per service: when
``PROMETHEUS_MULTIPROC_DIR`` is set (the Procfile and the compose stack set
it, one empty directory per service), prometheus-client keeps per-process
files there and ``/metrics`` aggregates them. It must be set before
prometheus-client is first imported. ``process_*`` metrics cannot be
aggregated over processes: they describe the process that answers the
scrape (a gunicorn worker, the Celery worker's main process).

Scrapers get the classic text format, or OpenMetrics when their ``Accept``
asks for it (Prometheus does).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from flask import Flask, Response, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


# The methods a label may name; any other (a scanner's PROPFIND, a typo) is "other", so a client
# cannot grow the number of series by inventing methods.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """``method`` as a bounded label value: a known HTTP method, else ``other``."""
    return method if method in HTTP_METHODS else "other"


@functools.cache
def http_families() -> tuple[Counter, Histogram]:
    """The HTTP families of the Flask services, created once and only in processes that serve them."""
    # By method too: a CORS preflight (OPTIONS) on a publish route is not a publish.
    requests = Counter(
        "http_requests_total",
        "HTTP requests by app, endpoint, method and status.",
        ["app", "endpoint", "method", "status"],
    )
    duration = Histogram("http_request_duration_seconds", "HTTP request latency.", ["app", "endpoint", "method"])
    return requests, duration


def service_registry(multiprocess: bool, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry a service's ``/metrics`` renders: its own families, ``process_*`` and ``extra``.

    In multiprocess mode the families come from every process's files (this
    process's default registry would miss the others); otherwise from the
    default registry, which already holds the process collector.
    """
    registry = CollectorRegistry()
    if multiprocess:
        MultiProcessCollector(registry)
        ProcessCollector(registry=registry)
    else:
        registry.register(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Encode ``registry`` as the scraper asked (``Accept``): OpenMetrics or the text format."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


class GaugeCollector(Collector):
    """A gauge computed when scraped (queue depth, connections), not stored per process."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        value = self.read()
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)


def init_metrics(app: Flask, name: str, multiprocess: bool, gauges: Iterable[GaugeCollector] = ()) -> None:
    """Count requests of ``app`` and serve ``GET /metrics`` (``multiprocess``: aggregated over processes)."""
    requests, duration = http_families()
    registry = service_registry(multiprocess, gauges)

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint, method = request.endpoint or "unknown", method_label(request.method)
        requests.labels(name, endpoint, method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            duration.labels(name, endpoint, method).observe(time.perf_counter() - started)
        return response

    def metrics_view() -> Response:
        body, content_type = render(registry, request.headers.get("Accept"))
        # content_type=, not mimetype=: Flask would append a second charset to the encoder's type.
        return Response(body, content_type=content_type)

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])


def health_and_metrics_app(registry: CollectorRegistry, problem: Callable[[], tuple[str, str] | None]) -> WsgiApp:
    """A WSGI app answering ``/metrics`` from ``registry`` and ``/healthz`` from ``problem()``.

    ``problem()`` returns None when healthy, else ``(error code, message)`` for a 503.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            found = problem()
            body = {"status": "ok"} if found is None else {"error": found[0], "message": found[1]}
            start_response(
                "200 OK" if found is None else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [orjson.dumps(body)]
        return metrics_app(environ, start_response)

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the worker's log."""


def serve_in_thread(app: WsgiApp, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` from a daemon thread; raises ``OSError`` when the port is taken."""
    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
