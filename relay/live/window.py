"""The websocket server's memory: the replay window and per-client backlogs.

Plain data structures, no asyncio or Redis, so they are tested on their own.
Both hold references to the same frame ``bytes`` objects: a client that is
behind costs a deque of references, not copies of the frames.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable

# The channels a client receives; None: every channel.
Selection = frozenset[str] | None


def selected(selection: Selection, channel: str) -> bool:
    """Tell whether a client with ``selection`` receives messages of ``channel``."""
    return selection is None or channel in selection


class Window:
    """The most recent frames in stream order, findable by message id, bounded in count and bytes."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[tuple[str, str, bytes]] = deque()
        self._position: dict[str, int] = {}
        self._appended = 0
        self._bytes = 0

    def append(self, message_id: str, channel: str, frame: bytes) -> None:
        self._items.append((message_id, channel, frame))
        self._position[message_id] = self._appended
        self._appended += 1
        self._bytes += len(frame)
        while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            old_id, _channel, old_frame = self._items.popleft()
            self._bytes -= len(old_frame)
            if self._position.get(old_id) == self._appended - len(self._items) - 1:
                del self._position[old_id]

    def after(self, message_id: str, selection: Selection = None) -> list[bytes] | None:
        """Frames of the ``selection``'s channels after ``message_id``, or None when it is not in the window.

        ``message_id`` may be of any channel: a client resumes from the last
        id it saw, and the window orders every channel in one stream.
        """
        position = self._position.get(message_id)
        if position is None:
            return None
        start = position - (self._appended - len(self._items)) + 1
        return [
            frame for _, channel, frame in itertools.islice(self._items, start, None) if selected(selection, channel)
        ]

    def clear(self) -> None:
        """Forget every frame: after a gap in the stream, resuming from one of them would hide the gap."""
        self._items.clear()
        self._position.clear()
        self._bytes = 0

    @property
    def oldest(self) -> str | None:
        return self._items[0][0] if self._items else None


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
