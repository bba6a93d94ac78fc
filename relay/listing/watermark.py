"""The listings' watermark: the lowest position not settled yet, read from Redis for each page.

A page never holds a position at or above it (``relay.broker.positions``),
so a follower's cursor never passes a message that is accepted but not yet
stored: the page ends before it, and the next request picks up from there.
A dead-lettered message is settled (passed); its replay takes a new position
above every cursor.

When Redis does not answer, a process that has read the watermark before
uses the last value it read: a watermark only ever rises, so an old one
shows less, never a gap. One that never read it answers 503.
"""

from __future__ import annotations

import redis

from relay.broker.positions import Positions
from relay.web.base import ApiError


class Watermark:
    """Reads the watermark, falling back to the last value read while Redis is away."""

    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        self.last: int | None = None

    def read(self) -> int | None:
        """The watermark now; None when Redis knows none (emptied, not seeded yet) and none was read before."""
        try:
            value = self.positions.watermark()
        except redis.RedisError:
            if self.last is None:
                raise ApiError(
                    503,
                    "redis_unavailable",
                    "Redis does not answer, and it says which messages are stored for good; retry shortly.",
                    {"Retry-After": "1"},
                ) from None
            return self.last
        if value is not None:
            self.last = value
        return self.last
