"""List API: pages through the persisted messages, by channel or all together, and serves the live page.

Run: ``gunicorn -b 0.0.0.0:5001 "list_api:create_app()"``.
Reads ``SQLALCHEMY_DATABASE_URI``, ``REDIS_URL`` and ``PERSIST_QUEUE`` (the
watermark and pending records), ``SECRET_KEY`` (cursor signing),
``API_TOKENS`` and ``JWT_*`` (who may read which channel: relay/web/access.py),
``PROXY_COUNT`` and ``LIST_DATABASE_TIMEOUT_SECONDS`` (how long a
database call may hang before the answer is 503) through ``relay/settings.py``.

``GET /messages?limit=&cursor=&order=&after=`` returns ``{"data",
"has_more", "next_cursor"}`` in position order (``order=asc``, the default:
the order messages were accepted in) or newest first (``order=desc``).
``next_cursor`` is set on every non-empty page, the last one included, so a
follower that reached the end continues later from the same place; pages
stop below the watermark read from Redis (``relay/listing/watermark.py``),
so it never misses a message nor sees one twice. ``after`` starts after a
position instead (the last one a websocket frame carried, say). ``GET /channels/<channel>/messages``
is the same for one channel; ``GET /channels`` lists the channels, by name,
with their counts. ``GET /messages/<id>`` returns one message (stored
messages never change: cacheable for a year, with a strong ``ETag`` and 304s);
a message accepted but not stored yet answers from its pending record, with
``persisted_at`` null; ``GET /healthz`` checks the database; ``GET /`` serves ``index.html`` with the
public URLs of this stack (``LIST_API_URL``, ``INGESTION_API_URL``, ``WS_URL``),
and ``GET /relay-client.js`` the browser client it uses (importable from any origin).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import redis
import sqlalchemy as sa
from flask import Flask, Response, current_app, request, send_file
from flask_cors import CORS

from relay import storage
from relay.auth import EVERY_CHANNEL
from relay.broker.connection import connect
from relay.broker.pending import Pending
from relay.broker.positions import Positions
from relay.listing.cursor import MAX_POSITION, ChannelCursorCodec, CursorCodec, InvalidCursor
from relay.listing.watermark import Watermark
from relay.logs import configure_logging
from relay.metrics import init_metrics
from relay.records import is_message_id, record_channel
from relay.settings import PROJECT_DIR, Settings, load_settings
from relay.web import openapi
from relay.web.access import HISTORY, authorize, request_grant
from relay.web.base import ApiError, add_channel_rule, channel_name, error_response, init_web, json_response
from relay.web.openapi import error, json_content, operation, ref
from relay.web.query import Choice, Integer, Query, Text

LIMIT = Integer("limit", "Messages per page.", "bad_limit", minimum=1, maximum=1000, default=100)
LIST_QUERY = Query(
    LIMIT,
    Choice(
        "order",
        "`asc`: accept order (offsets within a channel, positions across channels), oldest first. `desc`: newest "
        "first.",
        "bad_order",
        ("asc", "desc"),
        "asc",
    ),
    Text("cursor", "Opaque and signed: the `next_cursor` of an earlier page, never built by hand."),
    Integer(
        "after",
        "A message's `position` (from a listing, a websocket frame or `GET /messages/{message_id}`): start right "
        "after it (with `order=desc`, right before it). Instead of `cursor`, not with it.",
        "bad_after",
        minimum=0,
        maximum=MAX_POSITION,
        default=None,
    ),
)
CHANNELS_QUERY = Query(
    Integer("limit", "Channels per page.", "bad_limit", minimum=1, maximum=1000, default=100),
    Text("cursor", "Opaque and signed: the `next_cursor` of an earlier page of channels."),
)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the list API; ``test_config`` overrides settings by field name."""
    settings = load_settings(**dict(test_config or {}))
    configure_logging("list_api", settings.log_format, settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.config["SETTINGS"] = settings
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.sqlalchemy_database_uri
    app.extensions["cursor"] = CursorCodec(settings.secret_key)
    app.extensions["channel_cursor"] = ChannelCursorCodec(settings.secret_key)
    storage.init_db(app, timeout=settings.list_database_timeout_seconds)
    # Redis: the watermark every page stops at, and the pending records GET /messages/<id> answers from.
    client = connect(settings.redis_url, settings.redis_timeout_seconds)
    app.extensions["watermark"] = Watermark(Positions(client, settings.persist_queue))
    app.extensions["pending"] = Pending(client, settings.persist_queue)
    init_web(app, settings)
    CORS(app, methods=["GET"], send_wildcard=True)
    app.add_url_rule("/messages", view_func=list_view, methods=["GET"])
    app.add_url_rule("/messages/<message_id>", view_func=message_view, methods=["GET"])
    app.add_url_rule("/channels", view_func=channels_view, methods=["GET"])
    add_channel_rule(app, "/channels/<channel:channel>/messages", channel_messages_view, ["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/", view_func=index, methods=["GET"])
    app.add_url_rule("/relay-client.js", view_func=relay_client, methods=["GET"])
    init_metrics(app, "list_api", settings.metrics_multiprocess)
    app.register_error_handler(sa.exc.SQLAlchemyError, database_unavailable)
    app.after_request(_never_cache_errors)
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
        "channel": "dummy",
        "offset": openapi.EXAMPLE_OFFSET,
        "position": openapi.EXAMPLE_POSITION,
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
            },
            "MessageCacheControl": {
                "description": f"Stored: `public, max-age={MESSAGE_MAX_AGE}, immutable`; `private` instead of `public` "
                "when tokens are required (then also `Vary: Authorization`). Not stored yet (`persisted_at` null): "
                "`no-store`.",
                "required": True,
                "schema": {
                    "type": "string",
                    "pattern": f"^((public|private), max-age={MESSAGE_MAX_AGE}, immutable|no-store)$",
                },
            },
            "ETag": {
                "description": "A strong validator of the message's bytes; send it back in `If-None-Match` for a 304. "
                "Absent while `persisted_at` is null.",
                "schema": {"type": "string", "pattern": '^"[0-9a-f]{32}"$'},
            },
        },
        "schemas": {
            "Message": {
                "type": "object",
                "required": ["id", "channel", "offset", "position", "received_at", "persisted_at", "payload"],
                "additionalProperties": False,
                "properties": {
                    "id": ref("schemas", "MessageId"),
                    "channel": ref("schemas", "Channel"),
                    "offset": ref("schemas", "Offset"),
                    "position": ref("schemas", "Position"),
                    "received_at": timestamp,
                    "persisted_at": {
                        "oneOf": [timestamp, {"type": "null"}],
                        "description": "When it was stored. Null only from `GET /messages/{message_id}` between "
                        "the 202 and its storage; listings hold only stored messages.",
                    },
                    "payload": {"type": "object", "description": "The published object, exactly as stored."},
                },
                "examples": [example],
            },
            "Page": _page_schema(
                "Message",
                LIMIT.maximum,
                "Set on every non-empty page, the last one included: ask again with it later to get only what "
                "arrived since. Null only when nothing was ever returned.",
            ),
            "ChannelInfo": {
                "type": "object",
                "required": ["name", "messages", "last_message_at"],
                "additionalProperties": False,
                "properties": {
                    "name": ref("schemas", "Channel"),
                    "messages": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "How many of its messages are stored now (retention removes old ones).",
                    },
                    "last_message_at": {
                        **timestamp,
                        "description": "The newest `received_at` among the channel's stored messages.",
                    },
                },
                "examples": [{"name": "dummy", "messages": 42, "last_message_at": openapi.EXAMPLE_TIME}],
            },
            "ChannelPage": _page_schema(
                "ChannelInfo",
                CHANNELS_QUERY.params["limit"].maximum,
                "Set on every non-empty page: the next page starts after its last name.",
            ),
        },
        "responses": {"DatabaseUnavailable": openapi.unavailable("database_unavailable", "The database")},
    }


