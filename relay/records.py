"""The message schema: parsing request bodies, assigning ids and timestamps.

A message is any JSON object. The ingestion API turns it into a *record*,
the plain-JSON dict that travels through the queue to the worker:

    {"id": "<uuid7>", "channel": "dummy", "received_at": "2026-11-29T07:40:21.123456Z",
     "payload": "<the object, as compact JSON text>"}

Every message belongs to a *channel*, named by the publisher
(``POST /channels/<channel>/messages``; ``POST /dummy`` is the channel
``dummy``): 1 to 64 characters of ``[A-Za-z0-9_.:-]``.

The payload travels as JSON text so the worker stores exactly what the API
validated without parsing it again. Parsing uses orjson, which rejects what
must not be stored: invalid UTF-8, lone surrogates, NaN/Infinity; nesting
deeper than 254 levels (what orjson serializes) is rejected too. Duplicate keys keep the last value; integers beyond
64 bits become IEEE doubles, as in JavaScript.

No Flask, Redis or SQLAlchemy here, so this is testable on its own.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import orjson
import uuid6

MAX_DEPTH = 254  # what orjson.dumps can serialize; deeper payloads are a 400 too_deep
CHANNEL_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"  # also the OpenAPI schema of a channel name
DEFAULT_CHANNEL = "dummy"  # the seed's POST /dummy, and records queued before channels existed
_CHANNEL = re.compile(CHANNEL_PATTERN)


class InvalidMessage(ValueError):
    """A request body that cannot become a message; ``code`` is the JSON error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _parse(body: bytes) -> Any:
    if not body:
        raise InvalidMessage("empty_body", "The request body is empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "UTF-8" in reason or "surrogate" in reason:
            raise InvalidMessage("invalid_utf8", f"The body is not valid UTF-8 JSON text: {reason}.") from None
        if "depth" in reason or "recursion" in reason:
            raise InvalidMessage("too_deep", f"The JSON is nested more than {MAX_DEPTH} levels deep.") from None
        raise InvalidMessage("malformed_json", f"The body is not valid JSON: {reason}.") from None


def parse_message(body: bytes) -> dict[str, Any]:
    """Parse one message body, which must be a JSON object."""
    value = _parse(body)
    if not isinstance(value, dict):
        raise InvalidMessage("not_an_object", f"A message must be a JSON object, not {_kind(value)}.")
    return value


def parse_batch(body: bytes, max_messages: int) -> list[dict[str, Any]]:
    """Parse a batch body: a JSON array of 1..``max_messages`` objects, all or nothing."""
    value = _parse(body)
    if not isinstance(value, list):
        raise InvalidMessage("not_an_array", f"A batch must be a JSON array of objects, not {_kind(value)}.")
    if not 1 <= len(value) <= max_messages:
        raise InvalidMessage(
            "bad_batch_size", f"A batch holds 1 to {max_messages} messages; this one has {len(value)}."
        )
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidMessage("not_an_object", f"Element {index} is {_kind(item)}; every element must be an object.")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def new_id() -> str:
    """Return a fresh time-ordered UUID (version 7, RFC 9562) as canonical text."""
    return str(uuid6.uuid7())


def utc_now() -> dt.datetime:
    """Return the current UTC time as a naive datetime (the database stores naive UTC)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def format_time(moment: dt.datetime) -> str:
    """Format a naive-UTC datetime as RFC 3339 with microseconds and ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """Inverse of :func:`format_time` (``fromisoformat`` parses in C, several times faster than strptime)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=None)


def is_channel(name: str) -> bool:
    """Tell whether ``name`` is a valid channel name (1-64 of ``[A-Za-z0-9_.:-]``)."""
    return _CHANNEL.fullmatch(name) is not None


def record_channel(record: dict[str, str]) -> str:
    """The channel of a queue record; records queued before channels existed belong to ``dummy``."""
    return record.get("channel", DEFAULT_CHANNEL)


def make_record(
    payload: dict[str, Any],
    received_at: dt.datetime,
    max_bytes: int | None = None,
    channel: str = DEFAULT_CHANNEL,
) -> dict[str, str]:
    """Build the queue record for one accepted message in ``channel`` (already validated).

    Raises :class:`InvalidMessage` for a payload nested deeper than orjson
    serializes (254 levels; parsing allows 1024), or (``too_large``) one
    whose stored JSON exceeds ``max_bytes``: each message, alone or in a
    batch, is held to the same size once stored (``1E5`` is stored as
    ``100000.0``, so the stored text can outgrow the request).
    """
    try:
        text = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise InvalidMessage("too_deep", f"The JSON is nested more than {MAX_DEPTH} levels deep.") from None
    if max_bytes is not None and len(text) > max_bytes:
        raise InvalidMessage("too_large", f"A message is {len(text)} bytes stored; the limit is {max_bytes}.")
    return {"id": new_id(), "channel": channel, "received_at": format_time(received_at), "payload": text.decode()}


def is_message_id(text: str) -> bool:
    """Tell whether ``text`` is a canonical lower-case UUID, the only id shape we issue."""
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, TypeError, AttributeError):
        return False


def live_frame(record: dict[str, str]) -> bytes:
    """Render a record as the websocket frame ``{"id", "channel", "received_at", "payload"}``."""
    return orjson.dumps(
        {
            "id": record["id"],
            "channel": record_channel(record),
            "received_at": record["received_at"],
            "payload": orjson.Fragment(record["payload"]),
        }
    )
