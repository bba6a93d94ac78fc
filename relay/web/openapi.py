"""OpenAPI 3.1 documents for the two HTTP APIs, served at ``GET /openapi.json``.

:func:`spec` builds the document of ``"ingestion_api"`` or ``"list_api"`` as
plain dicts. What both APIs share (the error shape, the health, OpenAPI and
metrics endpoints, the optional bearer token, the 405 answer) is built once.
Limits that come from settings (batch size, body sizes) are read from the
app's settings, so the document an app serves is the one it enforces.

``docs/api.md`` is the same reference for people; ``tests/test_openapi.py``
validates both documents, checks real responses against them and checks
that every operation is in the docs.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response

from relay.settings import Settings, load_settings
from relay.web.base import json_response

SERVICES = ("ingestion_api", "list_api")
DEFAULT_LIMIT = 100  # list_api.DEFAULT_LIMIT and MAX_LIMIT (a test keeps them equal)
MAX_LIMIT = 1000

_ID = "019ace2e-7b1a-7c3e-9f10-2b4c6d8e0a12"
_TIME = "2026-11-29T07:40:21.123456Z"
_RFC3339_MICROS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
_BEARER = [{"bearerAuth": []}, {}]  # a token when API_TOKENS is set, nothing otherwise


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _error(description: str, code: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A response with the JSON error body; ``code`` is the example's ``error``."""
    response: dict[str, Any] = {
        "description": description,
        "content": _json(_ref("schemas", "Error"), {"error": code, "message": "A sentence saying what to change."}),
    }
    if headers:
        response["headers"] = {name: _ref("headers", name) for name in headers}
    return response


def _unavailable(code: str, what: str) -> dict[str, Any]:
    return _error(f"{what} does not answer; retry after `Retry-After` seconds. Code `{code}`.", code, ("Retry-After",))


def _common_components() -> dict[str, Any]:
    text = {"type": "string"}
    count = {"type": "integer", "minimum": 0}
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "description": "Every 4xx and 5xx answer of both APIs.",
                "required": ["error", "message"],
                "additionalProperties": False,
                "properties": {
                    "error": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_]*$",
                        "description": "Stable machine-readable code, e.g. `malformed_json`.",
                    },
                    "message": {"type": "string", "minLength": 1, "description": "One sentence for people."},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "additionalProperties": False,
                "properties": {"status": {"const": "ok"}},
            },
            "Timestamp": {
                "type": "string",
                "format": "date-time",
                "pattern": _RFC3339_MICROS,
                "description": "RFC 3339, UTC, with microseconds.",
                "examples": [_TIME],
            },
            "MessageId": {
                "type": "string",
                "format": "uuid",
                "description": "UUIDv7 (RFC 9562), lower case: ids sort by receipt time.",
                "examples": [_ID],
            },
        },
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            },
            "Allow": {"description": "The methods this path takes.", "required": True, "schema": text},
            **{
                f"X-RateLimit-{name}": {"description": f"{meaning} (only when `RATE_LIMIT` is set).", "schema": count}
                for name, meaning in (
                    ("Limit", "Requests allowed in the window"),
                    ("Remaining", "Requests left in the window"),
                    ("Reset", "When the window resets, as a Unix time"),
                )
            },
            "WWW-Authenticate": {
                "description": "The scheme to use: `Bearer`.",
                "required": True,
                "schema": {"type": "string", "pattern": "^Bearer"},
            },
        },
        "responses": {
            "MethodNotAllowed": _error(
                "The path exists but not with this method; `Allow` lists the ones it takes. Code "
                "`method_not_allowed`. (Listed on every operation because it belongs to the path.)",
                "method_not_allowed",
                ("Allow",),
            ),
            "Unauthorized": _error(
                "`API_TOKENS` is set and the request has no `Authorization: Bearer <token>` with one of them. "
                "Code `unauthorized`.",
                "unauthorized",
                ("WWW-Authenticate",),
            ),
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "Needed only when the server sets `API_TOKENS` (comma-separated); open otherwise.",
            }
        },
    }


