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
from relay.web import openapi
from relay.web.base import ApiError, error_response, init_web, json_response, protect
from relay.web.openapi import BEARER, error, json_content, operation, ref
from relay.web.query import Choice, Integer, Query, Text

LIMIT = Integer("limit", "Messages per page.", "bad_limit", minimum=1, maximum=1000, default=100)
LIST_QUERY = Query(
    LIMIT,
    Choice(
        "order", "`asc`: persistence order, oldest first. `desc`: newest first.", "bad_order", ("asc", "desc"), "asc"
    ),
    Text("cursor", "Opaque and signed: the `next_cursor` of an earlier page, never built by hand."),
)


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
    CORS(app, methods=["GET"], send_wildcard=True)
    app.add_url_rule("/messages", view_func=list_view, methods=["GET"])
    app.add_url_rule("/messages/<message_id>", view_func=message_view, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/", view_func=index, methods=["GET"])
    protect(app, settings.api_tokens, {"list_view", "message_view"})
    init_metrics(app, "list_api", settings.metrics_multiprocess)
    app.register_error_handler(sa.exc.SQLAlchemyError, database_unavailable)
    openapi.init_openapi(
        app,
        "Message list API",
        "Read every stored message, in pages, and the live page.",
        components,
        settings.list_api_port,
    )
    return app


def components(settings: Settings) -> dict[str, Any]:
    """The schemas, headers and responses this API's operations refer to (beyond the shared ones)."""
    example = {
        "id": openapi.EXAMPLE_ID,
        "received_at": openapi.EXAMPLE_TIME,
        "persisted_at": openapi.EXAMPLE_TIME[:-2] + "9Z",
        "payload": {"hello": "world"},
    }
    timestamp = ref("schemas", "Timestamp")
    return {
        "headers": {
            "Link": {
                "description": 'The next page, `<url>; rel="next"`: only when `has_more` is true.',
                "schema": {"type": "string", "pattern": '^<[^>]+>; rel="next"$'},
            }
        },
        "schemas": {
            "Message": {
                "type": "object",
                "required": ["id", "received_at", "persisted_at", "payload"],
                "additionalProperties": False,
                "properties": {
                    "id": ref("schemas", "MessageId"),
                    "received_at": timestamp,
                    "persisted_at": timestamp,
                    "payload": {"type": "object", "description": "The published object, exactly as stored."},
                },
                "examples": [example],
            },
            "Page": {
                "type": "object",
                "required": ["data", "has_more", "next_cursor"],
                "additionalProperties": False,
                "properties": {
                    "data": {"type": "array", "items": ref("schemas", "Message"), "maxItems": LIMIT.maximum},
                    "has_more": {"type": "boolean", "description": "Whether another page follows right now."},
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "Set on every non-empty page, the last one included: ask again with it "
                        "later to get only what arrived since. Null only when nothing was ever returned.",
                    },
                },
            },
        },
        "responses": {"DatabaseUnavailable": openapi.unavailable("database_unavailable", "The database")},
    }


def database_unavailable(exc: sa.exc.SQLAlchemyError) -> Response:
    """A database error is the database being unavailable to us: 503, so clients retry."""
    current_app.logger.warning("database error: %s", exc)
    storage.db.session.rollback()
    message = "The database does not answer; retry shortly."
    return error_response(503, "database_unavailable", message, {"Retry-After": "5"})


DATABASE_UNAVAILABLE = ref("responses", "DatabaseUnavailable")
UNAUTHORIZED = ref("responses", "Unauthorized")


@operation(
    {
        "operationId": "listMessages",
        "tags": ["messages"],
        "summary": "Page through every stored message",
        "description": "Keyset pagination in persistence order. Following `next_cursor` never misses "
        "a message, even with many workers committing at once. Any other query parameter is a 400.",
        "security": BEARER,
        "parameters": LIST_QUERY.openapi(),
        "responses": {
            "200": {
                "description": "One page.",
                "headers": {"Link": ref("headers", "Link")},
                "content": json_content(ref("schemas", "Page")),
            },
            "400": error(f"A bad query. Codes: {openapi.codes([*LIST_QUERY.codes(), 'bad_cursor'])}.", "bad_limit"),
            "401": UNAUTHORIZED,
            "503": DATABASE_UNAVAILABLE,
        },
    }
)
def list_view() -> Response:
    """Return one page of messages."""
    query = LIST_QUERY.parse(request.args)
    limit, order, cursor = query["limit"], query["order"], query["cursor"]
    codec: CursorCodec = current_app.extensions["cursor"]
    try:
        after = codec.decode(cursor) if cursor is not None else None
    except InvalidCursor:
        raise ApiError(400, "bad_cursor", "The cursor is not one this API issued; start again without it.") from None
    rows, has_more = storage.list_messages(after, limit, descending=order == "desc")
    next_cursor = codec.encode(rows[-1].seq) if rows else cursor
    headers = {}
    if has_more:
        query = urlencode({"limit": limit, "order": order, "cursor": next_cursor})
        # From the configured public URL, never the request's Host or X-Forwarded-* (which a client controls).
        headers["Link"] = f'<{current_app.config["SETTINGS"].list_api_url}{request.path}?{query}>; rel="next"'
    body = {"data": [storage.message_json(row) for row in rows], "has_more": has_more, "next_cursor": next_cursor}
    return json_response(body, headers=headers)


@operation(
    {
        "operationId": "getMessage",
        "tags": ["messages"],
        "summary": "Read one stored message",
        "security": BEARER,
        "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": ref("schemas", "MessageId")}],
        "responses": {
            "200": {"description": "The message.", "content": json_content(ref("schemas", "Message"))},
            "401": UNAUTHORIZED,
            "404": error(
                "No stored message has this id (yet: a 202 is followed by storage within moments). Code `not_found`.",
                "not_found",
            ),
            "503": DATABASE_UNAVAILABLE,
        },
    }
)
def message_view(message_id: str) -> Response:
    """Return one message by id."""
    row = storage.get_message(message_id) if is_message_id(message_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"No stored message has id {message_id!r}.")
    return json_response(storage.message_json(row))


@operation(openapi.health_operation("the database", DATABASE_UNAVAILABLE))
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


@operation(
    {
        "operationId": "livePage",
        "tags": ["operations"],
        "summary": "The live page",
        "description": "`index.html`: history from this API, then live messages over the websocket.",
        "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }
)
def index() -> Response:
    """Serve the live page with this stack's public URLs in its config slot."""
    page = (PROJECT_DIR / "index.html").read_text(encoding="utf-8")
    # Inside <script> only "</" could end the element early: escape "<" the way JSON allows.
    config = json.dumps(page_config(current_app.config["SETTINGS"])).replace("<", "\\u003c")
    page = page.replace(PAGE_CONFIG_SLOT, PAGE_CONFIG_SLOT.replace("{}", config), 1)
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})
