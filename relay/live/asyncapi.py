"""The websocket protocol as an AsyncAPI 3.0 document, served at ``GET /asyncapi.json`` on the websocket port.

Built from the names the server speaks with (``relay/live/protocol.py``:
query parameters, frame types, reset reasons, close codes, refusals), the
channel pattern of ``relay/records.py`` and the running server's settings
(``WS_URL``, ``LIVE_WINDOW``, ``WS_MAX_CLIENT_FRAME_BYTES``), so it says what
this server does. ``tests/live/test_asyncapi.py`` validates it against the
AsyncAPI 3.0.0 JSON Schema. Nothing to run; reads nothing itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from relay.live import protocol
from relay.records import CHANNEL_PATTERN
from relay.settings import Settings

EXAMPLE_ID = "019ace2e-7b1a-7c3e-9f10-2b4c6d8e0a12"
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
    "description": "RFC 3339, UTC, with microseconds: when the ingestion API accepted the message.",
}
MESSAGE_ID = {"type": "string", "format": "uuid", "description": "UUIDv7, lower case: ids sort by receipt time."}
POSITION = {
    "type": "integer",
    "minimum": 1,
    "description": "The message's place among every channel's messages, in accept order (1, 2, 3...; rarely a "
    "number is skipped). The same number as in the list API, whose `after=` continues from it.",
}
OFFSET = {
    "type": "integer",
    "minimum": 1,
    "description": "The message's place in its channel, in accept order (1 for the channel's first message).",
}


def _refs(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/live/messages/{name}"} for name in names]


def _query(settings: Settings) -> dict[str, Any]:
    """The handshake's query parameters, as the websockets binding's ``query`` schema."""
    return {
        "type": "object",
        "properties": {
            protocol.CHANNEL: {
                "type": "array",
                "items": {"type": "string", "pattern": f"^{CHANNEL_PATTERN}$"},
                "description": f"Repeat `{protocol.CHANNEL}=` for each channel to follow; none: every channel. "
                f"A malformed name is refused with 400 `{protocol.BAD_CHANNEL}`.",
            },
            protocol.AFTER: {
                "type": "integer",
                "minimum": 0,
                "description": "Resume: a message's `position`, of any channel (the last one listed or received). "
                "The server first replays every selected message after it still in its window (about "
                f"{settings.live_window} messages), then sends `{protocol.READY}` and goes live with no gap and no "
                "duplicate; a position past what the server has read yet gets no replay, and nothing at or below "
                f"it follows. Older than the window, or not a position (an id): `{protocol.RESET}` "
                f"(`{protocol.UNKNOWN_OR_EXPIRED_ID}`), then `{protocol.READY}`.",
            },
            protocol.TOKEN: {
                "type": "string",
                "description": "When the stack requires tokens (`API_TOKENS` or `JWT_*`): one allowing `subscribe` "
                f"on each selected channel, or on `*` without `{protocol.CHANNEL}=`. Or send "
                "`Authorization: Bearer`.",
            },
        },
    }


def _messages() -> dict[str, Any]:
    reasons = " ".join(f"`{name}`: {meaning}" for name, meaning in protocol.RESET_REASONS.items())
    return {
        "message": {
            "name": "message",
            "title": "A message",
            "summary": "One published message, as the list API returns it (without `persisted_at`).",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["id", "channel", "received_at", "payload", "offset", "position"],
                "properties": {
                    "id": MESSAGE_ID,
                    "channel": {"type": "string", "pattern": f"^{CHANNEL_PATTERN}$"},
                    "received_at": TIMESTAMP,
                    "payload": {"type": "object", "description": "The published object."},
                    "offset": OFFSET,
                    "position": POSITION,
                },
            },
            "examples": [
                {
                    "payload": {
                        "id": EXAMPLE_ID,
                        "channel": "dummy",
                        "received_at": "2026-11-29T07:40:21.123456Z",
                        "payload": {"hello": "world"},
                        "offset": 17,
                        "position": 4242,
                    }
                }
            ],
        },
        protocol.READY: {
            "name": protocol.READY,
            "title": "Live from here",
            "summary": "Any replay is done; what follows is live.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"const": protocol.READY}},
            },
        },
        protocol.RESET: {
            "name": protocol.RESET,
            "title": "Backfill from the list API",
            "summary": "The server cannot give what came before `oldest`: list it from the list API.",
            "description": reasons,
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["type", "reason", "oldest"],
                "properties": {
                    "type": {"const": protocol.RESET},
                    "reason": {"type": "string", "enum": list(protocol.RESET_REASONS)},
                    "oldest": {
                        "oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                        "description": f"`{protocol.UNKNOWN_OR_EXPIRED_ID}`: the oldest position the server can "
                        f"still replay. `{protocol.SERVER_FELL_BEHIND}`: the position of the next message sent, the "
                        "first after the gap. Null: none.",
                    },
                },
            },
        },
    }


def document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the websocket protocol this server speaks."""
    url = urlsplit(settings.ws_url)
    closes = "; ".join(f"{code}: {meaning}" for code, meaning in protocol.CLOSE_CODES.items())
    refusals = "; ".join(f"{status} `{'`, `'.join(codes)}`" for status, codes in protocol.REFUSALS.items())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Live messages (websocket)",
            "version": "1.0.0",
            "description": "Every message as it is accepted, over one websocket. Connect, optionally choosing "
            "channels and a resume point; the server sends JSON text frames and accepts none. Loss-free "
            "delivery: list history from the list API, connect with `after=` the last `position` listed, and "
            "on a drop reconnect with `after=` the highest position received; hand out a message only when its "
            "position is above the highest one handed out. On `reset`, list from the list API with `after=` that "
            "position until `has_more` is false. relay-client.js (served by the list API) does all of this in a "
            "browser, clients/relay_client.py in Python. "
            f'Handshake refusals are plain HTTP with a JSON body `{{"error", "message"}}`: {refusals}. '
            f"Close codes: {closes}",
        },
        "servers": {
            "live": {
                "host": url.netloc,
                "protocol": url.scheme,
                "pathname": url.path or "/",
                "description": "This stack's websocket server (`WS_URL`).",
            }
        },
        "channels": {
            "live": {
                "address": "/",
                "title": "Live messages",
                "messages": _messages(),
                "bindings": {"ws": {"method": "GET", "query": _query(settings), "bindingVersion": "0.1.0"}},
                "x-close-codes": {str(code): meaning for code, meaning in protocol.CLOSE_CODES.items()},
                "x-refusals": {str(status): list(codes) for status, codes in protocol.REFUSALS.items()},
                "x-max-client-frame-bytes": settings.ws_max_client_frame_bytes,
            }
        },
        "operations": {
            "receiveLive": {
                "action": "receive",
                "channel": {"$ref": "#/channels/live"},
                "summary": "Receive messages, `ready` and `reset` frames, in stream order.",
                "messages": _refs("message", protocol.READY, protocol.RESET),
            }
        },
    }
