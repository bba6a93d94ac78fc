"""OpenAPI 3.1 documents generated from the routes each app registers, served at ``GET /openapi.json``.

The paths and methods come from the app's own URL map; each view states its
operation (summary, answers, body) with :func:`operation` right above its
code, and a view that parses a query does so with a :class:`~relay.web.query.Query`
whose parameters are also the document's. Limits that come from settings
(batch size, body sizes) are read from the app's settings, so the document
an app serves is the one it enforces. :func:`init_openapi`, called last in
each app factory, builds the document once and refuses to start an app with
a route that has no operation.

What both APIs share (the error shape, the health, OpenAPI and metrics
operations, the optional bearer token, the 405 answer) is built here once.
``docs/api.md`` is the same reference for people; ``tests/web/test_openapi.py``
validates both documents, checks real responses against them and checks
that every operation is in the docs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask

from relay.auth import CAPABILITIES, EVERY_CHANNEL
from relay.records import CHANNEL_PATTERN, DEFAULT_CHANNEL
from relay.settings import Settings
from relay.web.base import json_response
from relay.web.ratelimit import POLICY

EXAMPLE_ID = "019ace2e-7b1a-7c3e-9f10-2b4c6d8e0a12"
EXAMPLE_TIME = "2026-11-29T07:40:21.123456Z"
EXAMPLE_OFFSET, EXAMPLE_POSITION = 42, 1042
_RFC3339_MICROS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
# The IETF fields (draft-ietf-httpapi-ratelimit-headers) and the older X-RateLimit-* kept for existing clients.
RATE_LIMIT_HEADERS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)
_OPERATION = "openapi_operation"  # the attribute operation() sets on a view function (ours)
# Flask's "<converter:name>" path segments, written as OpenAPI's "{name}".
_PATH_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")

Build = dict[str, Any] | Callable[[Settings], dict[str, Any]]
View = TypeVar("View", bound=Callable[..., Any])


def ref(kind: str, name: str) -> dict[str, str]:
    """A ``$ref`` to ``#/components/<kind>/<name>``."""
    return {"$ref": f"#/components/{kind}/{name}"}


