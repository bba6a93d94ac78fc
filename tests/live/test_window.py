"""The replay window and backlogs of the websocket server (plain data structures)."""

from __future__ import annotations

from relay.live.window import Backlog, Window


def test_window_returns_frames_after_an_id_in_order() -> None:
    window = Window(max_items=10, max_bytes=10_000)
    for i in range(5):
        window.append(f"id{i}", "dummy", f"frame{i}".encode())
    assert window.after("id1") == [b"frame2", b"frame3", b"frame4"]
    assert window.after("id4") == []
    assert window.after("unknown") is None
    assert window.oldest == "id0"


def test_window_forgets_the_oldest_past_its_count_or_bytes() -> None:
    window = Window(max_items=3, max_bytes=10_000)
    for i in range(5):
        window.append(f"id{i}", "dummy", b"x")
    assert window.after("id1") is None and window.after("id2") == [b"x", b"x"]
    assert window.oldest == "id2"
    small = Window(max_items=100, max_bytes=10)
    for i in range(4):
        small.append(f"id{i}", "dummy", b"abcd")
    assert small.oldest == "id2" and small.after("id1") is None


def test_window_replays_only_the_selected_channels_after_an_id_of_any_channel() -> None:
    window = Window(max_items=10, max_bytes=10_000)
    for i, channel in enumerate("abcab"):
        window.append(f"id{i}", channel, f"{channel}{i}".encode())
    assert window.after("id0", frozenset({"b"})) == [b"b1", b"b4"]
    assert window.after("id1", frozenset({"a", "c"})) == [b"c2", b"a3"]
    assert window.after("id2", None) == [b"a3", b"b4"]
    assert window.after("id0", frozenset({"zzz"})) == []
    assert window.after("unknown", frozenset({"a"})) is None


def test_backlog_tracks_its_size() -> None:
    backlog = Backlog([b"ab", b"cde"])
    backlog.extend([b"f"])
    assert backlog.bytes == 6
    assert backlog.popleft() == b"ab" and backlog.bytes == 4


def test_a_cleared_window_resumes_only_from_what_follows() -> None:
    window = Window(max_items=10, max_bytes=10_000)
    for i in range(3):
        window.append(f"id{i}", "dummy", b"old")
    window.clear()
    assert window.after("id2") is None and window.oldest is None
    for i in range(3, 6):
        window.append(f"id{i}", "dummy", f"frame{i}".encode())
    assert window.oldest == "id3" and window.after("id3") == [b"frame4", b"frame5"]
