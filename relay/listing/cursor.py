"""Opaque, tamper-evident pagination cursors.

A cursor is a position in the listing (the ``seq`` of the last row a client
saw), signed with ``SECRET_KEY`` by itsdangerous so that a modified cursor is
rejected (400) instead of silently becoming a different query. Clients must
treat it as an opaque string.
"""

from __future__ import annotations

from itsdangerous import BadData, URLSafeSerializer

# The largest ``seq`` a database column holds (signed 64-bit); a signed cursor beyond it (forged with a
# leaked or development secret) is refused here rather than overflowing the database driver.
MAX_POSITION = 2**63 - 1


class InvalidCursor(ValueError):
    """The cursor was not issued by us (tampered, truncated, or from another secret)."""


class CursorCodec:
    """Encode and decode listing positions."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt="messages.cursor.v1")

    def encode(self, seq: int) -> str:
        """Return the cursor for position ``seq``."""
        return self._serializer.dumps(seq)

    def decode(self, cursor: str) -> int:
        """Return the position in ``cursor`` or raise :class:`InvalidCursor`."""
        try:
            value = self._serializer.loads(cursor)
        except (BadData, UnicodeError, ValueError):
            raise InvalidCursor("cursor is not valid") from None
        if type(value) is not int or not 0 <= value <= MAX_POSITION:
            raise InvalidCursor("cursor is not valid")
        return value
