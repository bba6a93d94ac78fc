"""Flask plumbing shared by both HTTP APIs: JSON errors, orjson responses, headers, access logs.

Every error either API returns has one shape, ``{"error": code, "message":
text}``, built by :func:`error_response`. :func:`init_web` installs a handler
that turns every ``HTTPException`` into it and one that turns any other
exception into a bare 500 without leaking a traceback.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

from relay.auth import Authenticator
from relay.records import is_channel
from relay.settings import Settings
from relay.web.ratelimit import failed_auth_limit

log = logging.getLogger(__name__)
access_log = logging.getLogger("access")
# A client's own X-Request-ID is kept when it is short printable ASCII; otherwise one is made.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize ``body`` with orjson into a response."""
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Build the one JSON error shape: ``{"error": code, "message": message}``."""
    return json_response({"error": code, "message": message}, status, headers)


class ApiError(Exception):
    """An error a view raises; the app's handler renders it as the one JSON error shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _request_context(record: logging.LogRecord) -> bool:
    """Stamp app log lines written while handling a request with its request id (and message ids)."""
    if has_request_context():
        if "request_id" in g and not hasattr(record, "request_id"):
            record.request_id = g.request_id
        if "message_ids" in g and not hasattr(record, "message_ids"):
            record.message_ids = g.message_ids
    return True


def _error_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


class ChannelSegment(BaseConverter):
    """``<channel:name>``: whatever stands between ``/channels/`` and the rest, empty or with slashes.

    Every malformed name then reaches the view and gets the documented 400
    ``bad_channel`` (:func:`channel_name`), never a routing 404.
    """

    regex = r"[\s\S]*?"  # any characters, newlines included
    part_isolating = False


def add_channel_rule(app: Flask, rule: str, view: Any, methods: list[str]) -> None:
    """Route ``rule`` (with a ``<channel:channel>`` segment) exactly as written: ``//`` is an empty name."""
    app.add_url_rule(rule, view_func=view, methods=methods, merge_slashes=False)


def channel_name(name: str) -> str:
    """The channel named in a path, or the 400 every malformed name gets."""
    if not is_channel(name):
        raise ApiError(400, "bad_channel", "A channel name is 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    return name


def init_web(app: Flask, settings: Settings) -> None:
    """Install the JSON error handlers, security headers, proxy handling and the channel converter."""
    app.url_map.converters["channel"] = ChannelSegment
    # Who may do what (relay/web/access.py); a malformed JWT_PUBLIC_KEY stops the app here, at start.
    authenticator = app.extensions["authenticator"] = Authenticator.from_settings(settings)
    app.extensions["auth_failure_limit"] = failed_auth_limit(settings, authenticator.required)
    if settings.proxy_count:
        # Behind a reverse proxy, take the client address from X-Forwarded-For (rate limits).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_count, x_proto=settings.proxy_count)

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.code or 500, _error_code(exc), exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "The server failed to handle this request.")

    @app.before_request
    def assign_request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def log_access(response: Response) -> Response:
        """One JSON access line per request, with its request id and message ids, from the app itself."""
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        started = g.get("request_started")
        context = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,  # never the query string: it may carry a token
            "status": response.status_code,
            "ms": round((time.perf_counter() - started) * 1000, 2) if started is not None else None,
        }
        if "message_ids" in g:
            context["message_ids"] = g.message_ids
        if "subject" in g:
            context["sub"] = g.subject  # the signed token's subject (relay/web/access.py), never the token
        access_log.info("%s %s %s", request.method, request.path, response.status_code, extra=context)
        return response

    for handler in logging.getLogger().handlers:
        handler.addFilter(_request_context)

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
