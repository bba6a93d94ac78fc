"""Gunicorn's gevent worker, answering what gunicorn rejects itself in our one JSON error shape.

Gunicorn answers a request it cannot parse (a malformed request line,
conflicting lengths, a request line over 4 KiB, a bad chunk size) before
Flask sees it, with an HTML page, and it has no setting for that page. A
worker class of our own is gunicorn's documented extension point
(``worker_class``; gunicorn.conf.py names this one): it subclasses the gevent
worker and overrides ``handle_error``, the ``Worker`` method gunicorn calls
for these errors, to write ``{"error", "message"}`` with the status gunicorn
gives them. Anything else (an error gunicorn met outside any parse) goes to
gunicorn's own handling.

Its logger (``logger_class``, also a documented setting) writes no access
line: each app writes its own JSON one (relay/web/base.py).
"""

from __future__ import annotations

import ssl
from typing import Any

import orjson
from gunicorn import glogging
from gunicorn.http import errors
from gunicorn.workers.ggevent import GeventWorker

# Parse errors that are not a plain 400, with gunicorn's status and reason for each; every other
# ``errors.ParseException`` (and a TLS error, 403) is a 400 Bad Request, as gunicorn answers it.
STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (errors.LimitRequestLine, 414, "URI Too Long"),
    (errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (errors.ExpectationFailed, 417, "Expectation Failed"),
    (errors.ForbiddenProxyRequest, 403, "Forbidden"),
    (errors.ConfigurationProblem, 500, "Internal Server Error"),
    (ssl.SSLError, 403, "Forbidden"),
)


def status_of(exc: BaseException) -> tuple[int, str] | None:
    """The status and reason of a request gunicorn could not parse, or None for another error."""
    for kind, status, reason in STATUSES:
        if isinstance(exc, kind):
            return status, reason
    return (400, "Bad Request") if isinstance(exc, errors.ParseException) else None


def json_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer with the JSON error body; the connection closes after it."""
    body = orjson.dumps({"error": reason.lower().replace(" ", "_"), "message": message or reason})
    head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


class JsonErrorsGeventWorker(GeventWorker):
    """The gevent worker, with gunicorn's own error answers in the JSON error shape."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        answer = status_of(exc)
        if answer is None:
            super().handle_error(req, client, addr, exc)
            return
        status, reason = answer
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            client.sendall(json_error(status, reason, str(exc)))
        except OSError:
            self.log.debug("Failed to send error message.")


class NoAccessLineLogger(glogging.Logger):
    """Gunicorn's logger without its access line.

    With a logging configuration (ours formats gunicorn's lines as JSON)
    gunicorn builds every request's access-line fields, even with nowhere
    to write them: 3.5% of the ingestion API's CPU in a py-spy profile at
    150 POST/s. Each app writes its own access line, with the request and
    message ids, so this one is skipped before any work.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