def _operations_paths(health_error: dict[str, Any], health_what: str) -> dict[str, Any]:
    """``/healthz``, ``/openapi.json`` and ``/metrics``, the same on both APIs."""
    not_allowed = _ref("responses", "MethodNotAllowed")
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": f"Tell whether {health_what} answers",
                "responses": {
                    "200": {"description": "Up.", "content": _json(_ref("schemas", "Health"), {"status": "ok"})},
                    "405": not_allowed,
                    "503": health_error,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document of this API.",
                        "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
                    },
                    "405": not_allowed,
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Counters and gauges in the Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "405": not_allowed,
                },
            }
        },
    }


def _post(
    operation_id: str, summary: str, description: str, body: dict[str, Any], answer: str, codes: str
) -> dict[str, Any]:
    """A publishing operation: its answers differ only in the body shape and the 400 codes."""
    accepted = _ref("schemas", answer)
    return {
        "operationId": operation_id,
        "tags": ["messages"],
        "summary": summary,
        "description": description,
        "security": _BEARER,
        "parameters": [_ref("parameters", "IdempotencyKey")],
        "requestBody": {"required": True, "content": body},
        "responses": {
            "200": {
                "description": "A repeat of an `Idempotency-Key` seen in the last `IDEMPOTENCY_TTL_SECONDS`: "
                "the first answer again; nothing new is queued.",
                "content": _json(accepted),
            },
            "202": {"description": "Queued on Redis: it will be stored exactly once.", "content": _json(accepted)},
            "400": _error(
                f"The request cannot be accepted as sent; nothing was queued. Codes: {codes}.", "malformed_json"
            ),
            "401": _ref("responses", "Unauthorized"),
            "405": _ref("responses", "MethodNotAllowed"),
            "413": _ref("responses", "TooLarge"),
            "415": _ref("responses", "UnsupportedMediaType"),
            "422": _error(
                "The `Idempotency-Key` was already used by this client with a different body; nothing was "
                "queued. Code `idempotency_key_reused`.",
                "idempotency_key_reused",
            ),
            "429": _ref("responses", "TooManyRequests"),
            "503": _unavailable("queue_unavailable", "The queue (Redis)"),
        },
    }


