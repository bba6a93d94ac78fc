"""The replay window and backlogs of the websocket server (plain data structures)."""

from __future__ import annotations

import pytest

from relay.live.access import position
from relay.live.window import Backlog, Entry, Replay, Reset, Window


def filled(positions: list[int | None], channels: str = "", **bounds: int) -> Window:
    """A window holding one entry per position (channel from ``channels``, else ``dummy``), framed ``f<position>``."""
    window = Window(**{"max_items": 100, "max_bytes": 100_000, **bounds})
    for index, at in enumerate(positions):
        channel = channels[index] if channels else "dummy"
        window.append(Entry(at, channel, f"f{at}".encode() if at is not None else f"old{index}".encode()))
    return window


def test_window_replays_the_frames_after_a_position_in_order() -> None:
    window = filled([1, 2, 3, 4, 5])
    assert window.resume(1) == Replay([b"f2", b"f3", b"f4", b"f5"])
    assert window.resume(5) == Replay([])
    assert window.resume(0) == Replay([b"f1", b"f2", b"f3", b"f4", b"f5"])  # the oldest is 0 + 1: covered
    assert window.oldest == 1 and window.newest == 5


def test_a_position_before_the_window_is_a_reset_naming_the_oldest_it_can_replay() -> None:
    window = filled([10, 11, 12])
    assert window.resume(8) == Reset(oldest=10)  # 9 may have existed: not covered
    assert window.resume(9) == Replay([b"f10", b"f11", b"f12"])
    assert window.resume(None) == Reset(oldest=10)  # an after that is no position


def test_a_position_past_the_newest_read_replays_nothing_and_sets_a_floor() -> None:
    window = filled([1, 2, 3])
    assert window.resume(3) == Replay([], floor=None)  # exactly caught up: nothing to skip
    assert window.resume(7) == Replay([], floor=7)  # ahead of the server: 4..7 are coming, and the client has them


def test_holes_in_positions_resume_from_the_next_one() -> None:
    window = filled([1, 2, 5, 6])  # 3 and 4 were given without a stream entry
    assert window.resume(3) == Replay([b"f5", b"f6"])
    assert window.resume(2) == Replay([b"f5", b"f6"])


def test_window_forgets_the_oldest_past_its_count_or_bytes() -> None:
    window = filled([1, 2, 3, 4, 5], max_items=3)
    assert window.oldest == 3
    assert window.resume(1) == Reset(oldest=3) and window.resume(2) == Replay([b"f3", b"f4", b"f5"])
    small = filled([1, 2, 3, 4], max_bytes=4)  # two frames of two bytes fit
    assert small.oldest == 3 and small.resume(1) == Reset(oldest=3) and small.resume(2) == Replay([b"f3", b"f4"])


def test_window_replays_only_the_selected_channels_after_a_position_of_any_channel() -> None:
    window = filled([1, 2, 3, 4, 5], channels="abcab")
    assert window.resume(1, frozenset({"b"})) == Replay([b"f2", b"f5"])
    assert window.resume(2, frozenset({"a", "c"})) == Replay([b"f3", b"f4"])
    assert window.resume(3, None) == Replay([b"f4", b"f5"])
    assert window.resume(1, frozenset({"zzz"})) == Replay([])
    assert window.resume(9, frozenset({"a"})) == Replay([], floor=9)


def test_an_empty_window_proves_nothing() -> None:
    """Read nothing, or lost it all: no resume can be proven, so every one is a reset (the client lists)."""
    assert Window(10, 1000).resume(0) == Reset(oldest=None)
    assert Window(10, 1000).resume(42) == Reset(oldest=None)


def test_entries_without_a_position_are_replayed_but_never_prove_a_resume() -> None:
    """A rolling upgrade: the previous release's ingestion API writes entries without positions."""
    window = filled([None, None, 7, None, 8])
    assert window.oldest == 7
    assert window.resume(5) == Reset(oldest=7)  # what the unpositioned head held is unknown
    assert window.resume(6) == Replay([b"old0", b"old1", b"f7", b"old3", b"f8"])  # 7 is there: so is all after 6
    assert window.resume(7) == Replay([b"old3", b"f8"])
    assert window.resume(8) == Replay([])
    only_old = filled([None, None])
    assert only_old.resume(3) == Reset(oldest=None)


def test_a_cleared_window_resumes_only_from_what_follows() -> None:
    window = filled([1, 2, 3])
    window.clear()
    assert window.resume(3) == Reset(oldest=None)  # the server missed what followed 3: not "caught up"
    for at in (7, 8, 9):
        window.append(Entry(at, "dummy", f"f{at}".encode()))
    assert window.oldest == 7 and window.resume(7) == Replay([b"f8", b"f9"])
    assert window.resume(5) == Reset(oldest=7)


@pytest.mark.parametrize(  # "\uff11\uff12": fullwidth digits, which str.isdigit() accepts and int() too
    ("text", "expected"),
    [("0", 0), ("42", 42), ("9223372036854775807", 2**63 - 1), ("9223372036854775808", None), ("-1", None),
     ("01a00000-0000-7000-8000-000000000000", None), ("4²", None), ("\uff11\uff12", None), (" 1", None), ("", None)],
)  # fmt: skip
def test_only_decimal_digits_are_a_position(text: str, expected: int | None) -> None:
    assert position(text) == expected


def test_backlog_tracks_its_size() -> None:
    backlog = Backlog([b"ab", b"cde"])
    backlog.extend([b"f"])
    assert backlog.bytes == 6
    assert backlog.popleft() == b"ab" and backlog.bytes == 4