def _page_schema(item: str, most: int, cursor: str) -> dict[str, Any]:
    """The shape of every paginated answer, ``{"data", "has_more", "next_cursor"}``, around ``item``."""
    return {
        "type": "object",
        "required": ["data", "has_more", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "data": {"type": "array", "items": ref("schemas", item), "maxItems": most},
            "has_more": {"type": "boolean", "description": "Whether another page follows right now."},
            "next_cursor": {"type": ["string", "null"], "description": cursor},
        },
    }


# A stored message never changes: caches may keep it a year without asking again (RFC 8246 immutable).
MESSAGE_MAX_AGE = 365 * 24 * 3600


def _never_cache_errors(response: Response) -> Response:
    """Mark every error uncacheable: a 404 is cacheable by default (RFC 9111), and the message may be stored soon."""
    if response.status_code >= 400:
        response.headers["Cache-Control"] = "no-store"
    return response


def database_unavailable(exc: sa.exc.SQLAlchemyError) -> Response:
    """A database error is the database being unavailable to us: 503, so clients retry."""
    current_app.logger.warning("database error: %s", exc)
    storage.db.session.rollback()
    message = "The database does not answer; retry shortly."
    return error_response(503, "database_unavailable", message, {"Retry-After": "5"})


DATABASE_UNAVAILABLE = ref("responses", "DatabaseUnavailable")
UNAUTHORIZED = ref("responses", "Unauthorized")
TOKEN_GUESSING = ref("responses", "TooManyFailedTokens")


