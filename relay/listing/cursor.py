"""Opaque, tamper-evident pagination cursors.

A message cursor is a position in the listing (the ``seq`` of the last row a
client saw; every channel's listing walks the same ``seq`` order, so it
means the same in each); a channel cursor is the name of the last channel
listed. Both are signed with ``SECRET_KEY`` by itsdangerous, each with its own
salt, so that a modified cursor (or one kind used for the other) is rejected
(400) instead of silently becoming a different query. Clients must treat
them as opaque strings.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from itsdangerous import BadData, URLSafeSerializer

from relay.records import is_channel

# The largest ``seq`` a database column holds (signed 64-bit); a signed cursor beyond it (forged with a
# leaked or development secret) is refused here rather than overflowing the database driver.
MAX_POSITION = 2**63 - 1


class InvalidCursor(ValueError):
    """The cursor was not issued by us (tampered, truncated, or from another secret)."""


Position = TypeVar("Position", int, str)


class CursorCodec(Generic[Position]):
    """Encode and decode listing positions of one kind (message positions by default)."""

    def __init__(self, secret: str, salt: str = "messages.cursor.v1") -> None:
        self._serializer = URLSafeSerializer(secret, salt=salt)

    def encode(self, position: Position) -> str:
        """Return the cursor for ``position``."""
        return self._serializer.dumps(position)

    def decode(self, cursor: str) -> Position:
        """Return the position in ``cursor`` or raise :class:`InvalidCursor`."""
        try:
            value = self._serializer.loads(cursor)
        except (BadData, UnicodeError, ValueError):
            raise InvalidCursor("cursor is not valid") from None
        if not self.valid(value):
            raise InvalidCursor("cursor is not valid")
        return value

    @staticmethod
    def valid(value: object) -> bool:
        return type(value) is int and 0 <= value <= MAX_POSITION


class ChannelCursorCodec(CursorCodec[str]):
    """Cursors of ``GET /channels``: the last channel name listed."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret, salt="channels.cursor.v1")

    @staticmethod
    def valid(value: object) -> bool:
        return type(value) is str and is_channel(value)
