"""The replay window and backlogs of the websocket server (plain data structures)."""

from __future__ import annotations

from relay.live.window import Backlog, Window


def test_window_returns_frames_after_an_id_in_order() -> None:
    window = Window(max_items=10, max_bytes=10_000)
    for i in range(5):
        window.append(f"id{i}", f"frame{i}".encode())
    assert window.after("id1") == [b"frame2", b"frame3", b"frame4"]
    assert window.after("id4") == []
    assert window.after("unknown") is None
    assert window.oldest == "id0"


def test_window_forgets_the_oldest_past_its_count_or_bytes() -> None:
    window = Window(max_items=3, max_bytes=10_000)
    for i in range(5):
        window.append(f"id{i}", b"x")
    assert window.after("id1") is None and window.after("id2") == [b"x", b"x"]
    assert window.oldest == "id2"
    small = Window(max_items=100, max_bytes=10)
    for i in range(4):
        small.append(f"id{i}", b"abcd")
    assert small.oldest == "id2" and small.after("id1") is None


def test_backlog_tracks_its_size() -> None:
    backlog = Backlog([b"ab", b"cde"])
    backlog.extend([b"f"])
    assert backlog.bytes == 6
    assert backlog.popleft() == b"ab" and backlog.bytes == 4
