"""The websocket protocol's names and numbers, written once.

The server (``relay/live/server.py``, ``relay/live/access.py``) speaks with
these, and its AsyncAPI document (``relay/live/asyncapi.py``) is built from
them, so the description cannot drift from what is spoken. Nothing to run;
reads nothing.
"""

from __future__ import annotations

# Query parameters of the handshake (``ws://host:8765/?channel=a&channel=b&after=<position>&token=<token>``).
CHANNEL = "channel"  # repeatable: only these channels (none: every channel)
AFTER = "after"  # a message's position, of any channel: replay what came after it, then go live
TOKEN = "token"  # noqa: S105 (a parameter's name) or ``Authorization: Bearer``

# The server's frames that are not messages: ``{"type": READY}`` and ``{"type": RESET, "reason", "oldest"}``.
READY = "ready"
RESET = "reset"
UNKNOWN_OR_EXPIRED_ID = "unknown_or_expired_id"  # before ready: the window does not cover ``after``; backfill
SERVER_FELL_BEHIND = "server_fell_behind"  # mid-stream: the server missed entries before ``oldest``; backfill
RESET_REASONS = {
    UNKNOWN_OR_EXPIRED_ID: "The `after` position is older than the server's window, or is no position (a message id "
    "from an older client), or the server cannot prove it has everything after it (sent before `ready`; what "
    "follows is live). `oldest` is the oldest position the server can replay. List from the list API with "
    "`after=` the last position you have until `has_more` is false, then resume from the last position listed.",
    SERVER_FELL_BEHIND: "The server itself fell behind the live stream and missed messages before `oldest` "
    "(sent mid-stream). Keep the connection (messages from position `oldest` on follow with no gap) and list "
    "what came before it from the list API (`after=` the last position you have).",
}

# Close codes the server sends (or its websocket library sends for it).
GOING_AWAY = 1001
NOT_ACCEPTED = 1003  # clients send nothing
TOO_BIG = 1009  # a client frame over WS_MAX_CLIENT_FRAME_BYTES
TOO_SLOW = 1013  # fell further behind than the replay window
TOKEN_EXPIRED = 4401  # the token ran out; reconnect with a fresh one and ``after``
CLOSE_CODES = {
    GOING_AWAY: "The server is shutting down: reconnect with `after`.",
    NOT_ACCEPTED: "The client sent a data frame: this server accepts none.",
    TOO_BIG: "The client sent a frame over the server's size limit.",
    TOO_SLOW: "The client fell further behind than the replay window: reconnect with `after` (replay or reset).",
    TOKEN_EXPIRED: "The token expired: reconnect with a fresh token and `after` to lose nothing.",
}

# Handshakes the server refuses, as plain HTTP with ``{"error": code, "message": text}`` (CORS: ``*``).
BAD_CHANNEL = "bad_channel"
REFUSALS = {
    400: (BAD_CHANNEL,),
    401: ("unauthorized", "token_expired"),
    403: ("forbidden",),
    429: ("too_many_requests",),
}
