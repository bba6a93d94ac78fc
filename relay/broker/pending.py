"""The pending set: every accepted record until a worker has handled it (ours: keys and semantics below).

Keys (``relay.broker.contract.pending_keys``): ``<queue>:pending``, a sorted
set of record ids scored by when the record was last known to be moving
(accepted, sent, or being worked on), ``<queue>:pending:records``, the
records themselves, and ``<queue>:pending:positions``, the same ids scored by
position (``relay.broker.positions``: its lowest score is the listings'
watermark).

Why: a record is accepted (202) once it is in this set, written atomically
with its live frame by the ingestion API; its Celery task message is sent
right after. Every way a task message can go missing is then covered by one
rule: a send that fails after the write, a worker killed after kombu's
Redis transport has popped a message but before it recorded it as
unacknowledged (kombu#305, #1836), a task that failed half-way. The worker
removes records once stored or dead-lettered (:meth:`Pending.done`),
refreshes the score of records it is working on (:meth:`Pending.touch`),
and :meth:`Pending.reconcile`, run periodically by each worker instance,
sends again the records whose score is older than ``PENDING_GRACE_SECONDS``
while the persistence queue is empty (a queued message may hold them).
Storage is idempotent, so a false alarm costs a redundant write, never a
duplicate row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import orjson
import redis

from relay.broker.contract import Record, pending_keys, pending_positions_key, reconcile_lock_key

log = logging.getLogger(__name__)

# The records of ids scored at most ARGV[1] (at most ARGV[2] of them), rescored ARGV[3] (now) so the
# next round waits a whole grace again; an id whose record is gone is dropped. KEYS: 1 set, 2 hash,
# 3 positions.
_TAKE_STALE = """
local stale = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    table.insert(stale, record)
    redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
return stale
"""


def send_or_leave_pending(send: Callable[[Sequence[Record]], object], records: Sequence[Record]) -> bool:
    """Send accepted records' task messages; on failure log it and leave them to the reconciler.

    For the senders that must not fail the request or thread they run in
    (the producer after its write, the sender's thread): the records are
    pending, so a failed send only delays them.
    """
    try:
        send(records)
    except Exception as exc:
        log.warning("sending %d record(s) failed (%s); they are pending and will be sent again", len(records), exc)
        return False
    return True


class Pending:
    """Every accepted record until a worker has handled it; see the module docstring."""

    def __init__(
        self, client: redis.Redis, queue: str, send: Callable[[Sequence[Record]], object] = lambda records: None
    ) -> None:
        self.client = client
        self.queue = queue
        self.send = send
        self.zset, self.records = pending_keys(queue)
        self.positions = pending_positions_key(queue)
        self._take_stale = client.register_script(_TAKE_STALE)

    def add(self, pipe: redis.client.Pipeline, records: Sequence[Record]) -> None:
        """Add accepted ``records`` (with their positions) in ``pipe``, as the ingestion API's write script does."""
        pipe.hset(self.records, mapping={r["id"]: orjson.dumps(r) for r in records})
        pipe.zadd(self.zset, {r["id"]: time.time() for r in records})
        pipe.zadd(self.positions, {r["id"]: r["position"] for r in records})

    def touch(self, ids: Sequence[str]) -> None:
        """Mark records as being worked on now (only those still pending)."""
        if ids:
            self.client.zadd(self.zset, dict.fromkeys(ids, time.time()), xx=True)

    def done(self, ids: Sequence[str]) -> None:
        """Forget handled records (stored or dead-lettered)."""
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.records, *ids)
            pipe.zrem(self.zset, *ids)
            pipe.zrem(self.positions, *ids)
            pipe.execute()

    def count(self) -> int:
        return int(self.client.zcard(self.zset))

    def record(self, message_id: str) -> Record | None:
        """The pending record of ``message_id`` (accepted, not yet stored), or None."""
        raw = self.client.hget(self.records, message_id)
        return orjson.loads(raw) if raw is not None else None

    def reconcile(self, grace: float, queue_depth: Callable[[], int], limit: int = 1000) -> int:
        """Send again the records idle for ``grace`` seconds while the queue is empty; return how many.

        ``queue_depth`` tells how many task messages wait on the queue (the
        worker asks Celery's broker connection). One worker instance at a
        time does this, under a lock that expires after ``grace``.
        """
        if queue_depth() > 0:
            return 0  # a queued message may hold them: wait until the queue has drained
        if not self.client.set(reconcile_lock_key(self.queue), 1, nx=True, ex=max(1, int(grace))):
            return 0  # another worker is at it
        now = time.time()
        raw = self._take_stale(keys=[self.zset, self.records, self.positions], args=[now - grace, limit, now])
        if not raw:
            return 0
        records = [orjson.loads(r) for r in raw]
        self.send(records)
        return len(records)

    def requeue(self, records: Sequence[Record]) -> None:
        """Send ``records`` again (as new task messages), refreshing their pending entries first."""
        pipe = self.client.pipeline(transaction=True)
        self.add(pipe, records)
        pipe.execute()
        self.send(records)