EVERY = f"every channel (the pattern `{EVERY_CHANNEL}`)"


def _list_operation(operation_id: str, summary: str, description: str, channel: bool) -> dict[str, Any]:
    codes = [*LIST_QUERY.codes(), "bad_cursor", *(["bad_channel"] if channel else [])]
    where = "the channel in the path" if channel else EVERY
    return {
        "operationId": operation_id,
        "tags": ["messages"],
        "summary": summary,
        "description": description + openapi.needs(HISTORY, where),
        "security": openapi.security(HISTORY),
        "parameters": ([ref("parameters", "Channel")] if channel else []) + LIST_QUERY.openapi(),
        "responses": {**_page_responses("One page.", "Page", codes), "403": openapi.forbidden(HISTORY, where)},
    }


def _page_responses(description: str, schema: str, codes: list[str]) -> dict[str, Any]:
    """The answers of a paginated listing: a page with ``Link``, a bad query, no valid token, no database."""
    return {
        "200": {
            "description": description,
            "headers": {"Link": ref("headers", "Link")},
            "content": json_content(ref("schemas", schema)),
        },
        "400": error(f"A bad query. Codes: {openapi.codes(codes)}.", "bad_limit"),
        "401": UNAUTHORIZED,
        "429": TOKEN_GUESSING,
        "503": error(
            "Code `database_unavailable`: the database does not answer. Code `redis_unavailable` (message pages "
            "only): Redis, which tells how far the stored messages are settled, does not answer, and this process "
            "has not read it before. Retry after `Retry-After` seconds.",
            "database_unavailable",
            ("Retry-After",),
        ),
    }


def _decode(codec: CursorCodec, cursor: str | None) -> Any:
    try:
        return codec.decode(cursor) if cursor is not None else None
    except InvalidCursor:
        raise ApiError(400, "bad_cursor", "The cursor is not one this API issued; start again without it.") from None


def _page(data: list[Any], has_more: bool, next_cursor: str | None, query: dict[str, Any]) -> Response:
    """A page answer, with ``Link`` to the next page when there is one."""
    headers = {}
    if has_more:
        query = urlencode({**{k: v for k, v in query.items() if v is not None}, "cursor": next_cursor})
        # From the configured public URL, never the request's Host or X-Forwarded-* (which a client controls).
        headers["Link"] = f'<{current_app.config["SETTINGS"].list_api_url}{request.path}?{query}>; rel="next"'
    return json_response({"data": data, "has_more": has_more, "next_cursor": next_cursor}, headers=headers)


