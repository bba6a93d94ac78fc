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

It also bounds how long a request body may take to arrive. Gunicorn times
out a request head (``keepalive``: the whole head within 2 s) but not the
body the app then reads: a client sending a head and one byte of a body
held its connection for ever, and 3 processes x 1,000 ``worker_connections``
of them kept ``/healthz`` from answering at all. Each request's body reader
gets a deadline, ``REQUEST_BODY_TIMEOUT_SECONDS`` after its head, moved one
second later per 64 KiB received (Apache mod_reqtimeout's ``MinRate``), so
a large batch on a slow link still arrives, while a stalled or trickling
body is cut off: the read raises :class:`BodyTimeout`, a 408 the app renders
in its one error shape (``request_timeout``), and the connection closes
after the answer. Behind the compose stack's nginx (``client_body_timeout``)
bodies arrive whole; the limit holds for a local run, which has nothing in front.

Its logger (``logger_class``, also a documented setting) writes no access
line: each app writes its own JSON one (relay/web/base.py).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import gevent
import orjson
from gunicorn import glogging
from gunicorn.http import errors
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import RequestTimeout

from relay.settings import load_settings

# A body that keeps arriving at this rate (bytes per second) is never cut off: 64 KiB/s is 0.5 Mbit/s.
MIN_BODY_RATE = 65536

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


class BodyTimeout(RequestTimeout):
    """The request body did not arrive in time: 408 ``request_timeout``, rendered by the app's handler."""

    description = "The request body did not arrive in time; the connection is closed."


class DeadlineReader:
    """A request body's reader (gunicorn's length, chunked or EOF reader) that gives up at a deadline.

    Every read of the body, whatever the app calls (``read``, ``readline``,
    iteration), goes through gunicorn's ``Body`` to its reader's ``read``:
    bounding that one method bounds them all. On timeout the request is
    marked to close, so its answer says ``Connection: close`` and the
    connection, whose next request's start is unknown, is not reused.
    """

    def __init__(self, reader: Any, req: Any, seconds: float) -> None:
        self.reader = reader
        self.req = req
        self.deadline = time.monotonic() + seconds
        self.received = 0

    def read(self, size: int) -> bytes:
        remaining = self.deadline + self.received / MIN_BODY_RATE - time.monotonic()
        timer = gevent.Timeout(max(remaining, 0.0))
        try:
            with timer:
                data = self.reader.read(size)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self.req.must_close = True
            raise BodyTimeout() from None
        self.received += len(data)
        return data


class JsonErrorsGeventWorker(GeventWorker):
    """The gevent worker, with gunicorn's own error answers in the JSON error shape and a deadline on bodies."""

    def init_process(self) -> None:
        self.body_timeout = load_settings().request_body_timeout_seconds
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        if req.body is not None:
            req.body.reader = DeadlineReader(req.body.reader, req, self.body_timeout)
        return super().handle_request(listener_name, req, sock, addr)

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
