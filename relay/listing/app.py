"""List API: pages through every persisted message, and serves the live page.

Run: ``gunicorn -b 0.0.0.0:5001 "list_api:create_app()"``.
Reads ``SQLALCHEMY_DATABASE_URI``, ``SECRET_KEY`` (cursor signing),
``API_TOKENS`` and ``PROXY_COUNT`` through ``relay/settings.py``.

``GET /messages?limit=&cursor=&order=`` returns ``{"data", "has_more",
"next_cursor"}`` in persistence order (``order=asc``, the default) or
newest first (``order=desc``). ``next_cursor`` is set on every non-empty
page, the last one included, so a follower that reached the end continues
later from the same place and, thanks to the commit-ordered ``seq`` (see
``relay/storage.py``), never misses a row. ``GET /messages/<id>`` returns one message;
``GET /healthz`` checks the database; ``GET /`` serves ``index.html`` with the
public URLs of this stack (``LIST_API_URL``, ``INGESTION_API_URL``, ``WS_URL``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import Flask, Response, current_app, request
from flask_cors import CORS

from relay import storage
from relay.listing.cursor import CursorCodec, InvalidCursor
from relay.logs import configure_logging
from relay.metrics import init_metrics
from relay.records import is_message_id
from relay.settings import PROJECT_DIR, Settings, load_settings
from relay.web.base import ApiError, error_response, init_web, json_response, protect
from relay.web.openapi import init_openapi

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_LIMIT = re.compile(r"[0-9]{1,4}")  # ASCII digits only: str.isdigit() also accepts "²", which int() rejects


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the list API; ``test_config`` overrides settings by field name."""
    settings = load_settings(**dict(test_config or {}))
    configure_logging("list_api", settings.log_format, settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.config["SETTINGS"] = settings
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.sqlalchemy_database_uri
    app.extensions["cursor"] = CursorCodec(settings.secret_key)
    storage.init_db(app)
    init_web(app, settings)
    init_openapi(app, "list_api")
    CORS(app, methods=["GET"], send_wildcard=True)
    app.add_url_rule("/messages", view_func=list_view, methods=["GET"])
    app.add_url_rule("/messages/<message_id>", view_func=message_view, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/", view_func=index, methods=["GET"])
    protect(app, settings.api_tokens, {"list_view", "message_view"})
    init_metrics(app, "list_api", settings.metrics_multiprocess)
    app.register_error_handler(sa.exc.SQLAlchemyError, database_unavailable)
    return app


def database_unavailable(exc: sa.exc.SQLAlchemyError) -> Response:
    """A database error is the database being unavailable to us: 503, so clients retry."""
    current_app.logger.warning("database error: %s", exc)
    storage.db.session.rollback()
    message = "The database does not answer; retry shortly."
    return error_response(503, "database_unavailable", message, {"Retry-After": "5"})


def _bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def list_view() -> Response:
    """Return one page of messages."""
    args = request.args
    unknown = set(args) - {"limit", "cursor", "order"}
    if unknown:
        raise _bad_request("unknown_parameter", f"Unknown query parameter(s): {', '.join(sorted(unknown))}.")
    raw_limit = args.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise _bad_request("bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}.")
    limit = int(raw_limit)
    order = args.get("order", "asc")
    if order not in ("asc", "desc"):
        raise _bad_request("bad_order", "order must be 'asc' or 'desc'.")
    codec: CursorCodec = current_app.extensions["cursor"]
    cursor = args.get("cursor")
    try:
        after = codec.decode(cursor) if cursor is not None else None
    except InvalidCursor:
        raise _bad_request("bad_cursor", "The cursor is not one this API issued; start again without it.") from None
    rows, has_more = storage.list_messages(after, limit, descending=order == "desc")
    next_cursor = codec.encode(rows[-1].seq) if rows else cursor
    headers = {}
    if has_more:
        query = urlencode({"limit": limit, "order": order, "cursor": next_cursor})
        # From the configured public URL, never the request's Host or X-Forwarded-* (which a client controls).
        headers["Link"] = f'<{current_app.config["SETTINGS"].list_api_url}{request.path}?{query}>; rel="next"'
    body = {"data": [storage.message_json(row) for row in rows], "has_more": has_more, "next_cursor": next_cursor}
    return json_response(body, headers=headers)


def message_view(message_id: str) -> Response:
    """Return one message by id."""
    row = storage.get_message(message_id) if is_message_id(message_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"No stored message has id {message_id!r}.")
    return json_response(storage.message_json(row))


def healthz() -> Response:
    """Report whether the database answers."""
    try:
        storage.db.session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        raise ApiError(503, "database_unavailable", "The database does not answer.", {"Retry-After": "5"}) from None
    return json_response({"status": "ok"})


# index.html carries this empty config, which a page opened from file:// keeps; served here it gets the stack's.
PAGE_CONFIG_SLOT = '<script type="application/json" id="stack-config">{}</script>'


def page_config(settings: Settings) -> dict[str, str]:
    """The public URLs of the stack the live page belongs to (never a port it guesses)."""
    return {
        "list_api_url": settings.list_api_url,
        "ingestion_api_url": settings.ingestion_api_url,
        "ws_url": settings.ws_url,
    }


def index() -> Response:
    """Serve the live page with this stack's public URLs in its config slot."""
    page = (PROJECT_DIR / "index.html").read_text(encoding="utf-8")
    # Inside <script> only "</" could end the element early: escape "<" the way JSON allows.
    config = json.dumps(page_config(current_app.config["SETTINGS"])).replace("<", "\\u003c")
    page = page.replace(PAGE_CONFIG_SLOT, PAGE_CONFIG_SLOT.replace("{}", config), 1)
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})