def _messages_page(channel: str | None) -> Response:
    query = LIST_QUERY.parse(request.args)
    limit, order, cursor = query["limit"], query["order"], query["cursor"]
    codec = current_app.extensions["cursor"]
    if cursor is not None and query["after"] is not None:
        raise ApiError(400, "bad_after", "Give either cursor or after, not both.")
    after = query["after"] if query["after"] is not None else _decode(codec, cursor)
    below = current_app.extensions["watermark"].read()
    rows, has_more = storage.list_messages(after, limit, descending=order == "desc", channel=channel, below=below)
    last = rows[-1].seq if rows else after  # an empty page keeps the place it was asked from
    next_cursor = codec.encode(last) if last is not None else None
    return _page([storage.message_json(row) for row in rows], has_more, next_cursor, {"limit": limit, "order": order})


@operation(
    _list_operation(
        "listMessages",
        "Page through every stored message",
        "Every channel, in position order (the order the messages were accepted in), by keyset pagination. "
        "A page holds only messages below the watermark, the lowest position not yet stored or dead-lettered: "
        "following `next_cursor` (or `after` the last `position` seen) never misses a message and never "
        "repeats one, whatever order the workers store them in. Any other query parameter is a 400.",
        channel=False,
    )
)
def list_view() -> Response:
    """Return one page of messages of every channel."""
    authorize(HISTORY, None)
    return _messages_page(None)


@operation(
    _list_operation(
        "listChannelMessages",
        "Page through one channel's stored messages",
        "The same pages, cursors and guarantees as `GET /messages`, for one channel, in offset order (1, 2, "
        "3..., the order its messages were accepted in; a dead-lettered message leaves its offset out): "
        "following `next_cursor` never misses a message of the channel. A channel nothing was published to is "
        "an empty page. Any other query parameter is a 400.",
        channel=True,
    )
)
def channel_messages_view(channel: str) -> Response:
    """Return one page of one channel's messages."""
    request_grant()  # a token that does not authenticate is refused before the name is looked at
    channel = channel_name(channel)
    authorize(HISTORY, channel)
    return _messages_page(channel)


@operation(
    {
        "operationId": "listChannels",
        "tags": ["channels"],
        "summary": "List the channels",
        "description": "Every channel that has stored messages, by name, with how many are stored and when "
        "the newest arrived. Paginated like the messages; any other query parameter is a 400. When tokens "
        f"are required, only the channels the token may read (`{HISTORY}` in its `channels` claim) are "
        "listed: a token that may read none gets empty pages, never a 403.",
        "security": openapi.security(HISTORY),
        "parameters": CHANNELS_QUERY.openapi(),
        "responses": _page_responses("One page of channels.", "ChannelPage", [*CHANNELS_QUERY.codes(), "bad_cursor"]),
    }
)
def channels_view() -> Response:
    """Return one page of channels."""
    grant = request_grant()
    query = CHANNELS_QUERY.parse(request.args)
    codec = current_app.extensions["channel_cursor"]
    patterns = None if grant.can(HISTORY, None) else grant.patterns_for(HISTORY)
    rows, has_more = storage.list_channels(_decode(codec, query["cursor"]), query["limit"], patterns)
    next_cursor = codec.encode(rows[-1].name) if rows else query["cursor"]
    return _page([storage.channel_json(row) for row in rows], has_more, next_cursor, {"limit": query["limit"]})