def _ingestion(settings: Settings) -> dict[str, Any]:
    components = _common_components()
    location = {
        "description": "Where the message will be readable: `<LIST_API_URL>/messages/<id>`.",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    }
    components["headers"]["Location"] = location
    components["schemas"].update(
        {
            "Payload": {
                "type": "object",
                "description": "Any JSON object. Duplicate keys keep the last value; integers beyond 64 bits "
                "become IEEE doubles; strings round-trip exactly. Nesting is limited to 254 levels.",
                "examples": [{"hello": "world"}],
            },
            "Accepted": {
                "type": "object",
                "required": ["id", "received_at"],
                "additionalProperties": False,
                "properties": {"id": _ref("schemas", "MessageId"), "received_at": _ref("schemas", "Timestamp")},
                "examples": [{"id": _ID, "received_at": _TIME}],
            },
            "BatchAccepted": {
                "type": "object",
                "required": ["ids", "received_at"],
                "additionalProperties": False,
                "properties": {
                    "ids": {
                        "type": "array",
                        "items": _ref("schemas", "MessageId"),
                        "minItems": 1,
                        "maxItems": settings.max_batch_messages,
                        "description": "One id per message, in input order.",
                    },
                    "received_at": _ref("schemas", "Timestamp"),
                },
                "examples": [{"ids": [_ID], "received_at": _TIME}],
            },
        }
    )
    components["parameters"] = {
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Any 1..255 printable ASCII characters chosen by the client. A repeat with the same "
            "body within `IDEMPOTENCY_TTL_SECONDS` (24 h) answers 200 with the first answer and queues nothing; "
            "the same key with another body is 422. Keys are scoped to the client's token.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]{1,255}$"},
        }
    }
    components["responses"].update(
        {
            "TooLarge": _error(
                f"The body is over `MAX_MESSAGE_BYTES` ({settings.max_message_bytes}) for a message, or "
                f"`MAX_BATCH_BYTES` ({settings.max_batch_bytes}) for a batch, however it is framed: code "
                "`too_large`. A batch with more messages than `RATE_LIMIT` allows per period: code "
                "`batch_over_rate_limit`.",
                "too_large",
            ),
            "UnsupportedMediaType": _error(
                "The body is not sent as `Content-Type: application/json` (or `application/*+json`). "
                "Code `unsupported_media_type`.",
                "unsupported_media_type",
            ),
            "TooManyRequests": _error(
                "Over this client's rate limit (`RATE_LIMIT`, counted in messages over both publishing "
                "endpoints; a client is its token, else its address; failed token checks count too). "
                "`Retry-After` is at least 1. Code `too_many_requests`.",
                "too_many_requests",
                ("Retry-After", *RATE_LIMIT_HEADERS),
            ),
        }
    )
    single = _post(
        "postMessage",
        "Publish one message",
        "Accepts one JSON object, queues it for storage and live delivery, and answers at once.",
        _json(_ref("schemas", "Payload"), {"hello": "world"}),
        "Accepted",
        "`malformed_json`, `invalid_utf8`, `too_deep`, `empty_body`, `incomplete_body`, `malformed_body`, "
        "`not_an_object`, `bad_idempotency_key`",
    )

    batch = _post(
        "postBatch",
        "Publish a batch of messages",
        f"Accepts a JSON array of 1 to {settings.max_batch_messages} objects, all or nothing: one bad "
        "element rejects the whole batch. The messages share one `received_at`.",
        _json(
            {
                "type": "array",
                "items": _ref("schemas", "Payload"),
                "minItems": 1,
                "maxItems": settings.max_batch_messages,
            },
            [{"n": 1}, {"n": 2}],
        ),
        "BatchAccepted",
        "`malformed_json`, `invalid_utf8`, `too_deep`, `empty_body`, `incomplete_body`, `malformed_body`, "
        "`not_an_array`, "
        "`bad_batch_size`, `not_an_object` (an element), `bad_idempotency_key`",
    )
    for status in ("200", "202"):
        single["responses"][status]["headers"] = {"Location": _ref("headers", "Location")}
    for operation in (single, batch):
        for status in ("200", "202"):
            headers = operation["responses"][status].setdefault("headers", {})
            headers.update({name: _ref("headers", name) for name in RATE_LIMIT_HEADERS})
    paths = {"/dummy": {"post": single}, "/dummy/batch": {"post": batch}}
    paths.update(_operations_paths(_unavailable("redis_unavailable", "Redis"), "Redis"))
    return _document(
        "Message ingestion API",
        "Publish JSON messages. A 202 means the message is on the Redis queue: it will be stored exactly "
        "once and pushed to live clients. If Redis cannot take it the answer is 503 with `Retry-After`, "
        "never a 202.",
        paths,
        components,
        port=settings.ingestion_api_port,
    )


