"""Dead letters: messages the database kept rejecting, kept in Redis with their error."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
import redis

from relay.broker.contract import Record, dead_letter_index_key
from relay.records import format_time, utc_now

# KEYS[1] the dead-letter list, KEYS[2] its index of message ids. ARGV[1] message id, ARGV[2] entry.
# Returns 1 after adding the entry, 0 when that message is already dead-lettered.
_DEAD_LETTER_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], 1) == 0 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""


class DeadLetters:
    """A durable Redis list of messages the database kept rejecting, with their error.

    Entries are ``{"record", "error", "failed_at"}``, at most one per message
    id (the hash ``<key>:ids`` indexes them): a redelivered task message
    isolated a second time adds nothing.

    Replaying one accepts its record again through ``accept`` (in practice
    :meth:`relay.broker.producer.Producer.write`): same id and payload, a new
    offset and position at the end of its channel, pending and live again,
    then sent. Its old position was passed by the listings when it was
    dead-lettered; the new one is above every follower's cursor, so a
    follower sees the replay. Then the entry and its index go. Should that
    last step fail, a second replay accepts it once more and the worker
    stores it once (by id).
    """

    def __init__(
        self, client: redis.Redis, key: str, accept: Callable[[Sequence[Record]], object] | None = None
    ) -> None:
        self.client = client
        self.key = key
        self.index = dead_letter_index_key(key)
        self.accept = accept
        self._add_once = client.register_script(_DEAD_LETTER_ONCE)

    def add(self, record: Record, error: str) -> bool:
        """Dead-letter ``record`` unless it already is; return whether it was added."""
        entry = {"record": record, "error": error, "failed_at": format_time(utc_now())}
        return bool(self._add_once(keys=[self.key, self.index], args=[record["id"], orjson.dumps(entry)]))

    def count(self) -> int:
        return int(self.client.llen(self.key))

    def entries(self, limit: int = 100) -> list[dict]:
        """The oldest ``limit`` entries, oldest first."""
        return [orjson.loads(raw) for raw in reversed(self.client.lrange(self.key, -limit, -1))]

    def replay(self, ids: set[str] | None = None) -> int:
        """Re-queue the entries whose message id is in ``ids`` (all when None); return how many."""
        if self.accept is None:
            raise RuntimeError("DeadLetters was made without an accept function: it cannot replay")
        replayed = 0
        for raw in self.client.lrange(self.key, 0, -1):
            record = orjson.loads(raw)["record"]
            if ids is not None and record["id"] not in ids:
                continue
            self.accept([{k: v for k, v in record.items() if k not in ("offset", "position")}])
            pipe = self.client.pipeline(transaction=True)
            pipe.lrem(self.key, 1, raw)
            pipe.hdel(self.index, record["id"])
            pipe.execute()
            replayed += 1
        return replayed