def json_content(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    """An ``application/json`` content object."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def error(description: str, code: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A response with the JSON error body; ``code`` is the example's ``error``."""
    response: dict[str, Any] = {
        "description": description,
        "content": json_content(
            ref("schemas", "Error"), {"error": code, "message": "A sentence saying what to change."}
        ),
    }
    if headers:
        response["headers"] = {name: ref("headers", name) for name in headers}
    return response


def unavailable(code: str, what: str) -> dict[str, Any]:
    """The 503 of a dependency that does not answer."""
    return error(f"{what} does not answer; retry after `Retry-After` seconds. Code `{code}`.", code, ("Retry-After",))


def codes(names: list[str] | tuple[str, ...]) -> str:
    """Error codes as the descriptions list them: "`a`, `b`"."""
    return ", ".join(f"`{name}`" for name in names)


def security(capability: str) -> list[dict[str, list[str]]]:
    """An operation's ``security``: a bearer token with ``capability`` when tokens are configured, else nothing.

    OpenAPI 3.1 lets a requirement list roles for an ``http`` scheme: the
    capability is listed there, machine-readable, as well as in prose.
    """
    return [{"bearerAuth": [capability]}, {}]


def needs(capability: str, where: str) -> str:
    """The sentence an operation's description ends with: the capability it needs, and on what."""
    return (
        f" When tokens are required, it needs `{capability}` on {where}: a signed token's `channels` claim "
        "must allow it (a static `API_TOKENS` token may do everything)."
    )


def forbidden(capability: str, where: str) -> dict[str, Any]:
    """The 403 of a valid token that lacks ``capability`` on ``where``."""
    return error(
        f"The token is valid but its `channels` claim does not allow `{capability}` on {where}; the message "
        "names the channel and the capability. Not a failed token check (not counted against "
        "`AUTH_FAILURE_LIMIT`). Code `forbidden`.",
        "forbidden",
        ("WWW-Authenticate",),
    )


def operation(build: Build) -> Callable[[View], View]:
    """Attach the OpenAPI operation of a view: a dict, or a function of the app's settings.

    The document puts it under every path and method the view is routed at.
    ``responses`` may leave out 405: every operation gets the shared one.
    """

    def attach(view: View) -> View:
        setattr(view, _OPERATION, build)
        return view

    return attach


def health_operation(what: str, when_down: dict[str, Any]) -> dict[str, Any]:
    """The ``GET /healthz`` operation of an app whose dependency is ``what``."""
    return {
        "operationId": "healthz",
        "tags": ["operations"],
        "summary": f"Tell whether {what} answers",
        "responses": {
            "200": {"description": "Up.", "content": json_content(ref("schemas", "Health"), {"status": "ok"})},
            "503": when_down,
        },
    }


# Routes the shared layers register on both apps, by endpoint.
SHARED_OPERATIONS: dict[str, dict[str, Any]] = {
    "openapi_json": {
        "operationId": "openapi",
        "tags": ["operations"],
        "summary": "This document",
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document of this API.",
                "content": json_content({"type": "object", "required": ["openapi", "info", "paths"]}),
            },
        },
    },
    "metrics": {
        "operationId": "metrics",
        "tags": ["operations"],
        "summary": "Prometheus metrics",
        "responses": {
            "200": {
                "description": "Counters and gauges in the Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    },
}


_BEARER_DESCRIPTION = (
    "Needed only when the server sets `API_TOKENS`, `JWT_SECRET` or `JWT_PUBLIC_KEY`; open otherwise. Two kinds, "
    "both usable at once: a static `API_TOKENS` token may do everything (for services); a signed token (JWT: "
    "HS256 with `JWT_SECRET`, RS256 or ES256 with `JWT_PUBLIC_KEY`) needs `sub` and `exp`, honours `nbf`, must "
    "carry `aud`/`iss` when `JWT_AUDIENCE`/`JWT_ISSUER` are set, and says in its `channels` claim what its "
    "holder may do: an object mapping a pattern (a channel name, a prefix ending in `*`, or "
    f"`{EVERY_CHANNEL}` alone for every channel) to a list of capabilities among "
    + ", ".join(f"`{c}`" for c in CAPABILITIES)
    + f', e.g. `{{"orders.*": ["publish", "history"]}}`. Reading every channel at once needs `{EVERY_CHANNEL}`. '
    "Each operation lists the capability it needs as its requirement's role."
)


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
                "examples": [EXAMPLE_TIME],
            },
            "Channel": {
                "type": "string",
                "pattern": f"^{CHANNEL_PATTERN}$",
                "description": "A channel name: 1 to 64 of `A-Z a-z 0-9 _ . : -`. `POST /dummy` is the channel "
                "`dummy`.",
                "examples": [DEFAULT_CHANNEL],
            },
            "MessageId": {
                "type": "string",
                "format": "uuid",
                "description": "UUIDv7 (RFC 9562), lower case: ids sort by receipt time.",
                "examples": [EXAMPLE_ID],
            },
            "Offset": {
                "type": "integer",
                "minimum": 1,
                "format": "int64",
                "description": "The message's place in its channel, given at acceptance: 1 for the channel's "
                "first message, then consecutive in accept order. A channel's history is in offset order.",
                "examples": [EXAMPLE_OFFSET],
            },
            "Position": {
                "type": "integer",
                "minimum": 1,
                "format": "int64",
                "description": "The message's place among every channel's messages, given with its offset. "
                "The all-channels history is in position order; `after` of a listing and of the websocket "
                "resumes from one.",
                "examples": [EXAMPLE_POSITION],
            },
        },
        "parameters": {
            "Channel": {
                "name": "channel",
                "in": "path",
                "required": True,
                "description": "The channel. A name that does not match the pattern is a 400 `bad_channel`.",
                "schema": ref("schemas", "Channel"),
            }
        },
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            },
            "Allow": {"description": "The methods this path takes.", "required": True, "schema": text},
            "RateLimit-Policy": {
                "description": "The budget, as draft-ietf-httpapi-ratelimit-headers writes it: "
                f'`"{POLICY}";q=<messages>;w=<seconds>`, `q` messages per client per `w` seconds '
                "(`RATE_LIMIT`; a batch of n costs n). Only when `RATE_LIMIT` is set.",
                "schema": {"type": "string", "pattern": f'^"{POLICY}";q=[0-9]+;w=[0-9]+$'},
            },
            "RateLimit": {
                "description": f'What is left of it: `"{POLICY}";r=<messages>;t=<seconds>`, `r` messages left now '
                "and `t` seconds until the window has room again (draft-ietf-httpapi-ratelimit-headers). Only when "
                "`RATE_LIMIT` is set.",
                "schema": {"type": "string", "pattern": f'^"{POLICY}";r=[0-9]+;t=[0-9]+$'},
            },
            **{
                f"X-RateLimit-{name}": {
                    "description": f"{meaning} (only when `RATE_LIMIT` is set; `RateLimit` and `RateLimit-Policy` "
                    "say the same in the IETF draft's syntax).",
                    "schema": count,
                }
                for name, meaning in (
                    ("Limit", "Messages allowed in the window"),
                    ("Remaining", "Messages left in the window"),
                    ("Reset", "When the window has room again, as a Unix time"),
                )
            },
            "WWW-Authenticate": {
                "description": "The scheme to use, `Bearer`, and on a refusal why (RFC 6750): "
                '`error="invalid_token"` (401, a token was presented) or `error="insufficient_scope"` (403, with '
                "the missing capability as its scope).",
                "required": True,
                "schema": {"type": "string", "pattern": "^Bearer"},
            },
        },
        "responses": {
            "MethodNotAllowed": error(
                "The path exists but not with this method; `Allow` lists the ones it takes. Code "
                "`method_not_allowed`. (Listed on every operation because it belongs to the path.)",
                "method_not_allowed",
                ("Allow",),
            ),
            "Unauthorized": error(
                "Tokens are required (`API_TOKENS`, `JWT_SECRET` or `JWT_PUBLIC_KEY` is set) and the request "
                "has no valid `Authorization: Bearer <token>`: missing, malformed, not one of `API_TOKENS`, "
                "badly signed, signed with an algorithm not accepted here (alg none never is), for another "
                "audience or issuer, or not yet valid: code `unauthorized`. Expired (past `exp`): code "
                '`token_expired`, get a fresh one. `WWW-Authenticate` is `Bearer realm="messages"`, with '
                '`error="invalid_token"` when a token was presented (RFC 6750).',
                "unauthorized",
                ("WWW-Authenticate",),
            ),
            "TooManyFailedTokens": error(
                "Tokens are required and this address failed the token check more often than "
                "`AUTH_FAILURE_LIMIT` allows (counted over every service together); a valid token still "
                "passes. `Retry-After` is at least 1. Code `too_many_requests`.",
                "too_many_requests",
                ("Retry-After",),
            ),
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT, or a static token",
                "description": _BEARER_DESCRIPTION,
            }
        },
    }


