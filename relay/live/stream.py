"""Reading the live stream in order, and noticing entries trimmed before they were read.

The ingestion API adds each message to a Redis Stream capped at about
``LIVE_WINDOW`` entries (``XADD MAXLEN ~``): the oldest entries are trimmed as
new ones come. A reader that only asked for what follows its last id would
skip, without knowing it, whatever was trimmed while it was not reading (a
stopped process, a long pause). So each read also takes the stream's first
entry, in the same transaction: trimming removes entries from the head in
stream order, so the entries after the last one read are intact as long as
that one is still there (the first entry is not newer). When it is gone, the
reader reports the batch as following a gap. Near the edge that is
conservative: the last entry read may be the very last one trimmed, and a
reader that far behind is told the same as one that did miss entries.
(Redis 7's ``max-deleted-entry-id`` does not help: trimming leaves it alone.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from relay.live.window import Entry
from relay.records import DEFAULT_CHANNEL

log = logging.getLogger("wsserver")

# Where a reader starts when the stream was empty or absent: before any entry.
START = "0-0"


@dataclass
class Batch:
    """Entries read after a stream id: the well-formed ones, and where to go on."""

    entries: list[Entry]
    last: str  # the stream id to read after next time
    size: int  # stream entries read, malformed ones included
    gap: bool  # entries after the previous last id were trimmed before this read


def stream_id(value: str) -> tuple[int, int]:
    """Order stream ids (``<ms>-<seq>``) numerically, not as strings."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def trimmed_past(last: str, first: str | None) -> bool:
    """Tell whether entries after ``last`` may have been trimmed, given the stream's ``first`` entry id now.

    Nothing read yet (``START``) has nothing to compare with: the stream was
    empty when the reader started, so it cannot tell a trimmed entry from one
    never added.
    """
    return last != START and first is not None and stream_id(first) > stream_id(last)


async def read_after(client: aioredis.Redis, stream: str, last: str, count: int) -> Batch:
    """Read up to ``count`` entries after ``last``, with the stream's first entry taken at the same instant."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.xrange(stream, count=1)
        pipe.xread({stream: last}, count=count)
        head, response = await pipe.execute()
    entries = response[0][1] if response else []
    first = head[0][0].decode() if head else None
    return Batch(
        entries=valid(entries),
        last=entries[-1][0].decode() if entries else last,
        size=len(entries),
        gap=trimmed_past(last, first),
    )


def valid(entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
    """Turn stream entries into :class:`Entry`, skipping any that lack the message id or the frame.

    An entry written before channels existed has no channel: it is the
    channel ``dummy``. One written before positions existed (or with a
    position that is not a decimal number) has none.
    """
    result = []
    for entry_id, fields in entries:
        if b"id" in fields and b"frame" in fields:
            channel = fields[b"channel"].decode() if b"channel" in fields else DEFAULT_CHANNEL
            result.append(Entry(position_of(fields.get(b"position")), channel, fields[b"frame"]))
        else:
            log.warning("skipping malformed live stream entry %s", entry_id)
    return result


def position_of(field: bytes | None) -> int | None:
    """The position an entry's ``position`` field holds (decimal text), or None."""
    if field is None or not field.isdigit():
        return None
    return int(field)
