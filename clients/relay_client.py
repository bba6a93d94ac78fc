"""Follow the stack's messages from a Python service, losing and repeating none.

One file that needs only ``websockets`` (14 or later): copy it into your
service, or put ``clients/`` on ``sys.path``. It speaks the protocol that
``GET /asyncapi.json`` on the websocket server describes, the same way the
browser client ``relay-client.js`` does::

    async for message in follow("http://127.0.0.1:5001", "ws://127.0.0.1:8765", channels=["orders"]):
        handle(message)  # {"id", "channel", "received_at", "payload", "offset", "position"}, each once

Every message has a ``position``, its place among every channel's messages
in accept order, the same number in the list API and on the websocket. The
client keeps one number: every message of its selection at or below it has
been yielded. It lists the newest page of history, connects with ``?after=``
that position (the server replays what came after it, then goes live),
reconnects after a drop with backoff and ``?after=`` it again, and yields a
message only when its position is above it: that one rule drops every
duplicate between listing, replay and reconnections. On a ``reset`` frame it
lists what it missed from the list API (``after=`` its position, until
``has_more`` is false). A ``token`` may be a callable, asked again on every
connection, so a service can hand over fresh signed tokens (the server
closes a connection with 4401 when its token expires). Reads no environment.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

REFILL_PAGE = 1000  # messages per page when listing what was missed (the list API's maximum)
UNPLACED_LIMIT = 10_000  # ids remembered of messages that came without a position (see hand_out)

Message = dict[str, Any]
Token = str | Callable[[], str] | None


class Refused(Exception):
    """The list API or the websocket server refused the token (401) or its capability (403): not retried."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"refused with {status}: {body}")
        self.status = status


@dataclass
class Fill:
    """What a listing gave: messages oldest first, and ``up_to``, a position every message of the
    selection at or below which is among them or was yielded before (None: nothing known yet)."""

    messages: list[Message]
    up_to: int | None


def highest(*positions: int | None) -> int | None:
    known = [position for position in positions if position is not None]
    return max(known) if known else None


def settle(
    listed: list[Message], after: int | None, anchor: int | None, several: bool, keep: int | None = None
) -> Fill:
    """Merge what the selection's listings gave into a :class:`Fill`.

    ``anchor`` is the newest position of every channel, listed before the
    channels' own listings, which then hold every message of their channels
    up to it. With ``several`` listings, made one after the other, a later
    one may hold past the anchor a message an earlier one had not yet: what
    is past it is left to the websocket, resuming from the anchor. ``keep``:
    only the newest so many.
    """
    messages = sorted(listed, key=lambda message: message["position"])
    if keep is not None:
        messages = messages[-keep:]
    up_to = highest(after, anchor, messages[-1]["position"] if messages else None)
    if several and anchor is not None:
        messages = [message for message in messages if message["position"] <= anchor]
        up_to = highest(after, anchor)
    return Fill(messages, up_to)


