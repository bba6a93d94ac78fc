"""Follow the stack's messages from a Python service, losing and repeating none.

One file that needs only ``websockets`` (14 or later): copy it into your
service, or put ``clients/`` on ``sys.path``. It speaks the protocol that
``GET /asyncapi.json`` on the websocket server describes, the same way the
browser client ``relay-client.js`` does::

    async for message in follow("http://127.0.0.1:5001", "ws://127.0.0.1:8765", channels=["orders"]):
        handle(message)  # {"id", "channel", "received_at", "payload"}, each once

It lists the newest page of history from the list API, then connects with
``?after=`` a resume point (see ``resume_point``); after a drop it reconnects
with backoff and ``?after=`` the last id it got; on a ``reset`` frame it fills
the gap from the list API. A ``token`` may be a callable, asked again on every
connection, so a service can hand over fresh signed tokens (the server closes
a connection with 4401 when its token expires). Reads no environment.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

# Storage order is not accept order yet: a message accepted before another can be listed after it,
# or not be stored at all yet when we list. So resume this many messages (of any channel: the server
# resumes from an id of any channel) behind the newest listed one; what was stored out of order, or
# late, comes again in the replay and its duplicates are dropped. A later issue replaces this with positions.
RESUME_MARGIN = 100
SEEN_LIMIT = 20_000  # ids remembered for de-duplication: far more than a page plus a replay

Message = dict[str, Any]
Token = str | Callable[[], str] | None


class Refused(Exception):
    """The list API or the websocket server refused the token (401) or its capability (403): not retried."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"refused with {status}: {body}")
        self.status = status


def resume_point(every_channel: list[Message] | None, newest: list[Message]) -> str | None:
    """Where to resume after listing ``newest`` (newest first): see ``RESUME_MARGIN``. None: nothing listed."""
    for listed in (every_channel, newest):
        if listed:
            return listed[min(len(listed), RESUME_MARGIN) - 1]["id"]
    return None


class _Seen:
    """The ids handed out, bounded: the oldest are forgotten first."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, message_id: str) -> bool:
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > SEEN_LIMIT:
            self._ids.popitem(last=False)
        return True


class _Follower:
    """The state of one ``follow``: where to resume, what was handed out, and the two services' URLs."""

    def __init__(self, api: str, ws: str, channels: Iterable[str], token: Token, page_size: int) -> None:
        if not api.startswith(("http://", "https://")) or not ws.startswith(("ws://", "wss://")):
            raise ValueError("api is an http(s):// URL and ws a ws(s):// one")
        self.api, self.ws = api.rstrip("/"), ws.rstrip("/")
        self.channels = sorted(set(channels))
        self.token = token
        self.page_size = page_size
        self.seen = _Seen()

    def current_token(self) -> str | None:
        return self.token() if callable(self.token) else self.token

    def socket_url(self, after: str | None) -> str:
        query = [("channel", channel) for channel in self.channels]
        query += [("after", after)] if after else []
        token = self.current_token()
        query += [("token", token)] if token else []
        return f"{self.ws}/?{urlencode(query)}"

    def _get(self, path: str, query: dict[str, Any]) -> list[Message]:
        request = urllib.request.Request(f"{self.api}{path}?{urlencode(query)}")  # noqa: S310 (http(s) only)
        token = self.current_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http(s) only)
                return json.load(response)["data"]
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise Refused(error.code, error.read().decode(errors="replace")) from None
            raise

    def _newest(self) -> tuple[list[Message], list[Message] | None]:
        query = {"order": "desc", "limit": self.page_size}
        if len(self.channels) <= 1:
            path = f"/channels/{quote(self.channels[0], safe='')}/messages" if self.channels else "/messages"
            page = self._get(path, query)
        else:
            pages = [self._get(f"/channels/{quote(c, safe='')}/messages", query) for c in self.channels]
            page = sorted((m for listed in pages for m in listed), key=lambda m: m["id"], reverse=True)
            page = page[: self.page_size]
        every = None
        if self.channels:
            try:
                every = self._get("/messages", {"order": "desc", "limit": RESUME_MARGIN})
            except (Refused, OSError):
                every = []
        return page, every

    async def backfill(self) -> tuple[list[Message], str | None, str | None]:
        """List the newest page: (messages not handed out before, oldest first; resume point; newest id)."""
        page, every = await asyncio.to_thread(self._newest)
        fresh = [message for message in reversed(page) if self.seen.first_time(message["id"])]
        return fresh, resume_point(every, page), page[0]["id"] if page else None


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
    follower = _Follower(api, ws, channels, token, page_size)
    after: str | None = None
    delay = min_delay
    while True:
        if after is None:  # nothing to resume from: what arrived meanwhile is in the list API
            try:
                fresh, after, _ = await follower.backfill()
            except (OSError, ValueError):
                fresh = []  # the list API is down while live may work: go on, and list again once live
            for message in fresh:
                yield message
        catch_up = after is None
        resets = 0
        try:
            async with connect(follower.socket_url(after), open_timeout=10, close_timeout=2) as socket:
                async for raw in socket:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "ready":
                        delay, resets = min_delay, 0
                        if catch_up:  # list once more: resume from what was stored meanwhile, if anything
                            catch_up = False
                            fresh, anchor, _ = await follower.backfill()
                            for message in fresh:
                                yield message
                            if anchor:
                                after = anchor
                                break
                    elif kind == "reset" and frame.get("reason") == "server_fell_behind":
                        # This socket goes on from `oldest` with no gap: fill in what came before.
                        fresh, _, _ = await follower.backfill()
                        for message in fresh:
                            yield message
                    elif kind == "reset":
                        resets += 1
                        if resets > 1:  # the window restarted again: this socket is live next
                            continue
                        fresh, _, newest = await follower.backfill()
                        for message in fresh:
                            yield message
                        after = newest or after
                        break
                    else:
                        after = frame["id"]
                        if follower.seen.first_time(after):
                            yield frame
                else:
                    raise ConnectionClosed(None, None)  # the server closed cleanly: reconnect all the same
            continue  # left on purpose to resume elsewhere: reconnect at once
        except InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise Refused(status, error.response.body.decode(errors="replace")) from None
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            pass  # 1001, 1013, 4401 (a callable token gives a fresh one), a lost network: resume
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter: a restarted server is not stampeded
        delay = min(delay * 2, max_delay)
