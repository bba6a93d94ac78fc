"""The Python client's rules without a stack (clients/relay_client.py): one position, what a listing settles,
and what a connection does on each frame. The whole stack is in tests/system/test_relay_client.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import ConnectionClosed

from clients.relay_client import Fill, _Follower, settle


def message(position: int | None, channel: str = "a") -> dict:
    return {"id": f"id-{position}", "channel": channel, "position": position, "offset": position}


def follower() -> _Follower:
    return _Follower("http://127.0.0.1:1", "ws://127.0.0.1:2", [], None, 500, 0.1)


def test_a_live_message_is_handed_out_only_above_the_position_reached() -> None:
    client = follower()
    assert [client.hand_out(message(p)) for p in (5, 6, 6, 4, 9)] == [True, True, False, False, True]
    assert client.position == 9
    unplaced = {"id": "old-1", "channel": "a", "payload": {}}  # the previous release's frame: no position
    assert [client.hand_out(unplaced), client.hand_out(unplaced)] == [True, False]
    assert client.position == 9


def test_one_listing_settles_up_to_its_newest_or_the_anchor_of_every_channel() -> None:
    listed = [message(7), message(3), message(5)]
    assert settle(listed, None, None, several=False) == Fill([message(3), message(5), message(7)], 7)
    assert settle(listed, None, 40, several=False).up_to == 40  # a quiet channel: every channel's newest
    assert settle([], 12, None, several=False) == Fill([], 12)  # nothing new after 12
    assert settle([], None, None, several=False) == Fill([], None)
    assert settle(listed, None, None, several=False, keep=2).messages == [message(5), message(7)]


def test_several_listings_settle_up_to_the_anchor_and_leave_the_rest_to_the_websocket() -> None:
    """Listed one after the other, a later listing may hold past the anchor what an earlier one had not yet."""
    listed = [message(3, "a"), message(9, "b"), message(5, "b")]
    assert settle(listed, None, 6, several=True) == Fill([message(3, "a"), message(5, "b")], 6)
    assert settle(listed, None, None, several=True).up_to == 9  # no anchor (not allowed): the newest listed
    assert settle(listed, 2, 6, several=True).up_to == 6


class Socket:
    """A websocket that sends ``frames`` and then closes."""

    def __init__(self, frames: list[dict]) -> None:
        self.frames = [json.dumps(frame) for frame in frames]

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        for frame in self.frames:
            yield frame


def run_session(client: _Follower, frames: list[dict]) -> tuple[list[int | None], bool]:
    """The positions a session with ``frames`` yields, and whether it returned (to reconnect) before the end."""

    async def session() -> tuple[list[int | None], bool]:
        got = []
        try:
            async for item in client.session(Socket(frames)):  # type: ignore[arg-type]
                got.append(item["position"])
        except ConnectionClosed:
            return got, False
        return got, True

    return asyncio.run(session())


def listing(*positions: int, up_to: int | None = None) -> object:
    """A stand-in for the list API: every call lists ``positions`` (after the one asked), settled up to ``up_to``."""
    calls: list[int | None] = []

    def fill(after: int | None) -> Fill:
        calls.append(after)
        return Fill([message(p) for p in positions if after is None or p > after], up_to or max(positions))

    fill.calls = calls  # type: ignore[attr-defined]
    return fill


def test_server_fell_behind_keeps_the_socket_and_lists_only_what_came_before_oldest(monkeypatch) -> None:
    client = follower()
    client.position = 10
    fill = listing(*range(11, 26))
    monkeypatch.setattr(client, "fill", fill)
    frames = [{"type": "ready"}, message(11), {"type": "reset", "reason": "server_fell_behind", "oldest": 20}]
    got, returned = run_session(client, [*frames, message(20), message(21)])
    assert got == [11, *range(12, 20), 20, 21] and not returned
    assert fill.calls == [11]


def test_an_expired_position_lists_then_reconnects_and_a_second_reset_in_a_row_keeps_the_socket(monkeypatch) -> None:
    client = follower()
    client.position = 10
    monkeypatch.setattr(client, "fill", listing(11, 12, 13))
    reset = {"type": "reset", "reason": "unknown_or_expired_id", "oldest": 50}
    got, returned = run_session(client, [reset, {"type": "ready"}, message(60)])
    assert (got, returned, client.position) == ([11, 12, 13], True, 13)  # reconnect from 13 at once
    monkeypatch.setattr(client, "fill", listing(11, 12, 13, 14))  # the window still does not cover 13
    got, returned = run_session(client, [reset, {"type": "ready"}, message(60)])
    assert (got, returned) == ([14, 60], False)
    assert client.resets_in_a_row == 0  # ready: the next reset starts again from one


def test_a_client_with_nothing_listed_lists_again_once_live_and_resumes_from_it(monkeypatch) -> None:
    client = follower()
    monkeypatch.setattr(client, "fill", listing(1, 2, 3))
    got, returned = run_session(client, [{"type": "ready"}, message(3), message(4)])
    assert (got, returned, client.position) == ([1, 2, 3], True, 3)  # 3 and 4 come again in the replay


@pytest.mark.parametrize("failure", [OSError("list API down"), ValueError("not JSON")])
def test_a_failed_catch_up_listing_leaves_the_socket_live(monkeypatch, failure: Exception) -> None:
    client = follower()

    def fill(after: int | None) -> Fill:
        raise failure

    monkeypatch.setattr(client, "fill", fill)
    got, returned = run_session(client, [{"type": "ready"}, message(7), message(8)])
    assert (got, returned) == ([7, 8], False)
