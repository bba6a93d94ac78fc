"""Ingestion API: accepts messages and queues them for persistence and live delivery.

Run: ``gunicorn -b 0.0.0.0:5000 "ingestion_api:create_app()"``.
Reads ``REDIS_URL``, ``REDIS_TIMEOUT_SECONDS``, ``LIST_API_URL``,
``MAX_MESSAGE_BYTES``, ``MAX_BATCH_MESSAGES``, ``MAX_BATCH_BYTES``,
``IDEMPOTENCY_TTL_SECONDS``, ``PERSIST_QUEUE``, ``LIVE_STREAM_KEY``,
``LIVE_WINDOW``, ``API_TOKENS``, ``RATE_LIMIT``, ``PROXY_COUNT`` and
``CORS_ORIGINS`` through ``config.py``.

Endpoints: ``POST /dummy`` (one JSON object), ``POST /dummy/batch`` (an
array of 1..1000 objects), ``GET /healthz``. A 202 means the message is in
Redis (durable as Redis is configured); if Redis cannot be written the
answer is 503 with ``Retry-After``, never a 202.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import broker
import metrics
from config import Settings, load_settings
from logs import configure_logging
from messages import InvalidMessage, make_record, parse_batch, parse_message, utc_now
from metrics import GaugeCollector, init_metrics
from openapi import init_openapi
from web import error_response, init_web, json_response, protect

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the ingestion API; ``test_config`` overrides settings by field name."""
    settings = load_settings(**dict(test_config or {}))
    configure_logging("ingestion_api", settings.log_format, settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_message_bytes, settings.max_batch_bytes)
    app.extensions["broker"] = broker.Broker(
        broker.connect(settings.redis_url, settings.redis_timeout_seconds),
        queue=settings.persist_queue,
        stream=settings.live_stream_key,
        window=settings.live_window,
        idempotency_ttl=settings.idempotency_ttl_seconds,
        group_commit=bool(settings.ingest_group_commit),
    )
    init_web(app, settings)
    init_openapi(app, "ingestion_api")
    CORS(app, origins=list(settings.cors_origins), methods=["POST"], expose_headers=["Location"])
    app.add_url_rule("/dummy", view_func=post_message, methods=["POST"])
    app.add_url_rule("/dummy/batch", view_func=post_batch, methods=["POST"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    protect(app, settings.api_tokens, {"post_message", "post_batch"})
    _rate_limit(app, settings)
    queue = app.extensions["broker"]
    init_metrics(app, "ingestion_api", [GaugeCollector("persist_queue_depth", "Task messages waiting.", queue.depth)])
    app.after_request(_count_rejections)
    return app


def _count_rejections(response: Response) -> Response:
    if request.endpoint in ("post_message", "post_batch") and 400 <= response.status_code < 500:
        metrics.REJECTED.labels(str(response.status_code)).inc()
    return response


def _rate_limit(app: Flask, settings: Settings) -> None:
    """Limit the POSTs per client address, counted in Redis so the limit holds across processes."""
    if not settings.rate_limit:
        return
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis trouble must not turn into 500s; the queue write answers 503 anyway
    )
    message = f"Too many requests from this address (limit {settings.rate_limit}); retry after Retry-After seconds."
    for view in ("post_message", "post_batch"):
        app.view_functions[view] = limiter.limit(settings.rate_limit, error_message=message)(app.view_functions[view])

    @app.after_request
    def retry_after_only_when_limited(response: Response) -> Response:
        if response.status_code not in (429, 503):  # Flask-Limiter adds it to every response
            response.headers.pop("Retry-After", None)
        return response


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _read_json_body(limit: int) -> bytes | Response:
    """Return the raw body, or the error response for a wrong type or size."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        return error_response(415, "unsupported_media_type", "Send the message with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "too_large", f"The body is larger than the {limit}-byte limit.")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        return error_response(413, "too_large", f"The body is larger than the {limit}-byte limit.")
    if request.content_length is not None and len(body) < request.content_length:
        # The client closed before sending what it declared (RFC 9112 section 8): never accept a fragment.
        return error_response(400, "incomplete_body", "The body ended before its Content-Length.")
    return body


def _idempotency_key() -> str | Response | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        return error_response(
            400, "bad_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters."
        )
    return key


def _accept(records: list[dict[str, str]], answer: dict[str, Any], location: str | None) -> Response:
    """Queue ``records`` and answer 202, or 503 when Redis cannot take them."""
    key = _idempotency_key()
    if isinstance(key, Response):
        return key
    try:
        scoped_key = f"{request.endpoint}:{key}" if key is not None else None  # each endpoint has its own answers
        result = current_app.extensions["broker"].enqueue(records, answer, scoped_key)
    except redis.RedisError as exc:
        ids = [r["id"] for r in records]
        current_app.logger.warning("queue write failed (%s); answering 503", exc, extra={"message_ids": ids})
        return error_response(
            503, "queue_unavailable", "The message queue is unavailable; retry shortly.", {"Retry-After": "1"}
        )
    if not result.repeated:
        metrics.ACCEPTED.labels(request.endpoint).inc(len(records))
    if not result.live_published:
        metrics.LIVE_PUBLISH_FAILURES.inc(len(records))
        current_app.logger.warning("live publish failed", extra={"message_ids": [r["id"] for r in records]})
    headers = {"Location": location} if location else {}
    if result.repeated and "id" in result.answer:
        headers["Location"] = f"{_settings().list_api_url}/messages/{result.answer['id']}"
    return json_response(result.answer, 200 if result.repeated else 202, headers)


def _invalid(exc: InvalidMessage) -> Response:
    return error_response(413 if exc.code == "too_large" else 400, exc.code, exc.message)


def post_message() -> Response:
    """Accept one JSON object."""
    body = _read_json_body(_settings().max_message_bytes)
    if isinstance(body, Response):
        return body
    try:
        record = make_record(parse_message(body), utc_now(), _settings().max_message_bytes)
    except InvalidMessage as exc:
        return _invalid(exc)
    answer = {"id": record["id"], "received_at": record["received_at"]}
    return _accept([record], answer, f"{_settings().list_api_url}/messages/{record['id']}")


def post_batch() -> Response:
    """Accept an array of objects, all or nothing."""
    settings = _settings()
    body = _read_json_body(settings.max_batch_bytes)
    if isinstance(body, Response):
        return body
    received_at = utc_now()
    try:
        payloads = parse_batch(body, settings.max_batch_messages)
        records = [make_record(payload, received_at, settings.max_message_bytes) for payload in payloads]
    except InvalidMessage as exc:
        return _invalid(exc)
    answer = {"ids": [r["id"] for r in records], "received_at": records[0]["received_at"]}
    return _accept(records, answer, None)


def healthz() -> Response:
    """Report whether Redis answers."""
    if current_app.extensions["broker"].ping():
        return json_response({"status": "ok"})
    return error_response(503, "redis_unavailable", "Redis does not answer.", {"Retry-After": "1"})
