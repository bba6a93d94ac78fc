"""Ingestion API: accepts messages and queues them for persistence and live delivery.

Run: ``gunicorn -b 0.0.0.0:5000 "ingestion_api:create_app()"``.
Reads ``REDIS_URL``, ``REDIS_TIMEOUT_SECONDS``, ``REDIS_MEMORY_HIGH_WATER``, ``LIST_API_URL``,
``MAX_MESSAGE_BYTES``, ``MAX_BATCH_MESSAGES``, ``MAX_BATCH_BYTES``,
``IDEMPOTENCY_TTL_SECONDS``, ``PERSIST_QUEUE``, ``LIVE_STREAM_KEY``,
``LIVE_WINDOW``, ``API_TOKENS``, ``JWT_*``, ``RATE_LIMIT``, ``PROXY_COUNT`` and
``CORS_ORIGINS`` through ``relay/settings.py``.

Endpoints: ``POST /channels/<channel>/messages`` (one JSON object),
``POST /channels/<channel>/messages/batch`` (an array of 1..1000 objects),
the seed's ``POST /dummy`` and ``POST /dummy/batch`` (the same for the
channel ``dummy``), ``GET /healthz``. A repeated ``Idempotency-Key`` gets the
first answer again, 202, body and ``Location``, marked ``Idempotent-Replayed: true``.
A 202 means the message is in
Redis (durable as Redis is configured); if Redis cannot be written the
answer is 503 with ``Retry-After``, never a 202. So is a Redis that could
not keep the promise (``relay.broker.memory``): one whose
``maxmemory-policy`` evicts, or one filled to ``REDIS_MEMORY_HIGH_WATER``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from flask import Flask, Response, current_app, g, request
from flask_cors import CORS
from prometheus_client import Counter
from werkzeug.exceptions import ClientDisconnected, RequestTimeout

from relay.broker.connection import connect
from relay.broker.contract import idempotency_key, make_celery, queue_depth, send_records, warm_sender
from relay.broker.group_commit import QueueBusy
from relay.broker.memory import MemoryWatch, Refusal
from relay.broker.producer import (
    BUSY_SECONDS,
    Idempotency,
    IdempotencyKeyReused,
    OutcomeUnknown,
    PositionsUnseeded,
    Producer,
)
from relay.logs import configure_logging
from relay.metrics import GaugeCollector, init_metrics
from relay.records import (
    DEFAULT_CHANNEL,
    InvalidMessage,
    make_record,
    parse_batch,
    parse_message,
    utc_now,
)
from relay.settings import Settings, load_settings
from relay.web import openapi
from relay.web.access import PUBLISH, authorize, request_grant
from relay.web.base import ApiError, add_channel_rule, channel_name, init_web, json_response
from relay.web.openapi import RATE_LIMIT_HEADERS, error, json_content, operation, ref
from relay.web.ratelimit import RateLimit, Verdict, client_for_address

# What a browser's script may read of an answer beyond the CORS-safelisted fields.
EXPOSED_HEADERS = ["Location", "Idempotent-Replayed", "Retry-After", *RATE_LIMIT_HEADERS]

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # also the header's schema in the document
_READ_CHUNK = 65536
PUBLISH_ENDPOINTS = frozenset({"post_message", "post_batch", "post_channel_message", "post_channel_batch"})
# The ingestion API's own metric families (relay/metrics.py explains why each service defines its own).
ACCEPTED = Counter("messages_accepted_total", "Messages accepted (202) by the ingestion API.", ["endpoint"])
REJECTED = Counter("messages_rejected_total", "Requests rejected with a 4xx, by error code.", ["error"])
LIVE_PUBLISH_FAILURES = Counter("live_publish_failures_total", "Accepted messages whose live publish failed.")
# How long a write of several task messages (a large batch) may wait for Redis' answer before it is settled.
BULK_READ_SECONDS = 5.0


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the ingestion API; ``test_config`` overrides settings by field name."""
    settings = load_settings(**dict(test_config or {}))
    configure_logging("ingestion_api", settings.log_format, settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.config["SETTINGS"] = settings
    # No MAX_CONTENT_LENGTH: each view enforces its own limit while reading (see _read_body), and a
    # chunked body must be read past the limit to know it is over it (Werkzeug stops at the limit).
    # Celery's producer, for the task messages sent once a write has accepted the records.
    celery = make_celery(settings, timeout=settings.redis_timeout_seconds)
    warm_sender(celery)
    app.extensions["broker"] = Producer(
        connect(settings.redis_url, settings.redis_timeout_seconds),
        queue=settings.persist_queue,
        stream=settings.live_stream_key,
        window=settings.live_window,
        idempotency_ttl=settings.idempotency_ttl_seconds,
        send=_sender(celery, settings),
        gather_seconds=settings.ingest_send_gather_seconds,
        group_commit=bool(settings.ingest_group_commit),
        message_max_bytes=settings.persist_message_max_bytes,
        probe_client=connect(settings.redis_url, settings.redis_timeout_seconds, read_timeout=1.0),
        bulk_client=connect(settings.redis_url, settings.redis_timeout_seconds, read_timeout=BULK_READ_SECONDS),
    )
    # Redis' memory and eviction policy, read at most once a second per process (relay.broker.memory), on a
    # client of its own: a read queued behind the producer's settling would leave the watch blind.
    info = connect(settings.redis_url, settings.redis_timeout_seconds)
    app.extensions["redis_memory"] = MemoryWatch(lambda: info.info("memory"), settings.redis_memory_high_water)
    if settings.rate_limit:
        app.extensions["rate_limit"] = RateLimit(
            settings.rate_limit, settings.redis_url, settings.redis_timeout_seconds
        )
    init_web(app, settings)
    CORS(app, origins=list(settings.cors_origins), methods=["POST"], expose_headers=EXPOSED_HEADERS)
    app.add_url_rule("/dummy", view_func=post_message, methods=["POST"])
    app.add_url_rule("/dummy/batch", view_func=post_batch, methods=["POST"])
    add_channel_rule(app, "/channels/<channel:channel>/messages", post_channel_message, ["POST"])
    add_channel_rule(app, "/channels/<channel:channel>/messages/batch", post_channel_batch, ["POST"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    depth = GaugeCollector("persist_queue_depth", "Task messages waiting.", _depth(celery, settings.persist_queue))
    init_metrics(app, "ingestion_api", settings.metrics_multiprocess, [depth])
    app.after_request(_count_rejections)
    openapi.init_openapi(
        app,
        "Message ingestion API",
        "Publish JSON messages. A 202 means the message is on the Redis queue: it will be stored exactly "
        "once and pushed to live clients. If Redis cannot take it the answer is 503 with `Retry-After`, "
        "never a 202.",
        components,
        settings.ingestion_api_port,
    )
    return app


def components(settings: Settings) -> dict[str, Any]:
    """The schemas, headers, parameters and responses the publishing operations refer to."""
    return {
        "headers": {
            "Location": {
                "description": "Where the message will be readable: `<LIST_API_URL>/messages/<id>`.",
                "required": True,
                "schema": {"type": "string", "format": "uri"},
            },
            "Idempotent-Replayed": {
                "description": "`true` on a repeat of an `Idempotency-Key`: this is the first answer again, and "
                "nothing new was queued. Absent on a first answer.",
                "schema": {"type": "string", "enum": ["true"]},
            },
            "RetryAfterRateLimited": {
                "description": "Seconds to wait before the budget has room: at least 1. Absent on "
                "`batch_over_rate_limit`, which no wait cures.",
                "schema": {"type": "integer", "minimum": 1},
            },
        },
        "schemas": {
            "Payload": {
                "type": "object",
                "description": "Any JSON object. Duplicate keys keep the last value; integers beyond 64 bits "
                "become IEEE doubles; strings round-trip exactly. Nesting is limited to 254 levels.",
                "examples": [{"hello": "world"}],
            },
            "Accepted": {
                "type": "object",
                "required": ["id", "received_at", "channel", "offset"],
                "additionalProperties": False,
                "properties": {
                    "id": ref("schemas", "MessageId"),
                    "received_at": ref("schemas", "Timestamp"),
                    "channel": ref("schemas", "Channel"),
                    "offset": ref("schemas", "Offset"),
                },
                "examples": [
                    {
                        "id": openapi.EXAMPLE_ID,
                        "received_at": openapi.EXAMPLE_TIME,
                        "channel": "dummy",
                        "offset": openapi.EXAMPLE_OFFSET,
                    }
                ],
            },
            "BatchAccepted": {
                "type": "object",
                "required": ["ids", "received_at", "channel", "offsets"],
                "additionalProperties": False,
                "properties": {
                    "channel": ref("schemas", "Channel"),
                    "ids": {
                        "type": "array",
                        "items": ref("schemas", "MessageId"),
                        "minItems": 1,
                        "maxItems": settings.max_batch_messages,
                        "description": "One id per message, in input order.",
                    },
                    "received_at": ref("schemas", "Timestamp"),
                    "offsets": {
                        "type": "array",
                        "items": ref("schemas", "Offset"),
                        "minItems": 1,
                        "maxItems": settings.max_batch_messages,
                        "description": "Each message's offset, in input order: consecutive.",
                    },
                },
                "examples": [
                    {
                        "ids": [openapi.EXAMPLE_ID],
                        "received_at": openapi.EXAMPLE_TIME,
                        "channel": "dummy",
                        "offsets": [openapi.EXAMPLE_OFFSET],
                    }
                ],
            },
        },
        "parameters": {
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Any 1..255 printable ASCII characters chosen by the client. A repeat with the "
                "same body within `IDEMPOTENCY_TTL_SECONDS` (24 h) answers the first answer again (202, its body "
                "and `Location`) with `Idempotent-Replayed: true`, and queues nothing; the same key with another "
                "body is 422. Keys are scoped to the client (a signed token's `sub`, or the static token), the "
                "channel and single-or-batch (`POST /dummy` shares its keys with `/channels/dummy/messages`).",
                "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY.pattern},
            }
        },
        "responses": {
            "TooLarge": error(
                f"The body is over `MAX_MESSAGE_BYTES` ({settings.max_message_bytes}) for a message, or "
                f"`MAX_BATCH_BYTES` ({settings.max_batch_bytes}) for a batch, however it is framed: code "
                "`too_large`.",
                "too_large",
            ),
            "UnsupportedMediaType": error(
                "The body is not sent as `Content-Type: application/json` (or `application/*+json`). "
                "Code `unsupported_media_type`.",
                "unsupported_media_type",
            ),
            "TooManyRequests": _too_many_requests(),
        },
    }


def _too_many_requests() -> dict[str, Any]:
    """The 429: over the budget now (retry later), or a batch the budget can never hold (no Retry-After)."""
    answer = error(
        "Over this client's rate limit (`RATE_LIMIT`, counted in messages over every publishing "
        "endpoint and channel together; a client is its signed token's `sub`, or its static token, else "
        "its address), or too many failed token checks from this address (`AUTH_FAILURE_LIMIT`, over every "
        "service together): code `too_many_requests`, with `Retry-After` at least 1. A batch of more messages "
        "than `RATE_LIMIT` allows in a whole period, which no wait lets through: code `batch_over_rate_limit`, "
        "without `Retry-After`; send smaller batches.",
        "too_many_requests",
        RATE_LIMIT_HEADERS,
    )
    answer["headers"]["Retry-After"] = ref("headers", "RetryAfterRateLimited")
    return answer


# The 400 codes both publishing operations share (body reading, JSON parsing, the Idempotency-Key).
_BODY_CODES = ("malformed_json", "invalid_utf8", "too_deep", "empty_body", "incomplete_body", "malformed_body")


def _publish_operation(
    operation_id: str,
    summary: str,
    description: str,
    body: dict[str, Any],
    answer: str,
    bad: tuple[str, ...],
    channel: bool = False,
) -> dict[str, Any]:
    """A publishing operation: its answers differ only in the body shape, the 400 codes and ``Location``.

    ``channel``: the path names the channel (``/channels/{channel}/...``), which can be a 400 ``bad_channel``.
    """
    if channel:
        bad = ("bad_channel", *bad)
    headers = {name: ref("headers", name) for name in RATE_LIMIT_HEADERS}
    if answer == "Accepted":
        headers["Location"] = ref("headers", "Location")
    headers["Idempotent-Replayed"] = ref("headers", "Idempotent-Replayed")
    accepted = json_content(ref("schemas", answer))
    where = "the channel in the path" if channel else f"the channel `{DEFAULT_CHANNEL}`"
    return {
        "operationId": operation_id,
        "tags": ["messages"],
        "summary": summary,
        "description": description + openapi.needs(PUBLISH, where),
        "security": openapi.security(PUBLISH),
        "parameters": [*([ref("parameters", "Channel")] if channel else []), ref("parameters", "IdempotencyKey")],
        "requestBody": {"required": True, "content": body},
        "responses": {
            "202": {
                "description": "Queued on Redis: it will be stored exactly once. A repeat of an `Idempotency-Key` "
                "seen in the last `IDEMPOTENCY_TTL_SECONDS` gets the first answer again (its body and "
                "`Location`) with `Idempotent-Replayed: true`; nothing new is queued.",
                "headers": headers,
                "content": accepted,
            },
            "400": error(
                "The request cannot be accepted as sent; nothing was queued. Codes: "
                f"{openapi.codes((*_BODY_CODES, *bad, 'bad_idempotency_key'))}.",
                "malformed_json",
            ),
            "401": ref("responses", "Unauthorized"),
            "403": openapi.forbidden(PUBLISH, where),
            "413": ref("responses", "TooLarge"),
            "415": ref("responses", "UnsupportedMediaType"),
            "422": error(
                "The `Idempotency-Key` was already used by this client with a different body; nothing was "
                "queued. Code `idempotency_key_reused`.",
                "idempotency_key_reused",
            ),
            "429": ref("responses", "TooManyRequests"),
            "503": error(
                "The queue (Redis) does not answer or cannot take it; retry after `Retry-After` seconds. Code "
                "`queue_unavailable`: nothing was queued. Code `outcome_unknown`: the write reached Redis but "
                "whether it ran could not be found out (Redis went away before answering, or stayed too slow "
                f"to answer for about {BUSY_SECONDS:g} s), so it may have been queued; a retry with the same "
                "`Idempotency-Key` is safe (without one, a retry may store the message twice). "
                f"{_MEMORY_CODES} Code `positions_unseeded`: no worker has yet read the stored positions into "
                "this Redis (a new or emptied one). Nothing was queued.",
                "queue_unavailable",
                ("Retry-After",),
            ),
        },
    }


# The 503s of a Redis that could not keep a 202's promise (relay.broker.memory); /healthz says the first too.
_EVICTING = (
    "Code `redis_evicting`: Redis' `maxmemory-policy` is not `noeviction`, so it could drop queued "
    "messages; refused until it is."
)
_MEMORY_CODES = (
    f"{_EVICTING} Code `queue_full`: Redis' memory is at `REDIS_MEMORY_HIGH_WATER` of its `maxmemory`; "
    "refused until the workers have drained the queue below it."
)


def _refused(refusal: Refusal) -> ApiError:
    """The 503 of a Redis that could not keep the promise of a 202 (evicting, or full)."""
    return ApiError(503, refusal.code, refusal.message, {"Retry-After": "1"})


def _sender(celery: Celery, settings: Settings) -> Callable[[Sequence[dict[str, str]]], object]:
    """How accepted records leave as task messages: Celery's ``send_task``, split by size."""
    return functools.partial(send_records, celery, settings.persist_queue, max_bytes=settings.persist_message_max_bytes)


def _depth(celery: Celery, queue: str) -> Callable[[], int | None]:
    def depth() -> int | None:
        try:
            return queue_depth(celery, queue)
        except Exception:  # Redis down: the gauge is absent from this scrape
            return None

    return depth


def _count_rejections(response: Response) -> Response:
    if request.endpoint in PUBLISH_ENDPOINTS and 400 <= response.status_code < 500:
        REJECTED.labels(str(response.status_code)).inc()
    return response


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _rate_limit() -> RateLimit | None:
    return current_app.extensions.get("rate_limit")


def _limited(verdict: Verdict) -> ApiError:
    message = f"Too many messages from this client (limit {_settings().rate_limit}); retry after Retry-After seconds."
    return ApiError(429, "too_many_requests", message, {"Retry-After": str(verdict.retry_after), **verdict.headers()})


def _never_fits(limit: RateLimit, client: str, cost: int) -> ApiError:
    """The 429 of a batch larger than a whole period's budget: no Retry-After, since waiting cannot help."""
    verdict = limit.peek(client)
    return ApiError(
        429,
        "batch_over_rate_limit",
        f"This batch has {cost} messages but the rate limit allows {limit.amount} per client in a whole period "
        f"({_settings().rate_limit}), so it can never be accepted; send batches of at most {limit.amount}.",
        verdict.headers() if verdict is not None else {},
    )


def _publisher(channel: str) -> tuple[str, str | None]:
    """The channel a request publishes to and its client, or raise 401 (429), 400 ``bad_channel`` or 403.

    The client (``Grant.client``) scopes rate limits and Idempotency-Keys: a
    signed token's ``sub``, a static token's digest (as before signed tokens
    existed), or None when no token is needed: rate limits then count per
    address, and idempotency has one anonymous tenant (a retry from a new
    address still matches).
    """
    request_grant()  # a token that does not authenticate is refused before the request is looked at
    channel = channel_name(channel)
    return channel, authorize(PUBLISH, channel).client


def _charge(client: str | None, cost: int) -> Verdict | None:
    """Take ``cost`` messages from the client's budget, or raise 429 (``batch_over_rate_limit`` if it never fits)."""
    limit = _rate_limit()
    if limit is None:
        return None
    client = client or client_for_address(request.remote_addr)
    if cost > limit.amount:
        raise _never_fits(limit, client, cost)
    verdict = limit.charge(client, cost)
    if verdict is not None and not verdict.allowed:
        raise _limited(verdict)
    return verdict


def _read_body(limit: int) -> bytes:
    """Return the whole body, or raise the error for a wrong type, a size over ``limit`` or broken framing.

    The body is read to its end (or one byte past ``limit``), whatever its
    framing: a chunked body is over the limit only once more than ``limit``
    bytes have arrived, and it is parsed only if it ended properly.
    """
    mimetype = request.mimetype
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "Send the message with Content-Type: application/json.")
    too_large = ApiError(413, "too_large", f"The body is larger than the {limit}-byte limit.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    incomplete = ApiError(400, "incomplete_body", "The body ended before its declared length or final chunk.")
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = request.stream.read(min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestTimeout:  # the body did not arrive in time (relay/web/gunicorn_worker.py): 408 as it is
        raise
    except (ClientDisconnected, OSError):
        raise incomplete from None
    except Exception:  # the server's own parse errors of a malformed chunked body (sizes, extensions, trailers)
        raise ApiError(400, "malformed_body", "The body's chunked framing is malformed.") from None
    if size > limit:
        raise too_large
    if request.content_length is not None and size < request.content_length:
        # The client closed before sending what it declared (RFC 9112 section 8): never accept a fragment.
        raise incomplete
    return b"".join(chunks)


def _idempotency(client: str | None, scope: str, body: bytes) -> Idempotency | None:
    """The request's Idempotency-Key scoped to its client and ``scope`` (kind and channel), bound to its body."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    return Idempotency(idempotency_key(client, scope, key), hashlib.sha256(body).hexdigest())


def _accept(
    records: list[dict[str, str]],
    answer: dict[str, Any],
    location: str | None,
    client: str | None,
    body: bytes,
    scope: str,
) -> Response:
    """Queue ``records`` and answer 202 (the first answer again for a repeat), or the error (nothing queued)."""
    idempotency = _idempotency(client, scope, body)
    # Before the rate limit is charged: a message Redis cannot take costs the client nothing.
    if (refusal := current_app.extensions["redis_memory"].refusal()) is not None:
        raise _refused(refusal)
    verdict = _charge(client, len(records))
    ids = [r["id"] for r in records]
    g.message_ids = ids  # on this request's log lines, the access line included (relay/web/base.py)
    try:
        # The Idempotency-Key keeps the first body, as every release has kept it (a process of the release
        # before, during a rolling upgrade, replays it too); only a 202 is ever kept, so its status is not.
        result = current_app.extensions["broker"].enqueue(records, answer, idempotency)
    except IdempotencyKeyReused:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different body; use a new key for a new message.",
        ) from None
    except OutcomeUnknown as exc:
        current_app.logger.error("queue write outcome unknown (%s); answering 503 outcome_unknown", exc)
        raise ApiError(
            503,
            "outcome_unknown",
            "Redis did not confirm whether the message was queued: it may have been. A retry with the same "
            "Idempotency-Key is safe; without one, a retry may store it twice.",
            {"Retry-After": "1"},
        ) from None
    except PositionsUnseeded:
        raise ApiError(
            503,
            "positions_unseeded",
            "No worker has yet read the stored positions into this Redis (a new or emptied Redis): messages get "
            "their positions once one has. Start a worker; retry shortly.",
            {"Retry-After": "1"},
        ) from None
    except (redis.RedisError, QueueBusy) as exc:
        current_app.logger.warning("queue write failed (%s); answering 503", exc)
        raise ApiError(
            503, "queue_unavailable", "The message queue is unavailable; retry shortly.", {"Retry-After": "1"}
        ) from None
    if not result.repeated:
        ACCEPTED.labels(request.endpoint).inc(len(records))
    if not result.live_published:
        LIVE_PUBLISH_FAILURES.inc(len(records))
        current_app.logger.warning("live publish failed")
    headers = {"Location": location} if location else {}
    if result.repeated:
        headers["Idempotent-Replayed"] = "true"  # as Stripe marks its replays
        if "id" in result.answer:  # a single message: its Location, rebuilt from the id
            headers["Location"] = f"{_settings().list_api_url}/messages/{result.answer['id']}"
    headers.update(verdict.headers() if verdict is not None else {})
    return json_response(result.answer, 202, headers)


def _invalid(exc: InvalidMessage) -> ApiError:
    return ApiError(413 if exc.code == "too_large" else 400, exc.code, exc.message)


def _idempotency_scope(kind: str, channel: str) -> str:
    """Where a request's Idempotency-Keys live: per single-or-batch and per channel.

    The channel ``dummy`` keeps the scope its keys had before channels
    existed (the endpoint's name), so a retry that straddles an upgrade
    still finds the first answer instead of queueing the message twice.
    """
    return kind if channel == DEFAULT_CHANNEL else f"{kind}:{channel}"


def _publish_one(channel: str) -> Response:
    """Accept one JSON object into ``channel``."""
    channel, client = _publisher(channel)
    body = _read_body(_settings().max_message_bytes)
    try:
        record = make_record(parse_message(body), utc_now(), _settings().max_message_bytes, channel)
    except InvalidMessage as exc:
        raise _invalid(exc) from None
    answer = {"id": record["id"], "received_at": record["received_at"], "channel": channel}
    location = f"{_settings().list_api_url}/messages/{record['id']}"
    return _accept([record], answer, location, client, body, _idempotency_scope("post_message", channel))


def _publish_batch(channel: str) -> Response:
    """Accept an array of objects into ``channel``, all or nothing."""
    settings = _settings()
    channel, client = _publisher(channel)
    body = _read_body(settings.max_batch_bytes)
    received_at = utc_now()
    try:
        payloads = parse_batch(body, settings.max_batch_messages)
        records = [make_record(payload, received_at, settings.max_message_bytes, channel) for payload in payloads]
    except InvalidMessage as exc:
        raise _invalid(exc) from None
    answer = {"ids": [r["id"] for r in records], "received_at": records[0]["received_at"], "channel": channel}
    return _accept(records, answer, None, client, body, _idempotency_scope("post_batch", channel))


_ONE = (json_content(ref("schemas", "Payload"), {"hello": "world"}), "Accepted", ("not_an_object",))


def _many(settings: Settings) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    most = settings.max_batch_messages
    items = {"type": "array", "items": ref("schemas", "Payload"), "minItems": 1, "maxItems": most}
    bad = ("not_an_array", "bad_batch_size", "not_an_object")
    return json_content(items, [{"n": 1}, {"n": 2}]), "BatchAccepted", bad


def _batch_description(settings: Settings) -> str:
    return (
        f"Accepts a JSON array of 1 to {settings.max_batch_messages} objects, all or nothing: one bad "
        "element rejects the whole batch. The messages share one `received_at`."
    )


@operation(
    _publish_operation(
        "postMessage",
        "Publish one message (channel `dummy`)",
        "The seed's endpoint: exactly `POST /channels/dummy/messages`.",
        *_ONE,
    )
)
def post_message() -> Response:
    """Accept one JSON object into the channel ``dummy``."""
    return _publish_one(DEFAULT_CHANNEL)


@operation(
    lambda settings: _publish_operation(
        "postBatch",
        "Publish a batch of messages (channel `dummy`)",
        _batch_description(settings) + " The seed's endpoint: exactly `POST /channels/dummy/messages/batch`.",
        *_many(settings),
    )
)
def post_batch() -> Response:
    """Accept an array of objects into the channel ``dummy``, all or nothing."""
    return _publish_batch(DEFAULT_CHANNEL)


@operation(
    _publish_operation(
        "postChannelMessage",
        "Publish one message to a channel",
        "Accepts one JSON object, queues it for storage and live delivery on the channel, and answers at once.",
        *_ONE,
        channel=True,
    )
)
def post_channel_message(channel: str) -> Response:
    """Accept one JSON object into ``channel``."""
    return _publish_one(channel)


@operation(
    lambda settings: _publish_operation(
        "postChannelBatch",
        "Publish a batch of messages to a channel",
        _batch_description(settings),
        *_many(settings),
        channel=True,
    )
)
def post_channel_batch(channel: str) -> Response:
    """Accept an array of objects into ``channel``, all or nothing."""
    return _publish_batch(channel)


_HEALTH_DOWN = error(
    f"Redis does not answer; retry after `Retry-After` seconds. Code `redis_unavailable`. {_EVICTING} Code "
    "`positions_unseeded`: no worker has yet read the stored positions into this Redis (a new or emptied one).",
    "redis_unavailable",
    ("Retry-After",),
)
# The 503 of an ingestion API that cannot accept messages, by the code Producer.ready gives.
_NOT_READY = {
    "redis_unavailable": "Redis does not answer.",
    "positions_unseeded": "No worker has yet read the stored positions into this Redis; start a worker.",
}


@operation(openapi.health_operation("Redis", _HEALTH_DOWN))
def healthz() -> Response:
    """Report whether messages can be accepted: Redis answers, its position counters are seeded, it never evicts."""
    if (code := current_app.extensions["broker"].ready()) is not None:
        raise ApiError(503, code, _NOT_READY[code], {"Retry-After": "1"})
    refusal = current_app.extensions["redis_memory"].refusal()
    if refusal is not None and refusal.code == "redis_evicting":
        raise _refused(refusal)
    return json_response({"status": "ok"})
