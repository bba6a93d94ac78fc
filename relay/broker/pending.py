"""The pending set: every queued record until a worker has handled it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import redis

from relay.broker.contract import (
    DEFAULT_MESSAGE_MAX_BYTES,
    KOMBU_UNACKED_KEY,
    pending_keys,
    reconcile_lock_key,
    task_messages,
)

# Pending records older than ARGV[1], but only when nothing is queued or in flight (kombu's
# "unacked" hash): then any such record was lost between kombu's BRPOP and its bookkeeping.
_LOST_RECORDS = """
if redis.call('LLEN', KEYS[1]) > 0 or redis.call('HLEN', KEYS[2]) > 0 then return {} end
local lost = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = redis.call('HGET', KEYS[4], id)
  if record then table.insert(lost, record) else redis.call('ZREM', KEYS[3], id) end
end
return lost
"""


class Pending:
    """Every queued record until a worker has handled it: the safety net under Celery's queue.

    kombu's Redis transport moves a message from the queue to its "unacked"
    bookkeeping in two steps (BRPOP, then MULTI/HSET): a worker killed, or a
    Redis crash, between them loses that task message. So every enqueue
    also records its records here, in the same transaction; the worker
    removes them once stored or dead-lettered; and :meth:`reconcile`, run
    periodically by a worker, re-queues records still pending after
    ``grace`` seconds at a moment when nothing is queued or in flight, which
    can only mean they were lost. Storage is idempotent, so a false alarm
    costs a redundant write, never a duplicate row.
    """

    def __init__(self, client: redis.Redis, queue: str, message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES) -> None:
        self.client = client
        self.queue = queue
        self.message_max_bytes = message_max_bytes
        self.zset, self.records = pending_keys(queue)
        self._lost = client.register_script(_LOST_RECORDS)

    def add(self, pipe: redis.client.Pipeline, records: Sequence[dict[str, str]]) -> None:
        pipe.hset(self.records, mapping={r["id"]: orjson.dumps(r) for r in records})
        pipe.zadd(self.zset, {r["id"]: time.time() for r in records})

    def done(self, ids: Sequence[str]) -> None:
        """Forget handled records (stored or dead-lettered)."""
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.records, *ids)
            pipe.zrem(self.zset, *ids)
            pipe.execute()

    def count(self) -> int:
        return int(self.client.zcard(self.zset))

    def reconcile(self, grace: float, limit: int = 1000) -> int:
        """Re-queue lost records (see the class docstring); return how many."""
        if not self.client.set(reconcile_lock_key(self.queue), 1, nx=True, ex=max(1, int(grace))):
            return 0  # another worker is at it
        raw = self._lost(
            keys=[self.queue, KOMBU_UNACKED_KEY, self.zset, self.records], args=[time.time() - grace, limit]
        )
        if not raw:
            return 0
        records = [orjson.loads(r) for r in raw]
        self.requeue(records)
        return len(records)

    def requeue(self, records: Sequence[dict[str, str]]) -> None:
        """Queue ``records`` again as new task messages, atomically with refreshing their pending entries."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.queue, *task_messages(records, self.queue, self.message_max_bytes))
        self.add(pipe, records)
        pipe.execute()