class _Follower:
    """The state of one ``follow``: the position reached, the two services' URLs, and how to list."""

    def __init__(
        self, api: str, ws: str, channels: Iterable[str], token: Token, page_size: int, min_delay: float
    ) -> None:
        if not api.startswith(("http://", "https://")) or not ws.startswith(("ws://", "wss://")):
            raise ValueError("api is an http(s):// URL and ws a ws(s):// one")
        self.api, self.ws = api.rstrip("/"), ws.rstrip("/")
        self.channels = sorted(set(channels))
        self.token = token
        self.page_size = page_size
        self.min_delay = self.delay = min_delay
        self.position: int | None = None  # every message of the selection at or below it was yielded
        self.resets_in_a_row = 0  # `unknown_or_expired_id` resets since the last `ready`, over reconnections
        self._unplaced: OrderedDict[str, None] = OrderedDict()

    def current_token(self) -> str | None:
        return self.token() if callable(self.token) else self.token

    def socket_url(self) -> str:
        query = [("channel", channel) for channel in self.channels]
        query += [("after", str(self.position))] if self.position is not None else []
        token = self.current_token()
        query += [("token", token)] if token else []
        return f"{self.ws}/?{urlencode(query)}"

    # ---- Listing (blocking: run in a thread) ----

    def _get(self, path: str, query: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.api}{path}?{urlencode(query)}")  # noqa: S310 (http(s) only)
        token = self.current_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http(s) only)
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise Refused(error.code, error.read().decode(errors="replace")) from None
            raise

    def _paths(self) -> list[str]:
        if not self.channels:
            return ["/messages"]
        return [f"/channels/{quote(channel, safe='')}/messages" for channel in self.channels]

    def _list_after(self, path: str, after: int) -> list[Message]:
        """Every message of a listing after ``after``: pages until ``has_more`` is false.

        The list API stops its pages below the first message not stored yet,
        so nothing it has not listed is older.
        """
        messages: list[Message] = []
        while True:
            page = self._get(path, {"after": after, "limit": REFILL_PAGE})
            messages += page["data"]
            if not page["has_more"] or not page["data"]:
                return messages
            after = page["data"][-1]["position"]

    def _newest_of_all(self) -> int | None:
        """The newest position of every channel, or None (not allowed, or not answered)."""
        try:
            data = self._get("/messages", {"order": "desc", "limit": 1})["data"]
        except (Refused, OSError, ValueError):
            return None
        return data[0]["position"] if data else None

    def fill(self, after: int | None) -> Fill:
        """List the selection: its newest page (``after`` None) or everything after ``after``."""
        anchor = self._newest_of_all() if self.channels else None
        paths = self._paths()
        if after is None:
            newest = {"order": "desc", "limit": self.page_size}
            listed = [message for path in paths for message in self._get(path, newest)["data"]]
            return settle(listed, None, anchor, several=len(paths) > 1, keep=self.page_size)
        listed = [message for path in paths for message in self._list_after(path, after)]
        return settle(listed, after, anchor, several=len(paths) > 1)

    # ---- Handing out ----

    async def listed(self, after: int | None, below: int | None = None) -> list[Message]:
        """List (see :meth:`fill`) and return what was not yielded before; with ``below``, only what is before it."""
        fill = await asyncio.to_thread(self.fill, after)
        start = self.position
        fresh = [
            message
            for message in fill.messages
            if (start is None or message["position"] > start)
            and (below is None or message["position"] < below)
            and message["id"] not in self._unplaced
        ]
        up_to = fill.up_to if below is None or fill.up_to is None else min(fill.up_to, below - 1)
        self.position = highest(start, up_to)
        return fresh

    def hand_out(self, message: Message) -> bool:
        """Tell whether a live message is new, and stand at its position if so."""
        position = message.get("position")
        if not isinstance(position, int):
            # A frame of the previous release (a rolling upgrade): no position, so known by its id.
            if message["id"] in self._unplaced:
                return False
            self._unplaced[message["id"]] = None
            if len(self._unplaced) > UNPLACED_LIMIT:
                self._unplaced.popitem(last=False)
            return True
        if self.position is not None and position <= self.position:
            return False  # listed or replayed before
        self.position = position
        return True

    async def session(self, socket: ClientConnection) -> AsyncIterator[Message]:
        """Read one connection, yielding what is new; returns when reconnecting at once is better.

        While it lists, it does not read the socket: what the server sends
        meanwhile waits there, and comes in order afterwards.
        """
        catch_up = self.position is None
        async for raw in socket:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "ready":
                self.delay, self.resets_in_a_row = self.min_delay, 0
                if catch_up:  # nothing to resume from: list once more, and resume from what was stored meanwhile
                    catch_up = False
                    for message in await self._catch_up():
                        yield message
                    if self.position is not None:
                        return  # what this socket has meanwhile comes again in the replay
            elif kind == "reset":
                # The server fell behind: this socket goes on with no gap from `oldest`; list what came before.
                # Or our position is older than its window: list what came after it, then reconnect from where
                # the listing ends (going on here would lose what was accepted before this socket joined but not
                # stored when we list); a second reset in a row keeps this socket, which is live next.
                expired = frame.get("reason") != "server_fell_behind"
                self.resets_in_a_row += expired
                for message in await self.listed(self.position, below=None if expired else frame.get("oldest")):
                    yield message
                if expired and self.resets_in_a_row == 1:
                    return
            elif self.hand_out(frame):
                yield frame
        raise ConnectionClosed(None, None)  # the server closed cleanly: reconnect all the same

    async def _catch_up(self) -> list[Message]:
        try:
            return await self.listed(None)
        except (OSError, ValueError):
            return []  # the list API is down: this socket goes on


async def follow(
    api: str,
    ws: str,
    *,
    channels: Iterable[str] = (),
    token: Token = None,
    page_size: int = 500,
    min_delay: float = 0.5,
    max_delay: float = 5.0,
) -> AsyncIterator[Message]:
    """Yield every message of ``channels`` (none: all), history first, each once, forever.

    Raises :class:`Refused` when a token is refused (401) or lacks ``subscribe`` (403).
    """
    follower = _Follower(api, ws, channels, token, page_size, min_delay)
    while True:
        if follower.position is None:  # nothing to resume from: what arrived meanwhile is in the list API
            try:
                for message in await follower.listed(None):
                    yield message
            except (OSError, ValueError):
                pass  # the list API is down while live may work: go on, and list again once live
        try:
            async with connect(follower.socket_url(), open_timeout=10, close_timeout=2) as socket:
                async for message in follower.session(socket):
                    yield message
            continue  # left on purpose to resume elsewhere: reconnect at once
        except InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise Refused(status, error.response.body.decode(errors="replace")) from None
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            pass  # 1001, 1013, 4401 (a callable token gives a fresh one), a lost network: resume
        await asyncio.sleep(follower.delay * random.uniform(0.8, 1.2))  # jitter: a restarted server is not stampeded
        follower.delay = min(follower.delay * 2, max_delay)
