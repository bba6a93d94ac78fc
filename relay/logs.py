"""Structured JSON logs for every service: one object per line on stderr.

Each line has ``ts`` (RFC 3339, UTC), ``level``, ``service``, ``logger``
and ``message``, plus ``message_id`` (or ``message_ids``) when the log call
passes it with ``extra=``, so one message can be followed from the API to the
worker. The APIs add ``request_id`` to every line written while handling a
request, and write one ``access`` line per request (relay/web/base.py); gunicorn's own
lines go through the same formatter (gunicorn.conf.py).
``LOG_FORMAT=text`` switches to plain lines for reading in a terminal.
"""

from __future__ import annotations

import datetime as dt
import logging

import orjson

# Fields a log call may pass with ``extra=``; relay/web/base.py's access lines use the request ones.
CONTEXT_KEYS = ("request_id", "method", "path", "status", "ms", "message_id", "message_ids", "count", "error", "sub")


class JsonFormatter(logging.Formatter):
    """Render a log record as one JSON object."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(service: str, log_format: str = "json", level: str = "INFO") -> None:
    """Send the root logger's records to stderr in ``log_format``, once per process."""
    root = logging.getLogger()
    if any(getattr(h, "service_handler", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.service_handler = True  # type: ignore[attr-defined]
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