@operation(
    {
        "operationId": "getMessage",
        "tags": ["messages"],
        "summary": "Read one message",
        "description": "One message by its id, from the moment its 202 is answered: until the worker has "
        "stored it, with `persisted_at` null (and `Cache-Control: no-store`), then as stored."
        + openapi.needs(HISTORY, "the message's channel")
        + " A message of a channel the token may not read is a 404, exactly as an unknown id: "
        "whether it exists does not leak.",
        "security": openapi.security(HISTORY),
        "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": ref("schemas", "MessageId")}],
        "responses": {
            "200": {
                "description": "The message. Once stored it never changes: cacheable for a year (`Cache-Control` "
                "`immutable`, `private` when tokens are required, since access is per token), with a strong `ETag`. "
                "Not stored yet (`persisted_at` null): `Cache-Control: no-store`, no `ETag`.",
                "headers": {"Cache-Control": ref("headers", "MessageCacheControl"), "ETag": ref("headers", "ETag")},
                "content": json_content(ref("schemas", "Message")),
            },
            "304": {
                "description": "`If-None-Match` names the message's `ETag` (or is `*`): the copy the client has "
                "is current. No body.",
                "headers": {"Cache-Control": ref("headers", "MessageCacheControl"), "ETag": ref("headers", "ETag")},
            },
            "401": UNAUTHORIZED,
            "429": TOKEN_GUESSING,
            "404": error(
                "No message accepted and not dead-lettered has this id (or the token may not read it). Code "
                "`not_found`. Like every error, `Cache-Control: no-store`.",
                "not_found",
            ),
            "503": error(
                "Code `database_unavailable`: the database does not answer. Code `redis_unavailable`: the message "
                "is not stored, and Redis, which holds the accepted ones until they are, does not answer. Retry "
                "after `Retry-After` seconds.",
                "database_unavailable",
                ("Retry-After",),
            ),
        },
    }
)
def message_view(message_id: str) -> Response:
    """Return one message by id, stored or still pending; one the token may not read is not found, as an unknown id is.

    Looked up in the database, then among the pending records, then in the
    database again: a worker removes a record from the pending set only
    after committing it, so one stored between the first two looks is found
    by the third, and an id answered 202 is never a 404 on its way. The
    third look reads in a new transaction: the first look's snapshot (WAL
    on SQLite, REPEATABLE READ on MariaDB) would not see that commit.
    """
    grant = request_grant()
    row = storage.get_message(message_id) if is_message_id(message_id) else None
    if row is None and is_message_id(message_id):
        record = _pending_record(message_id)
        if record is not None:
            if not grant.can(HISTORY, record_channel(record)):
                raise ApiError(404, "not_found", f"No stored message has id {message_id!r}.")
            # Not stored yet: its persisted_at will change, so nothing may keep this answer.
            return json_response(storage.pending_message_json(record), headers={"Cache-Control": "no-store"})
        storage.db.session.rollback()  # end the first look's snapshot (see above)
        row = storage.get_message(message_id)
    if row is None or not grant.can(HISTORY, row.channel):
        raise ApiError(404, "not_found", f"No stored message has id {message_id!r}.")
    response = json_response(storage.message_json(row))
    response.set_etag(hashlib.sha256(response.get_data()).hexdigest()[:32])  # strong: these bytes never change
    visibility = "private" if current_app.extensions["authenticator"].required else "public"
    response.headers["Cache-Control"] = f"{visibility}, max-age={MESSAGE_MAX_AGE}, immutable"
    if visibility == "private":
        response.vary.add("Authorization")  # a browser's cache must not answer one token with another's read
    return response.make_conditional(request)


def _pending_record(message_id: str) -> dict[str, Any] | None:
    """The pending record of ``message_id``, or None; 503 when Redis does not answer (it may be pending)."""
    try:
        return current_app.extensions["pending"].record(message_id)
    except redis.RedisError:
        raise ApiError(
            503,
            "redis_unavailable",
            "The message is not stored, and Redis, which holds the ones not stored yet, does not answer; "
            "retry shortly.",
            {"Retry-After": "1"},
        ) from None


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


@operation(
    {
        "operationId": "relayClient",
        "tags": ["operations"],
        "summary": "The browser client",
        "description": "`relay-client.js`, an ES module: history from this API, then live messages over the "
        "websocket, resuming after drops and resets with nothing lost or repeated. Import it from here "
        "(CORS allows any origin) or copy it beside your page.",
        "responses": {
            "200": {"description": "The module.", "content": {"text/javascript": {"schema": {"type": "string"}}}}
        },
    }
)
def relay_client() -> Response:
    """Serve the browser client module (RFC 9239's JavaScript type, which module imports require)."""
    # send_file: ETag and Last-Modified, so a browser revalidates (304) instead of downloading it again.
    return send_file(PROJECT_DIR / "relay-client.js", mimetype="text/javascript", max_age=0)