def _operation_of(app: Flask, endpoint: str, settings: Settings) -> dict[str, Any]:
    build = getattr(app.view_functions[endpoint], _OPERATION, None) or SHARED_OPERATIONS.get(endpoint)
    if build is None:
        raise LookupError(f"route endpoint {endpoint!r} has no OpenAPI operation: decorate its view with operation()")
    built = build(settings) if callable(build) else build
    responses = {**built["responses"], "405": ref("responses", "MethodNotAllowed")}
    return {**built, "responses": dict(sorted(responses.items()))}


def _paths(app: Flask, settings: Settings) -> dict[str, Any]:
    """Every route of ``app`` (without Flask's automatic HEAD and OPTIONS) with its view's operation."""
    paths: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # only with a static folder, which neither app has
            continue
        item = paths.setdefault(_PATH_PARAMETER.sub(r"{\1}", rule.rule), {})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = _operation_of(app, rule.endpoint, settings)
    return paths


def document(app: Flask, title: str, description: str, components: Build, port: int) -> dict[str, Any]:
    """Build the OpenAPI document of ``app`` from its routes, with its own ``components`` added."""
    settings: Settings = app.config["SETTINGS"]
    extra = components(settings) if callable(components) else components
    merged = _common_components()
    for kind, entries in extra.items():
        merged.setdefault(kind, {}).update(entries)
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
        "paths": _paths(app, settings),
        "components": merged,
    }


def init_openapi(app: Flask, title: str, description: str, components: Build, port: int) -> None:
    """Serve ``GET /openapi.json``: call last in the factory, once every route is registered.

    Raises ``LookupError`` if a route has no operation, so an undocumented
    route cannot reach production.
    """
    app.add_url_rule("/openapi.json", endpoint="openapi_json", view_func=lambda: json_response(built), methods=["GET"])
    built = document(app, title, description, components, port)
    app.extensions["openapi"] = built
