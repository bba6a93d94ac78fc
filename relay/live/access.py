"""Who may follow which channels over the websocket: the handshake's one reading of the request.

:func:`subscription` parses the handshake's query once (``token``,
``channel``, ``after``; or the token from ``Authorization: Bearer``),
authenticates the token and checks ``subscribe`` on each selected channel,
or on ``*`` for a websocket without ``?channel=``. ``process_request``
stores the result on the :class:`LiveConnection` (``serve``'s documented
``create_connection`` hook) for the handler, which parses nothing again
and closes the connection with ``protocol.TOKEN_EXPIRED`` when the grant runs
out (:func:`seconds_left`). ``after`` is a message's position; any other
value (a message id from a client of the previous release) is still a
resume, one no window covers: the server answers it with ``reset``, never
by refusing the handshake, so pages cached before positions keep working.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from relay.auth import Authenticator, Grant, bearer
from relay.live.protocol import AFTER, CHANNEL, TOKEN
from relay.live.window import Selection
from relay.records import is_channel

MAX_POSITION_DIGITS = 19  # 2**63 - 1, the largest position a signed 64-bit column holds, has 19

__all__ = ["BadChannel", "LiveConnection", "Subscription", "position", "seconds_left", "subscription"]


class BadChannel(ValueError):
    """A ``channel=`` that is not a channel name (400 ``bad_channel``)."""


@dataclass(frozen=True)
class Subscription:
    """What an accepted handshake asked for and was allowed: its grant, its channels, where to resume."""

    grant: Grant
    selection: Selection  # None: every channel
    resume: bool  # the handshake has an ``after``
    after: int | None  # its position; None without one, or when it is not a position (then: reset)


class LiveConnection(ServerConnection):
    """A server connection that carries its :class:`Subscription` from the handshake to the handler."""

    subscription: Subscription


def subscription(authenticator: Authenticator, request: Request) -> Subscription:
    """Read the handshake ``request`` once and return what it may follow.

    Raises ``Unauthorized`` (no valid token), :class:`BadChannel`, or
    ``Forbidden`` (a valid token without ``subscribe`` on a selected channel,
    or on ``*`` when none is selected), in that order.
    """
    query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
    token = bearer(request.headers.get("Authorization")) or (query.get(TOKEN) or [""])[0] or None
    grant = authenticator.authenticate(token)
    names = query.get(CHANNEL)
    selection = frozenset(names) if names else None
    if not all(map(is_channel, selection or ())):
        raise BadChannel("A channel name is 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    for channel in sorted(selection) if selection is not None else [None]:
        grant.require("subscribe", channel)
    after = (query.get(AFTER) or [""])[0]
    return Subscription(grant, selection, resume=bool(after), after=position(after))


def position(text: str) -> int | None:
    """The position ``text`` spells (ASCII decimal digits, below 2**63), or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_POSITION_DIGITS:
        return None
    value = int(text)
    return value if value < 2**63 else None


def seconds_left(grant: Grant, now: float | None = None) -> float | None:
    """Seconds until ``grant`` expires (at least 0), or None when it never does."""
    if grant.expires_at is None:
        return None
    return max(0.0, grant.expires_at - (time.time() if now is None else now))
