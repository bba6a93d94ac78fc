"""Gunicorn settings for both HTTP APIs; gunicorn loads this file from the working directory.

Two things the command line cannot say:

* Errors gunicorn answers itself, before Flask sees the request (a malformed
  request line, conflicting Content-Length headers, a request line over
  4 KiB), are JSON in our one error shape instead of gunicorn's HTML page.
  Gunicorn has no hook for these pages, so its ``util.write_error`` is
  replaced; its call sites pass (socket, status, reason, message).
* With ``PROMETHEUS_MULTIPROC_DIR`` set, a worker that exits is marked dead
  so prometheus-client drops its live gauges.
"""

from __future__ import annotations

import json
import os

from gunicorn import util


def _json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": reason.lower().replace(" ", "_"), "message": mesg or reason})
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    util.write_nonblock(sock, f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode("latin1"))


util.write_error = _json_error


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
