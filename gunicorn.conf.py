"""Gunicorn settings for both HTTP APIs; gunicorn loads this file from the working directory.

``relay/serve.py`` gives only what differs per service (bind address, worker
count); everything here applies to both APIs, wherever they run (the
Procfile, compose, the tests), since each starts gunicorn from this directory.

* **No thread or process for a silent or stalled client.** Both APIs run
  gunicorn's gevent workers: each connection is a greenlet, so an idle
  connection, a request head or body that stalls half-way, or a client that
  never closes after its answer costs a few kilobytes, not one of a few
  threads. Measured with ``scripts/probe_connections.py`` (docs/operations.md,
  *Idle and slow clients*): 1,024 connections of each kind per API left
  ``/healthz`` answering in about 0.1 s; with the sync and gthread workers
  before, 2 to 32 were enough to slow it past a second. Redis (redis-py) and
  MariaDB (PyMySQL) are pure-Python clients, so gevent's patching makes
  their waits cooperative too; ingestion POST throughput measured 3,883-4,434
  POST/s against 3,741-3,857 with 64 gthread threads, same run.
* Errors gunicorn answers itself, before Flask sees the request (a malformed
  request line, conflicting Content-Length headers, a request line over
  4 KiB), are JSON in our one error shape instead of gunicorn's HTML page:
  the worker class is gunicorn's gevent worker with its ``handle_error``
  overridden (``relay/web/gunicorn_worker.py``), gunicorn's documented way
  to change how a worker behaves.
* Gunicorn's own lines (start-up, worker boots and exits, errors) are JSON
  like every other line (``relay.logs.JsonFormatter``), unless ``LOG_FORMAT=text``.
  There is no gunicorn access log: each app writes one JSON access line per
  request itself (relay/web/base.py), with its request id and message ids.
* With ``PROMETHEUS_MULTIPROC_DIR`` set, a worker that exits is marked dead
  so prometheus-client drops its live gauges.
"""

from __future__ import annotations

from relay.settings import load_settings

worker_class = "relay.web.gunicorn_worker.JsonErrorsGeventWorker"  # gevent, with JSON error answers
logger_class = "relay.web.gunicorn_worker.NoAccessLineLogger"  # the apps write their own access lines
worker_connections = 1000  # concurrent connections per worker process (greenlets)
keepalive = 2  # seconds an idle kept-alive connection stays open
control_socket_disable = True  # its default ~/.gunicorn/gunicorn.ctl would be shared by both APIs

_settings = load_settings()

if _settings.log_format == "json":
    # Merged over gunicorn's defaults: its error logger through our formatter; the root logger is
    # left to each app's own configure_logging.
    logconfig_dict = {
        "formatters": {"json": {"()": "relay.logs.JsonFormatter", "service": "gunicorn"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


def child_exit(server, worker) -> None:
    if _settings.metrics_multiprocess:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
