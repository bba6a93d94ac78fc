"""Reading the live stream: the gap check against a real Redis trimming its stream."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from relay.live.stream import START, read_after, stream_id, trimmed_past


def test_stream_ids_order_numerically() -> None:
    assert stream_id("10-0") > stream_id("9-5") and stream_id("9-10") > stream_id("9-9")


@pytest.mark.parametrize(
    ("last", "first", "trimmed"),
    [
        ("5-0", "5-0", False),  # the last entry read is still there: nothing after it was trimmed
        ("5-0", "3-0", False),
        ("5-0", "5-1", True),  # it is gone, so may be what came after it
        ("9-0", "10-0", True),
        ("5-0", None, False),  # empty stream
        (START, "1-0", False),  # nothing read yet: nothing to compare with
    ],
)
def test_trimmed_past_compares_the_last_id_read_with_the_first_entry(last: str, first: str | None, trimmed) -> None:
    assert trimmed_past(last, first) is trimmed


def add(client: redis.Redis, count: int, cap: int) -> list[str]:
    """Add entries as the ingestion API does (``MAXLEN ~``); their stream ids."""
    fields = {"id": "m", "channel": "dummy", "frame": b"{}"}
    return [client.xadd("live", fields, maxlen=cap, approximate=True).decode() for _ in range(count)]


def test_a_read_reports_a_gap_only_once_entries_after_the_last_read_are_trimmed(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        assert (await read_after(client, "live", START, 10)).size == 0  # no stream yet
        ids = add(sync, 5, cap=100)
        batch = await read_after(client, "live", START, 3)
        assert (batch.size, batch.last, batch.gap) == (3, ids[2], False)
        while sync.xrange("live", count=1)[0][0].decode() in ids[:4]:  # until entries after the last read are trimmed
            ids += add(sync, 50, cap=100)  # (trimming drops whole radix tree nodes: when, depends on their size)
        first = ids.index(sync.xrange("live", count=1)[0][0].decode())
        batch = await read_after(client, "live", batch.last, 10)
        assert batch.gap and batch.size == 10 and batch.last == ids[first + 9]
        batch = await read_after(client, "live", batch.last, len(ids))
        assert not batch.gap and batch.last == ids[-1] and batch.size == len(ids) - first - 10
        await client.aclose()

    asyncio.run(scenario())
