"""The websocket server's memory: the replay window, where a resume starts, and per-client backlogs.

Plain data structures, no asyncio or Redis, so they are tested on their own.
Both hold references to the same frame ``bytes`` objects: a client that is
behind costs a deque of references, not copies of the frames.

A client resumes from a *position* (``relay.broker.positions``: every
accepted message's place among all channels, given in the same atomic write
that adds its stream entry, so stream order is position order). The window
is a contiguous suffix of the stream as this server read it, so it can
answer a resume from ``P`` exactly when it *covers* ``P``: its oldest entry
is at most ``P + 1`` (every later entry is in it), or ``P`` is at or past
the newest position read (everything later is still to come). An empty
window covers nothing: the stream never empties once written to, so a
client with a position meeting an empty one (a Redis that lost its data)
may have missed what it held, and is told to list (``reset``). Entries
written by the release before positions carry none: they are delivered
and replayed, but a resume is never proven from them.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

# The channels a client receives; None: every channel.
Selection = frozenset[str] | None


class Entry(NamedTuple):
    """One live stream entry as the server keeps it."""

    position: int | None  # None: written by the previous release (no position); delivered, never resumed from
    channel: str
    frame: bytes


@dataclass(frozen=True)
class Replay:
    """The window covers the resume point: send ``frames``, then go live, skipping positions up to ``floor``.

    ``floor`` is set when the client is ahead of this server (it listed
    what the server has not read yet): the frames at or below it, still to
    come, are ones it has.
    """

    frames: list[bytes]
    floor: int | None = None


@dataclass(frozen=True)
class Reset:
    """The window does not cover the resume point; ``oldest`` is the oldest position it can replay (None: none)."""

    oldest: int | None


def selected(selection: Selection, channel: str) -> bool:
    """Tell whether a client with ``selection`` receives messages of ``channel``."""
    return selection is None or channel in selection


def passes(entry: Entry, floor: int | None) -> bool:
    """Tell whether ``entry`` is above a client's ``floor`` (None: no floor); entries without a position always are."""
    return floor is None or entry.position is None or entry.position > floor


class Window:
    """The most recent entries in stream order, bounded in count and bytes, resumable by position."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[Entry] = deque()
        # (position, sequence number) of the entries that have one, oldest first; sequence numbers count appends.
        self._positioned: deque[tuple[int, int]] = deque()
        self._appended = 0
        self._bytes = 0
        self.newest: int | None = None  # the highest position read since the start or the last clear

    def append(self, entry: Entry) -> None:
        self._items.append(entry)
        if entry.position is not None:
            self._positioned.append((entry.position, self._appended))
            self.newest = entry.position if self.newest is None else max(self.newest, entry.position)
        self._appended += 1
        self._bytes += len(entry.frame)
        while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            self._bytes -= len(self._items.popleft().frame)
            if self._positioned and self._positioned[0][1] < self._first_sequence:
                self._positioned.popleft()

    @property
    def _first_sequence(self) -> int:
        return self._appended - len(self._items)

    @property
    def oldest(self) -> int | None:
        """The oldest position in the window: the oldest message a resume can start from (None: none)."""
        return self._positioned[0][0] if self._positioned else None

    def covers(self, after: int) -> bool:
        """Tell whether every entry after position ``after`` is in the window or still to come."""
        oldest = self.oldest
        return (oldest is not None and oldest <= after + 1) or (self.newest is not None and after >= self.newest)

    def resume(self, after: int | None, selection: Selection = None) -> Replay | Reset:
        """Where a client resuming after position ``after`` starts (None: an ``after`` that is no position).

        ``after`` may be of any channel: a client resumes from the last
        position it saw, and positions order every channel in one stream.
        """
        if after is None or not self.covers(after):
            return Reset(self.oldest)
        frames = [
            entry.frame
            for entry in itertools.islice(self._items, self._start_after(after), None)
            if selected(selection, entry.channel) and passes(entry, after)
        ]
        ahead = self.newest is not None and after > self.newest
        return Replay(frames, floor=after if ahead else None)

    def _start_after(self, after: int) -> int:
        """The index of the first entry after the last one at or below position ``after`` (0 if none is)."""
        at_or_below = bisect.bisect_right(self._positioned, after, key=lambda positioned: positioned[0])
        if at_or_below == 0:
            return 0
        return self._positioned[at_or_below - 1][1] - self._first_sequence + 1

    def clear(self) -> None:
        """Forget every entry: after a gap in the stream, resuming from one of them would hide the gap."""
        self._items.clear()
        self._positioned.clear()
        self._bytes = 0
        self.newest = None


class Backlog:
    """Frames a client still has to receive, in order; shares the frame objects with the window."""

    def __init__(self, frames: Iterable[bytes] = ()) -> None:
        self.frames = deque(frames)
        self.bytes = sum(map(len, self.frames))

    def extend(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self.bytes += sum(map(len, frames))

    def popleft(self) -> bytes:
        frame = self.frames.popleft()
        self.bytes -= len(frame)
        return frame
