"""Positions: where each message stands, given once, at acceptance (ours: keys and semantics below).

Every accepted message gets two numbers in the same atomic write that makes
it pending and appends its live frame (``relay.broker.producer``):

* its ``offset``, its place in its channel: 1 for a channel's first message,
  then consecutive in accept order (a batch takes consecutive offsets in its
  input order), as Kafka's offsets and JetStream's stream sequences are;
* its ``position``, its place among every channel's messages, consecutive
  over all writes. A channel's offsets and its messages' positions grow
  together, so the all-channels order restricted to one channel is that
  channel's order.

Both are counters in one Redis hash (``relay.broker.contract.positions_key``):
field ``*`` holds the last position, each channel's name (which never
contains ``*``) its last offset. Numbers already stored must never be given
again, so the counters are *seeded* from the database: a worker merges the
highest stored position and offsets into the hash at start-up, and again
whenever it finds the hash gone (a Redis that lost its data). The merge only
ever raises a counter. Until the hash holds ``*``, the accept script refuses
(``unseeded``: 503 ``positions_unseeded``) rather than start again from 1.

The pending records' ids are also kept scored by position
(``relay.broker.contract.pending_positions_key``). :meth:`Positions.watermark`
reads the lowest of them and the counter in one transaction: every position
below it is stored or dead-lettered, for good. The list API never lists a
position at or above it, so a follower's cursor never passes a message that
is accepted but not yet stored (docs/design.rst, "Order and position").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from relay.broker.contract import Record, pending_keys, pending_positions_key, positions_key
from relay.records import record_channel

# The counter field of the global position; channel names never contain "*".
GLOBAL = "*"

# Raise each counter to at least the floor given. KEYS: 1 counters, 2 pending positions, 3 pending records.
# ARGV: 1 the global floor, then pairs (channel, offset floor). When the counters are gone, numbers still
# pending count too (a Redis that kept its pending records but lost the counters): the highest pending
# position, and each pending record's offset in its channel. "*" is written last: it marks the hash as seeded.
_SEED = """
local function raise(field, floor)
  local now = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if floor > now then redis.call('HSET', KEYS[1], field, string.format('%d', floor)) end
end
for i = 2, #ARGV, 2 do raise(ARGV[i], tonumber(ARGV[i + 1])) end
local floor = tonumber(ARGV[1])
if redis.call('HEXISTS', KEYS[1], '*') == 0 then
  -- Only counters that were lost can be below a pending number (the accept script writes both at once):
  -- with them present, the scan of every pending record (long under a backlog, and Redis waits) is skipped.
  for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
    local ok, record = pcall(cjson.decode, raw)
    if ok and type(record) == 'table' and type(record['offset']) == 'number' then
      raise(record['channel'] or 'dummy', record['offset'])
    end
  end
  local highest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if highest[2] and tonumber(highest[2]) > floor then floor = tonumber(highest[2]) end
end
raise('*', floor)
if not redis.call('HGET', KEYS[1], '*') then redis.call('HSET', KEYS[1], '*', '0') end
return redis.call('HGET', KEYS[1], '*')
"""


# Positions for records accepted by a release before positions existed (queued across the upgrade): the
# accept script's counting, without its other writes. KEYS: 1 counters, 2 pending positions. ARGV: pairs
# (id, channel). Returns the first position, then each record's offset.
_PLACE = """
if redis.call('HEXISTS', KEYS[1], '*') == 0 then return redis.error_reply('positions are not seeded') end
local count = #ARGV / 2
local first = redis.call('HINCRBY', KEYS[1], '*', count) - count + 1
local placed = {string.format('%d', first)}
for i = 0, count - 1 do
  redis.call('ZADD', KEYS[2], 'NX', first + i, ARGV[2 * i + 1])
  placed[i + 2] = string.format('%d', redis.call('HINCRBY', KEYS[1], ARGV[2 * i + 2], 1))
end
return placed
"""


def assign(records: Sequence[Record], first: int, offsets: Sequence[int | str | bytes]) -> None:
    """Set each record's ``offset`` (in input order) and ``position`` (``first``, ``first + 1``, ...)."""
    for index, (record, offset) in enumerate(zip(records, offsets, strict=True)):
        record["offset"], record["position"] = int(offset), first + index


class Positions:
    """The position counters of one queue and the watermark below which every position is settled."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.counters = positions_key(queue)
        self.pending = pending_positions_key(queue)
        self.pending_records = pending_keys(queue)[1]
        self._seed = client.register_script(_SEED)
        self._place = client.register_script(_PLACE)

    def seeded(self) -> bool:
        """Tell whether the counters hold the global position (else the accept script refuses)."""
        return bool(self.client.hexists(self.counters, GLOBAL))

    def seed(self, last_position: int, last_offsets: Mapping[str, int]) -> int:
        """Raise the counters to at least the stored ``last_position`` and ``last_offsets``; return the last position.

        Also to the numbers still pending: the highest position, and each pending record's offset.
        """
        args: list[str | int] = [last_position]
        for channel, offset in last_offsets.items():
            args += [channel, offset]
        return int(self._seed(keys=[self.counters, self.pending, self.pending_records], args=args))

    def place(self, records: Sequence[Record]) -> None:
        """Give ``offset`` and ``position`` to records that came without (queued by the release before them)."""
        unplaced = [record for record in records if "position" not in record]
        if not unplaced:
            return
        args = [value for record in unplaced for value in (record["id"], record_channel(record))]
        first, *offsets = self._place(keys=[self.counters, self.pending], args=args)
        assign(unplaced, int(first), offsets)

    def watermark(self) -> int | None:
        """The lowest position not settled yet: the lowest pending one, else the next to be given.

        None while the counters are not seeded and nothing is pending (a Redis
        that lost its data): nothing then tells where accepted messages stand.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.zrange(self.pending, 0, 0, withscores=True)
        pipe.hget(self.counters, GLOBAL)
        lowest, last = pipe.execute()
        if lowest:
            return int(lowest[0][1])
        return int(last) + 1 if last is not None else None