def _list(settings: Settings) -> dict[str, Any]:
    components = _common_components()
    components["headers"]["Link"] = {
        "description": 'The next page, `<url>; rel="next"`: only when `has_more` is true.',
        "schema": {"type": "string", "pattern": '^<[^>]+>; rel="next"$'},
    }
    components["schemas"].update(
        {
            "Message": {
                "type": "object",
                "required": ["id", "received_at", "persisted_at", "payload"],
                "additionalProperties": False,
                "properties": {
                    "id": _ref("schemas", "MessageId"),
                    "received_at": _ref("schemas", "Timestamp"),
                    "persisted_at": _ref("schemas", "Timestamp"),
                    "payload": {"type": "object", "description": "The published object, exactly as stored."},
                },
                "examples": [
                    {"id": _ID, "received_at": _TIME, "persisted_at": _TIME[:-2] + "9Z", "payload": {"hello": "world"}}
                ],
            },
            "Page": {
                "type": "object",
                "required": ["data", "has_more", "next_cursor"],
                "additionalProperties": False,
                "properties": {
                    "data": {"type": "array", "items": _ref("schemas", "Message"), "maxItems": MAX_LIMIT},
                    "has_more": {"type": "boolean", "description": "Whether another page follows right now."},
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "Set on every non-empty page, the last one included: ask again with it "
                        "later to get only what arrived since. Null only when nothing was ever returned.",
                    },
                },
            },
        }
    )
    components["responses"]["DatabaseUnavailable"] = _unavailable("database_unavailable", "The database")
    unavailable = _ref("responses", "DatabaseUnavailable")
    not_allowed = _ref("responses", "MethodNotAllowed")
    unauthorized = _ref("responses", "Unauthorized")
    parameters = [
        {
            "name": "limit",
            "in": "query",
            "description": "Messages per page.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        },
        {
            "name": "order",
            "in": "query",
            "description": "`asc`: persistence order, oldest first. `desc`: newest first.",
            "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
        },
        {
            "name": "cursor",
            "in": "query",
            "description": "Opaque and signed: the `next_cursor` of an earlier page, never built by hand.",
            "schema": {"type": "string", "minLength": 1},
        },
    ]
    page = {
        "description": "One page.",
        "headers": {"Link": _ref("headers", "Link")},
        "content": _json(_ref("schemas", "Page")),
    }
    paths: dict[str, Any] = {
        "/messages": {
            "get": {
                "operationId": "listMessages",
                "tags": ["messages"],
                "summary": "Page through every stored message",
                "description": "Keyset pagination in persistence order. Following `next_cursor` never misses "
                "a message, even with many workers committing at once. Any other query parameter is a 400.",
                "security": _BEARER,
                "parameters": parameters,
                "responses": {
                    "200": page,
                    "400": _error(
                        "A bad query. Codes: `bad_limit`, `bad_order`, `bad_cursor`, `unknown_parameter`.", "bad_limit"
                    ),
                    "401": unauthorized,
                    "405": not_allowed,
                    "503": unavailable,
                },
            }
        },
        "/messages/{id}": {
            "get": {
                "operationId": "getMessage",
                "tags": ["messages"],
                "summary": "Read one stored message",
                "security": _BEARER,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": _ref("schemas", "MessageId")}],
                "responses": {
                    "200": {"description": "The message.", "content": _json(_ref("schemas", "Message"))},
                    "401": unauthorized,
                    "404": _error(
                        "No stored message has this id (yet: a 202 is followed by storage within moments). "
                        "Code `not_found`.",
                        "not_found",
                    ),
                    "405": not_allowed,
                    "503": unavailable,
                },
            }
        },
        "/": {
            "get": {
                "operationId": "livePage",
                "tags": ["operations"],
                "summary": "The live page",
                "description": "`index.html`: history from this API, then live messages over the websocket.",
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "405": not_allowed,
                },
            }
        },
    }
    paths.update(_operations_paths(unavailable, "the database"))
    return _document(
        "Message list API",
        "Read every stored message, in pages, and the live page.",
        paths,
        components,
        port=settings.list_api_port,
    )


def _document(
    title: str, description: str, paths: dict[str, Any], components: dict[str, Any], port: int
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": description + ' Every error is JSON, `{"error": code, "message": sentence}`; '
            "an unknown path is a 404 `not_found`. See docs/api.md.",
        },
        "servers": [
            {"url": "/", "description": "The server this document was fetched from."},
            {"url": f"http://127.0.0.1:{port}", "description": "The local stack (scripts/run.sh)."},
        ],
        "tags": [
            {"name": "messages", "description": "Publishing and reading messages."},
            {"name": "operations", "description": "Health, metrics, this document."},
        ],
        "paths": paths,
        "components": components,
    }


def spec(service: str, settings: Settings | None = None) -> dict[str, Any]:
    """Return the OpenAPI document of ``service`` ("ingestion_api" or "list_api").

    Limits come from ``settings`` (the defaults when not given).
    """
    settings = settings or load_settings({})
    if service == "ingestion_api":
        return _ingestion(settings)
    if service == "list_api":
        return _list(settings)
    raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")


def init_openapi(app: Flask, service: str) -> None:
    """Serve ``GET /openapi.json`` on ``app``, with the limits of the app's settings."""
    document = spec(service, app.config.get("SETTINGS"))

    def openapi_json() -> Response:
        return json_response(document)

    app.add_url_rule("/openapi.json", endpoint="openapi_json", view_func=openapi_json, methods=["GET"])
